"""Events the registry writes in the same transaction as the change they describe (outbox)."""

from __future__ import annotations

from uuid import UUID

from ..entities import EntityRef
from .base import Event

__all__ = ["EntityRegistered", "EntityVersionCommitted", "AliasMoved"]


class EntityRegistered(Event, frozen=True):
    """A new lineage was added; ``subject`` is its version 1."""

    topic = "forseti.EntityRegistered"
    entity_type: str
    name: str | None = None
    op_id: str | None = None


class EntityVersionCommitted(Event, frozen=True):
    """A lineage got a new version; ``subject`` is the new version."""

    topic = "forseti.EntityVersionCommitted"
    entity_type: str
    previous: EntityRef
    version_id: UUID
    op_id: str | None = None


class AliasMoved(Event, frozen=True):
    """An alias now points at ``subject``; ``previous`` is where it pointed before (if anywhere)."""

    topic = "forseti.AliasMoved"
    alias: str
    revision: int
    previous: EntityRef | None = None
