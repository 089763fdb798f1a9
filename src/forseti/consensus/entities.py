"""The detector's persisted state, and the operation that records it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt

from ..entities import Entity, JSONMap, Name
from ..operations import Operation

__all__ = ["Detection", "ByzantineDetectorEntity", "RecordDetectorState"]


class Detection(BaseModel):
    """A worker becoming a suspect: when, why, and the statistic that crossed the threshold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    worker: NonNegativeInt
    round: NonNegativeInt
    reason: str = Field(description="'round' (an outlier this round) or 'sequential'")
    statistic: float | None = None


class ByzantineDetectorEntity(Entity):
    """A :class:`~forseti.consensus.ReputationLedger`'s state: trust per worker, the current
    suspects, every detection, and an estimate of how many detections were false (suspicions
    that cleared within the ledger's ``min_rounds``)."""

    entity_type: ClassVar[str] = "forseti.consensus.ByzantineDetector"

    name: Name = "detector"
    n_workers: NonNegativeInt
    f: NonNegativeInt = 0
    rule: JSONMap = Field(default_factory=dict, description="the aggregation rule's config")
    settings: JSONMap = Field(default_factory=dict, description="the ledger's thresholds")
    round: NonNegativeInt = 0
    trust: tuple[float, ...] = ()
    suspects: tuple[NonNegativeInt, ...] = ()
    flag_counts: tuple[NonNegativeInt, ...] = ()
    detections: tuple[Detection, ...] = ()
    estimated_false_positives: NonNegativeFloat = 0.0


class RecordDetectorState(Operation):
    """Write the ledger's state as the detector's next version (the ledger owns these fields,
    so a retry after a conflict re-applies them on the new head)."""

    state: dict[str, Any]

    def apply(self, heads: Mapping[UUID, Entity]) -> Sequence[Entity]:
        return [heads[self.targets[0]].evolve(**self.state)]
