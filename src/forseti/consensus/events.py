"""Events of robust aggregation, published on a registry's bus (and so persisted in its log).

Non-finite scores (a worker that sent Inf/NaN) are recorded as ``None``.
"""

from __future__ import annotations

from ..events import Event

__all__ = ["AggregationCompleted", "WorkerFlagged", "WorkerTrustChanged"]


class AggregationCompleted(Event, frozen=True):
    """One round aggregated: who was selected, each worker's score, who was flagged."""

    topic = "forseti.consensus.AggregationCompleted"
    round: int
    rule: str
    selected: list[int]
    scores: list[float | None]
    flagged: list[int] = []
    nonfinite: list[int] = []


class WorkerFlagged(Event, frozen=True):
    """A worker became a suspect: ``reason`` is ``"round"`` (an outlier this round) or
    ``"sequential"`` (its accumulated deviation crossed the threshold); ``statistic`` is the
    value that crossed it."""

    topic = "forseti.consensus.WorkerFlagged"
    worker: int
    round: int
    reason: str
    statistic: float | None


class WorkerTrustChanged(Event, frozen=True):
    """A worker's trust score moved by at least the ledger's ``trust_step`` since last reported
    (or it stopped being a suspect: ``flagged`` is its status now)."""

    topic = "forseti.consensus.WorkerTrustChanged"
    worker: int
    round: int
    trust: float
    previous: float
    flagged: bool
