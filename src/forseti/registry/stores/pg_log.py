"""The PostgreSQL store's event log, consumer tracking and aliases (a mixin of
:class:`~forseti.registry.stores.postgres.PostgresStore`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import asyncpg

from ...errors import NotFoundError, ValidationError
from ..records import AliasRecord, EventRecord, TrackingUpdate
from .base import alias_conflict, tracking_conflict
from .pg_support import EVENTS, std_uuid

__all__ = ["PostgresLogMixin"]

T = TypeVar("T")


class PostgresLogMixin:
    """Event appends (with the ordering lock), tracking rows, aliases and log reads."""

    _events_lock: tuple[Any, ...]

    if TYPE_CHECKING:

        def _rows(self, sql: str, *args: Any) -> list[Any]: ...
        def _call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T: ...

    # -- events in a write ---------------------------------------------------------------------

    def _event_args(self, evs: Sequence[EventRecord]) -> tuple[Any, ...]:
        return (
            [e.event_id for e in evs], [e.lineage_id for e in evs], [e.version for e in evs],
            [e.topic for e in evs], [e.payload for e in evs], [e.recorded_at for e in evs],
            *self._events_lock,
        )  # fmt: skip

    async def _append_events(
        self, conn: asyncpg.Connection, evs: Sequence[EventRecord]
    ) -> list[EventRecord]:
        if not evs:
            return []
        try:
            rows = await conn.fetch(EVENTS, *self._event_args(evs))
        except asyncpg.UniqueViolationError as exc:
            found = re.search(r"\(event_id\)=\(([0-9a-fA-F-]+)\)", exc.detail or "")
            which = found.group(1) if found else "of this batch"
            raise ValidationError(f"event {which} is already in the log") from None
        seqs = {r[0]: r[1] for r in rows}
        return [replace(ev, seq=seqs[ev.event_id]) for ev in evs]

    @staticmethod
    async def _track(conn: asyncpg.Connection, update: TrackingUpdate) -> None:
        """Move a consumer's position by compare-and-set, in the caller's transaction."""
        if update.expected is None:
            done = await conn.fetchval(
                "INSERT INTO tracking (consumer, last_seq) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING RETURNING 1",
                update.consumer,
                update.last_seq,
            )
        else:
            done = await conn.fetchval(
                "UPDATE tracking SET last_seq=$1 WHERE consumer=$2 AND last_seq=$3 RETURNING 1",
                update.last_seq,
                update.consumer,
                update.expected,
            )
        if done is None:
            actual = await conn.fetchval(
                "SELECT last_seq FROM tracking WHERE consumer=$1", update.consumer
            )
            raise tracking_conflict(update, actual)

    def get_tracking(self, consumer: str) -> int | None:
        rows = self._rows("SELECT last_seq FROM tracking WHERE consumer=$1", consumer)
        return rows[0][0] if rows else None

    # -- aliases -------------------------------------------------------------------------------

    def get_alias(self, lineage_id: UUID, alias: str) -> AliasRecord | None:
        rows = self._rows(
            "SELECT version, revision FROM aliases WHERE lineage_id=$1 AND alias=$2",
            lineage_id,
            alias,
        )
        return AliasRecord(lineage_id, alias, rows[0][0], rows[0][1]) if rows else None

    def list_aliases(self, lineage_id: UUID) -> list[AliasRecord]:
        rows = self._rows(
            "SELECT alias, version, revision FROM aliases WHERE lineage_id=$1 ORDER BY alias",
            lineage_id,
        )
        return [AliasRecord(lineage_id, a, v, r) for a, v, r in rows]

    def set_alias(
        self,
        lineage_id: UUID,
        alias: str,
        version: int,
        expected_revision: int | None,
        events: Sequence[EventRecord] = (),
    ) -> AliasRecord:
        return self._call(self._set_alias, lineage_id, alias, version, expected_revision, events)

    async def _set_alias(
        self,
        conn: asyncpg.Connection,
        lid: UUID,
        alias: str,
        version: int,
        expected: int | None,
        events: Sequence[EventRecord],
    ) -> AliasRecord:
        async with conn.transaction():
            if not await conn.fetchval(
                "SELECT 1 FROM entity_versions WHERE lineage_id=$1 AND version=$2", lid, version
            ):
                raise NotFoundError(f"lineage {lid} has no version {version}")
            if expected is None:  # create: waits for a concurrent creator, then does nothing
                new = await conn.fetchval(
                    "INSERT INTO aliases (lineage_id, alias, version, revision) "
                    "VALUES ($1, $2, $3, 1) ON CONFLICT DO NOTHING RETURNING revision",
                    lid, alias, version,
                )  # fmt: skip
            else:
                new = await conn.fetchval(
                    "UPDATE aliases SET version=$1, revision=revision+1 "
                    "WHERE lineage_id=$2 AND alias=$3 AND revision=$4 RETURNING revision",
                    version, lid, alias, expected,
                )  # fmt: skip
            if new is None:
                actual = await conn.fetchval(
                    "SELECT revision FROM aliases WHERE lineage_id=$1 AND alias=$2", lid, alias
                )
                raise alias_conflict(lid, alias, expected, actual)
            await self._append_events(conn, events)
        return AliasRecord(lid, alias, version, new)

    # -- events --------------------------------------------------------------------------------

    def read_events(
        self,
        since_seq: int = 0,
        topic: str | None = None,
        lineage_id: UUID | None = None,
        limit: int | None = None,
    ) -> list[EventRecord]:
        sql = "SELECT seq, event_id, lineage_id, version, topic, payload, recorded_at FROM events "
        sql += "WHERE seq > $1"
        args: list[Any] = [since_seq]
        for clause, value in ((" AND topic = ", topic), (" AND lineage_id = ", lineage_id)):
            if value is not None:
                args.append(value)
                sql += f"{clause}${len(args)}"
        sql += " ORDER BY seq"
        if limit is not None:
            args.append(limit)
            sql += f" LIMIT ${len(args)}"
        return [
            EventRecord(UUID(int=eid.int), top, payload, rec, std_uuid(lid), ver, seq)
            for seq, eid, lid, ver, top, payload, rec in self._rows(sql, *args)
        ]
