"""Events of an operation's life: submitted, started, conflicted, retried, committed, rejected, failed."""

from __future__ import annotations

from uuid import UUID

from ..events import Event

__all__ = [
    "OperationEvent",
    "OperationSubmitted",
    "OperationStarted",
    "OperationConflicted",
    "OperationRetried",
    "OperationCommitted",
    "OperationRejected",
    "OperationFailed",
]


class OperationEvent(Event, frozen=True):
    """Base of the operation events: which operation, of which kind, on which lineages."""

    topic = "forseti.OperationEvent"
    op_id: str
    kind: str
    targets: tuple[UUID, ...]
    priority: int


class OperationSubmitted(OperationEvent, frozen=True):
    topic = "forseti.OperationSubmitted"
    policy: str
    reason: str = ""


class OperationStarted(OperationEvent, frozen=True):
    topic = "forseti.OperationStarted"
    attempt: int
    merged: tuple[str, ...] = ()


class OperationConflicted(OperationEvent, frozen=True):
    topic = "forseti.OperationConflicted"
    attempt: int
    lineage_id: UUID | None
    expected: int | None
    actual: int | None


class OperationRetried(OperationEvent, frozen=True):
    topic = "forseti.OperationRetried"
    attempt: int
    delay_s: float


class OperationCommitted(OperationEvent, frozen=True):
    """Written in the commit's own transaction: the audit record of the change."""

    topic = "forseti.OperationCommitted"
    attempts: int
    policy: str
    reason: str
    parameters: dict[str, object]
    merged_into: str | None = None


class OperationRejected(OperationEvent, frozen=True):
    topic = "forseti.OperationRejected"
    reason: str


class OperationFailed(OperationEvent, frozen=True):
    topic = "forseti.OperationFailed"
    attempts: int
    error_type: str
    error_message: str
