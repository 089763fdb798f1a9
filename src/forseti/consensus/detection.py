"""Per-round detection: threshold flags on a rule's scores.

Flags are *thresholded*, never "the top f": with fewer than ``f`` attackers (or none) top-f
flagging accuses honest workers by construction, so it cannot claim precision. A score is an
outlier when its square root (scores are squared distances; their roots are far less skewed,
which matters on low-dimensional, heavy-tailed gradients) exceeds ``median + z * 1.4826 * MAD``
of the roots (a robust z-score) *and* the score exceeds ``ratio`` times the median score: the
first adapts to how spread the honest workers are, the second keeps tightly concentrated honest
scores (high dimension, IID data) from flagging each other over noise.
Only loud attacks are caught this way; quiet ones (sign flip at low SNR, small IPM) need the
sequential test of :class:`~forseti.consensus.ReputationLedger`, and ALIE at ``z_max`` or mimic
sit inside the honest spread by design: judge those by damage, not by recall.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ValidationError
from .base import check_number
from .result import AggResult

__all__ = ["flag_outliers", "Thresholds", "detection_rates", "DetectionRates"]


@dataclass(frozen=True)
class Thresholds:
    """How far above the honest crowd a score must be to flag its worker."""

    z: float = 5.0
    ratio: float = 1.5

    def __post_init__(self) -> None:
        check_number(self.z, "z", minimum=0.0, open_below=True)
        check_number(self.ratio, "ratio", minimum=1.0)


def flag_outliers(
    scores: torch.Tensor | AggResult, thresholds: Thresholds | None = None
) -> tuple[int, ...]:
    """The workers whose score is an outlier (non-finite scores always are), in index order."""
    s = scores.scores if isinstance(scores, AggResult) else torch.as_tensor(scores)
    if s.dim() != 1:
        raise ValidationError(f"scores must be one per worker (1-d); got shape {tuple(s.shape)}")
    t = thresholds or Thresholds()
    s = s.detach().to(torch.float64).cpu()
    finite = torch.isfinite(s)
    flagged = ~finite
    if bool(finite.any()):
        dist = s.clamp_min(0.0).sqrt()  # distances: far less skewed than squared distances
        values = dist[finite]
        med = float(values.median())
        mad = float((values - med).abs().median()) * 1.4826
        spread_limit = med + t.z * mad
        ratio_limit = t.ratio * float(s[finite].median())
        flagged |= finite & (dist > spread_limit) & (s > ratio_limit)
    return tuple(int(i) for i in flagged.nonzero().flatten())


@dataclass(frozen=True)
class DetectionRates:
    """Precision, recall and false-positive rate of a set of flags against the truth."""

    precision: float
    recall: float
    fpr: float
    flagged: int


def detection_rates(flagged: set[int] | tuple[int, ...], byzantine: set[int], n: int) -> DetectionRates:
    """Rates for ``flagged`` among ``n`` workers of which ``byzantine`` are the attackers.

    Conventions: precision is 1 when nothing is flagged, recall is 1 when nobody attacks.
    """

    flagged = set(flagged)
    true_pos = len(flagged & byzantine)
    honest = n - len(byzantine)
    return DetectionRates(
        precision=true_pos / len(flagged) if flagged else 1.0,
        recall=true_pos / len(byzantine) if byzantine else 1.0,
        fpr=len(flagged - byzantine) / honest if honest else 0.0,
        flagged=len(flagged),
    )
