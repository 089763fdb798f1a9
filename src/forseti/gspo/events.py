"""Events of GSPO training, published on the registry's bus (and so persisted in the log)."""

from __future__ import annotations

from ..entities import EntityRef
from ..events import Event

__all__ = ["GSPOTrainingStarted", "GSPOStepCompleted", "GSPOTrainingCompleted"]


class GSPOTrainingStarted(Event, frozen=True):
    """A run started (or resumed at ``step``); ``subject`` is the run's version."""

    topic = "forseti.gspo.TrainingStarted"
    run_name: str
    task: str
    step: int = 0
    total_steps: int = 0


class GSPOStepCompleted(Event, frozen=True):
    """One rollout and its updates; ``metrics`` holds everything GSPO.md lists (see the docs)."""

    topic = "forseti.gspo.StepCompleted"
    step: int
    metrics: dict[str, float]


class GSPOTrainingCompleted(Event, frozen=True):
    """The run reached its last step; ``checkpoint`` is the final checkpoint's version (the event
    is written in the same transaction)."""

    topic = "forseti.gspo.TrainingCompleted"
    run_name: str
    step: int
    duration_s: float
    metrics: dict[str, float]
    checkpoint: EntityRef | None = None
