"""Plain records exchanged between the registry and a store.

The registry validates and encodes; a store only persists records and answers queries, so every
backend shares one definition of what is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

__all__ = [
    "VersionRecord",
    "EdgeRecord",
    "EventRecord",
    "AliasRecord",
    "TrackingUpdate",
    "WriteBatch",
]


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One stored entity version (a row of ``entity_versions``)."""

    id: UUID
    lineage_id: UUID
    version: int
    previous_id: UUID | None
    type_name: str
    name: str | None
    state: bytes
    state_hash: str
    created_at: datetime
    op_id: str | None = None


@dataclass(frozen=True, slots=True)
class EdgeRecord:
    """A provenance edge from an input version (``src_id``) to the version it produced."""

    src_id: UUID
    dst_id: UUID
    relation: str


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event written to the log; ``seq`` is assigned by the store in commit order."""

    event_id: UUID
    topic: str
    payload: bytes
    recorded_at: datetime
    lineage_id: UUID | None = None
    version: int | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class AliasRecord:
    """A named pointer to one version of a lineage, moved only by compare-and-set."""

    lineage_id: UUID
    alias: str
    version: int
    revision: int


@dataclass(frozen=True, slots=True)
class TrackingUpdate:
    """Move a consumer's position in the event log by compare-and-set.

    ``expected`` is the position the consumer read (``None``: it has no row yet); the write fails
    with :class:`~forseti.errors.ConflictError` if another instance moved it meanwhile.
    """

    consumer: str
    expected: int | None
    last_seq: int


@dataclass(slots=True)
class WriteBatch:
    """Everything one commit writes, in one transaction: all of it or none of it."""

    versions: list[VersionRecord] = field(default_factory=list)
    edges: list[EdgeRecord] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    tracking: TrackingUpdate | None = None
    #: skip events whose id is already logged instead of failing (the group-commit writer's
    #: appends are idempotent); the returned events then carry no ``seq``
    skip_logged_events: bool = False
    #: operations folded into this batch's own operation (its versions carry that op_id); each
    #: is recorded too, so replaying any of them is recognised
    merged_op_ids: list[str] = field(default_factory=list)
