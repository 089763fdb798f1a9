"""Events of workflow runs; each is written in the same transaction as the run's new version."""

from __future__ import annotations

from ..events import Event

__all__ = ["WorkflowStarted", "WorkflowCompleted", "WorkflowFailed"]


class WorkflowStarted(Event, frozen=True):
    """A run started (``attempt`` > 1: it was resumed); ``subject`` is the run's version."""

    topic = "forseti.WorkflowStarted"
    workflow: str
    attempt: int = 1
    steps: int = 0


class WorkflowCompleted(Event, frozen=True):
    """Every step of a run completed."""

    topic = "forseti.WorkflowCompleted"
    workflow: str
    duration_s: float


class WorkflowFailed(Event, frozen=True):
    """A step failed; ``compensated`` lists the steps whose ``on_failure`` ran successfully."""

    topic = "forseti.WorkflowFailed"
    workflow: str
    step: str
    error: str
    compensated: tuple[str, ...] = ()
