"""The reputation ledger: per-round flags plus a sequential test on accumulated deviation.

Each round, worker ``i``'s deviation from the aggregate is added to a decaying sum
``S_i <- decay * S_i + (x_i - F(X))`` (CUSUM / SafeguardSGD style). Honest noise averages out
(``|S_i|`` grows like a random walk, bounded by the decay) while a consistent bias adds up, so
quiet attacks that hide inside one round's spread (sign flip at low SNR, IPM with small eps)
stand out after some rounds. The statistic is ``z_i = m_i / median_j m_j`` where ``m_i`` is the
median over ``j`` of ``|S_i - S_j|^2`` (a drift common to all honest workers cancels): about 1
for honest workers; a worker is a suspect when ``z_i >= threshold`` (after ``min_rounds``) or when
it is a per-round outlier (:func:`~forseti.consensus.flag_outliers`).

Trust in ``[0, 1]`` combines both: a moving average of "not flagged this round" times
``clamp((threshold - z) / (threshold - 1), 0, 1)``. With a registry the ledger publishes
``AggregationCompleted`` every round, ``WorkerFlagged`` and ``WorkerTrustChanged`` on changes,
and commits a :class:`ByzantineDetectorEntity` every ``sync_every`` rounds (and on
:meth:`~ReputationLedger.sync`) through an operation. The accumulated sums live in memory only:
a ledger resumed from its entity keeps trust, suspects and detections, and restarts the sums;
its restored suspects stay suspects until the new sums span the test's window (``hold_rounds``).

``estimated_false_positives`` counts suspicions that did not last: a worker cleared after fewer
than ``min_rounds`` rounds as a suspect was most likely flagged by noise (attackers, loud or
quiet, stay suspects round after round).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..entities import Entity
from ..errors import ConfigError, ValidationError
from ._tensors import as_matrix
from .base import Aggregator, check_f, check_number, check_positive
from .detection import Thresholds, flag_outliers
from .distances import pairwise_sq_distances
from .entities import ByzantineDetectorEntity, Detection, RecordDetectorState
from .events import AggregationCompleted, WorkerFlagged, WorkerTrustChanged
from .result import AggResult

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = ["ReputationLedger", "RoundReport"]

@dataclass(frozen=True)
class RoundReport:
    """What one :meth:`ReputationLedger.update` found."""

    round: int
    flagged_round: tuple[int, ...]
    suspects: tuple[int, ...]
    new_detections: tuple[Detection, ...]
    trust: torch.Tensor
    statistic: torch.Tensor


class ReputationLedger:
    """Tracks every worker's trust across rounds; see the module docstring for the test."""

    def __init__(
        self,
        n_workers: int,
        *,
        f: int = 0,
        rule: Aggregator | None = None,
        registry: EntityRegistry | None = None,
        name: str = "detector",
        decay: float = 0.98,
        threshold: float = 4.0,
        min_rounds: int = 5,
        thresholds: Thresholds | None = None,
        trust_rate: float = 0.2,
        trust_step: float = 0.1,
        sync_every: int = 0,
    ) -> None:
        self.n = check_positive(n_workers, "n_workers", integer=True)
        self.f = check_f(f)
        def fraction(value: Any, what: str) -> float:  # in (0, 1]
            return check_number(value, what, minimum=0.0, maximum=1.0, open_below=True)

        self.decay = fraction(decay, "decay")
        self.threshold = check_number(threshold, "threshold", minimum=1.0, open_below=True)
        self.trust_rate = fraction(trust_rate, "trust_rate")
        self.trust_step = fraction(trust_step, "trust_step")
        self.min_rounds = check_positive(min_rounds, "min_rounds", integer=True)
        self.sync_every = check_f(sync_every, "sync_every")
        self.thresholds = thresholds or Thresholds()
        self.rule, self.registry, self.name = rule, registry, name
        self.round = 0
        self._sums: torch.Tensor | None = None
        self._sum_rounds = 0  # rounds accumulated in _sums
        self._held: set[int] = set()  # suspects restored by resume(), until the sums can judge
        self._streak = [0] * self.n  # consecutive rounds each worker has been a suspect
        self._round_trust = torch.ones(self.n, dtype=torch.float64)
        self.trust = torch.ones(self.n, dtype=torch.float64)
        self._reported = self.trust.clone()
        self.statistic = torch.ones(self.n, dtype=torch.float64)
        self.suspects: tuple[int, ...] = ()
        self.flag_counts = [0] * self.n
        self.detections: list[Detection] = []
        self.estimated_false_positives = 0.0
        self.entity: ByzantineDetectorEntity | None = None
        if registry is not None:
            self.sync()  # registered now, so every event names the detector as its subject

    @property
    def hold_rounds(self) -> int:
        """How long suspects restored by :meth:`resume` are held: the test's window,
        ``1 / (1 - decay)`` rounds (at most 50)."""
        return 50 if self.decay >= 0.98 else math.ceil(1 / (1 - self.decay))

    # -- the per-round update (pure torch; events are cheap, commits happen at sync) -----------

    def update(self, vectors: Any, result: AggResult) -> RoundReport:
        """Account one round: ``vectors`` are the ``(n, d)`` inputs ``result`` was computed from."""
        x, _ = as_matrix(vectors)
        if x.shape[0] != self.n or result.n != self.n:
            raise ValidationError(
                f"the ledger tracks {self.n} workers; got {x.shape[0]} vectors and a result "
                f"over {result.n}"
            )
        if result.vector.shape[0] != x.shape[1]:
            raise ValidationError("the result's vector does not match the vectors' dimension")
        self.round += 1
        flagged_round = flag_outliers(result.scores, self.thresholds)
        stat = self._accumulate(x, result)
        mature = self._sum_rounds >= self.min_rounds
        sequential = set()
        if mature:
            sequential = {i for i in range(self.n) if float(stat[i]) >= self.threshold}
        if self._held and self._sum_rounds >= self.hold_rounds:
            self._held = set()
        # suspects restored by resume() stay until the restarted sums span a full window
        sequential |= self._held
        suspects = tuple(sorted(set(flagged_round) | sequential))
        hit = torch.zeros(self.n, dtype=torch.float64)
        hit[list(flagged_round)] = 1.0
        self._round_trust.mul_(1 - self.trust_rate).add_((1 - hit) * self.trust_rate)
        seq_factor = ((self.threshold - stat) / (self.threshold - 1)).clamp(0.0, 1.0)
        if not mature:
            seq_factor = torch.ones_like(seq_factor)
        seq_factor[list(self._held)] = 0.0
        self.trust = self._round_trust * seq_factor
        new = self._record(suspects, flagged_round, stat, result.scores)
        for i in flagged_round:
            self.flag_counts[i] += 1
        cleared = set(self.suspects) - set(suspects)
        for i in suspects:
            self._streak[i] += 1
        for i in cleared:  # a suspicion that did not last is counted as a likely false alarm
            if self._streak[i] < self.min_rounds:
                self.estimated_false_positives += 1.0
            self._streak[i] = 0
        self.statistic, self.suspects = stat, suspects
        self._publish(result, flagged_round, new, cleared)
        if self.sync_every and self.registry is not None and self.round % self.sync_every == 0:
            self.sync()
        return RoundReport(self.round, flagged_round, suspects, new, self.trust.clone(), stat)

    def _accumulate(self, x: torch.Tensor, result: AggResult) -> torch.Tensor:
        finite = torch.isfinite(result.scores)
        if self._sums is None or self._sums.shape != x.shape:
            self._sums = torch.zeros_like(x)
            self._sum_rounds = 0
        self._sum_rounds += 1
        sums = self._sums
        sums.mul_(self.decay)
        rows = finite.nonzero().flatten().to(x.device)
        sums.index_add_(0, rows, (x[rows] - result.vector).to(sums.dtype))
        # Each worker's median squared distance to the others' sums: a common drift (the
        # aggregate pulled towards attackers moves every honest sum alike) cancels out, and
        # identical attackers, close to each other, are still far from the honest majority.
        dist = pairwise_sq_distances(sums).to(torch.float64).cpu()
        dist.fill_diagonal_(float("nan"))
        spread = dist.nanmedian(dim=1).values
        med = float(spread.median())
        if med > 0:
            return spread / med
        return torch.where(spread > 0, float("inf"), 1.0).to(torch.float64)

    def _record(
        self,
        suspects: tuple[int, ...],
        flagged_round: tuple[int, ...],
        stat: torch.Tensor,
        scores: torch.Tensor,
    ) -> tuple[Detection, ...]:
        new: list[Detection] = []
        for i in suspects:
            if i in self.suspects:
                continue
            reason = "round" if i in flagged_round else "sequential"
            value = float(scores[i] if reason == "round" else stat[i])
            new.append(
                Detection(
                    worker=i,
                    round=self.round,
                    reason=reason,
                    statistic=value if math.isfinite(value) else None,
                )
            )
        self.detections.extend(new)
        return tuple(new)

    def _publish(
        self,
        result: AggResult,
        flagged_round: tuple[int, ...],
        new: tuple[Detection, ...],
        cleared: set[int],
    ) -> None:
        if self.registry is None:
            return
        bus = self.registry.bus
        subject = None if self.entity is None else self.entity.ref
        bus.publish(
            AggregationCompleted(
                subject=subject,
                round=self.round,
                rule=self.rule.label if self.rule is not None else "",
                selected=list(result.selected),
                scores=[v if math.isfinite(v) else None for v in result.scores.tolist()],
                flagged=list(flagged_round),
                nonfinite=list(result.meta.get("nonfinite", ())),
            )
        )
        for det in new:
            bus.publish(
                WorkerFlagged(
                    subject=subject,
                    worker=det.worker,
                    round=det.round,
                    reason=det.reason,
                    statistic=det.statistic,
                )
            )
        moved = (self.trust - self._reported).abs() >= self.trust_step
        moved[list(cleared)] = True
        for i in moved.nonzero().flatten().tolist():
            bus.publish(
                WorkerTrustChanged(
                    subject=subject,
                    worker=i,
                    round=self.round,
                    trust=float(self.trust[i]),
                    previous=float(self._reported[i]),
                    flagged=i in self.suspects,
                )
            )
            self._reported[i] = self.trust[i]

    # -- persistence -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The fields of :class:`ByzantineDetectorEntity` this ledger owns."""
        return {
            "round": self.round,
            "trust": tuple(float(t) for t in self.trust),
            "suspects": self.suspects,
            "flag_counts": tuple(self.flag_counts),
            "detections": tuple(self.detections),
            "estimated_false_positives": self.estimated_false_positives,
        }

    def settings(self) -> dict[str, Any]:
        """The ledger's parameters, as stored with the entity."""
        return {
            "decay": self.decay,
            "threshold": self.threshold,
            "min_rounds": self.min_rounds,
            "z": self.thresholds.z,
            "ratio": self.thresholds.ratio,
            "trust_rate": self.trust_rate,
            "trust_step": self.trust_step,
            "sync_every": self.sync_every,
        }

    def sync(self) -> ByzantineDetectorEntity:
        """Commit the current state as the detector entity's next version (the first call
        registers it; nothing is written when nothing changed); needs a registry."""
        if self.registry is None:
            raise ConfigError("this ledger has no registry: pass registry= to persist it")
        if self.entity is None:
            self.entity = self.registry.add(
                ByzantineDetectorEntity(
                    name=self.name,
                    n_workers=self.n,
                    f=self.f,
                    rule=self.rule.config() if self.rule is not None else {},
                    settings=self.settings(),
                    **self.state(),
                )
            )
        elif any(getattr(self.entity, k) != v for k, v in self.state().items()):
            op = RecordDetectorState(
                targets=(self.entity.lineage_id,), state=self.state(), reason=f"round {self.round}"
            )
            self.entity = self.registry.submit(op).entity  # type: ignore[assignment]
        assert self.entity is not None
        return self.entity

    @classmethod
    def resume(
        cls, registry: EntityRegistry, detector: Any, *, rule: Aggregator | None = None
    ) -> ReputationLedger:
        """A ledger continuing from a stored detector (an entity, ref or lineage id): trust,
        suspects, counts and detections come back; the accumulated deviations restart."""
        entity = registry.get(detector.ref if isinstance(detector, Entity) else detector)
        if not isinstance(entity, ByzantineDetectorEntity):
            raise ValidationError(f"{detector!r} is not a ByzantineDetectorEntity")
        s = dict(entity.settings)
        ledger = cls(
            entity.n_workers,
            f=entity.f,
            rule=rule,
            name=entity.name,
            decay=s.get("decay", 0.98),
            threshold=s.get("threshold", 4.0),
            min_rounds=s.get("min_rounds", 5),
            thresholds=Thresholds(z=s.get("z", 5.0), ratio=s.get("ratio", 1.5)),
            trust_rate=s.get("trust_rate", 0.2),
            trust_step=s.get("trust_step", 0.1),
            sync_every=s.get("sync_every", 0),
        )
        ledger.registry, ledger.entity = registry, entity
        ledger.round = entity.round
        if len(entity.trust) == ledger.n:
            ledger.trust = torch.tensor(entity.trust, dtype=torch.float64)
            ledger._round_trust = ledger.trust.clone()
            ledger._reported = ledger.trust.clone()
        ledger.suspects = tuple(entity.suspects)
        ledger._held = set(entity.suspects)
        ledger.flag_counts = list(entity.flag_counts) or [0] * ledger.n
        ledger.detections = list(entity.detections)
        ledger.estimated_false_positives = entity.estimated_false_positives
        return ledger
