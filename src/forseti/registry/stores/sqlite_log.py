"""The SQLite store's event log, consumer tracking and aliases (a mixin of
:class:`~forseti.registry.stores.sqlite.SQLiteStore`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ...errors import NotFoundError, ValidationError
from ..records import AliasRecord, EventRecord, TrackingUpdate, WriteBatch
from .base import alias_conflict, tracking_conflict

__all__ = ["SQLiteLogMixin", "parse_dt", "opt_uuid"]


class SQLiteLogMixin:
    """Event appends, tracking rows, aliases and log reads, over the store's connections."""

    if TYPE_CHECKING:

        def _conn(self) -> sqlite3.Connection: ...
        def _write(self, conn: sqlite3.Connection, batch: WriteBatch) -> list[EventRecord]: ...

    # -- events in a write ---------------------------------------------------------------------

    @staticmethod
    def _append_events(
        conn: sqlite3.Connection, events: list[EventRecord], rows: list[tuple[Any, ...]], columns: str
    ) -> list[EventRecord]:
        sql = f"INSERT INTO events ({columns}) VALUES (?,?,?,?,?,?)"
        try:
            if len(rows) == 1:
                last = conn.execute(sql, rows[0]).lastrowid or 0
            else:
                conn.executemany(sql, rows)
                last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        except sqlite3.IntegrityError as exc:
            raise ValidationError(f"an event of this batch is already in the log: {exc}") from None
        # under the write lock, rowids are handed out one after the other
        first = last - len(events) + 1
        return [
            EventRecord(e.event_id, e.topic, e.payload, e.recorded_at, e.lineage_id, e.version, seq)
            for seq, e in enumerate(events, first)
        ]

    @staticmethod
    def _track(conn: sqlite3.Connection, update: TrackingUpdate) -> None:
        if update.expected is None:
            cur = conn.execute(
                "INSERT OR IGNORE INTO tracking (consumer, last_seq) VALUES (?, ?)",
                (update.consumer, update.last_seq),
            )
        else:
            cur = conn.execute(
                "UPDATE tracking SET last_seq=? WHERE consumer=? AND last_seq=?",
                (update.last_seq, update.consumer, update.expected),
            )
        if cur.rowcount != 1:
            row = conn.execute(
                "SELECT last_seq FROM tracking WHERE consumer=?", (update.consumer,)
            ).fetchone()
            raise tracking_conflict(update, row[0] if row else None)

    def get_tracking(self, consumer: str) -> int | None:
        row = self._conn().execute(
            "SELECT last_seq FROM tracking WHERE consumer=?", (consumer,)
        ).fetchone()
        return row[0] if row else None

    # -- aliases -------------------------------------------------------------------------------

    def get_alias(self, lineage_id: UUID, alias: str) -> AliasRecord | None:
        row = self._conn().execute(
            "SELECT version, revision FROM aliases WHERE lineage_id=? AND alias=?",
            (lineage_id.hex, alias),
        ).fetchone()
        return AliasRecord(lineage_id, alias, row[0], row[1]) if row else None

    def list_aliases(self, lineage_id: UUID) -> list[AliasRecord]:
        rows = self._conn().execute(
            "SELECT alias, version, revision FROM aliases WHERE lineage_id=? ORDER BY alias",
            (lineage_id.hex,),
        ).fetchall()
        return [AliasRecord(lineage_id, a, v, r) for a, v, r in rows]

    def set_alias(
        self,
        lineage_id: UUID,
        alias: str,
        version: int,
        expected_revision: int | None,
        events: Sequence[EventRecord] = (),
    ) -> AliasRecord:
        conn = self._conn()
        lid = lineage_id.hex
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not conn.execute(
                "SELECT 1 FROM entity_versions WHERE lineage_id=? AND version=?", (lid, version)
            ).fetchone():
                raise NotFoundError(f"lineage {lineage_id} has no version {version}")
            if expected_revision is None:
                try:
                    conn.execute(
                        "INSERT INTO aliases (lineage_id, alias, version, revision) VALUES (?,?,?,1)",
                        (lid, alias, version),
                    )
                except sqlite3.IntegrityError:
                    actual = self._alias_revision(conn, lid, alias)
                    raise alias_conflict(lineage_id, alias, None, actual) from None
                new = 1
            else:
                cur = conn.execute(
                    "UPDATE aliases SET version=?, revision=revision+1 "
                    "WHERE lineage_id=? AND alias=? AND revision=?",
                    (version, lid, alias, expected_revision),
                )
                if cur.rowcount != 1:
                    actual = self._alias_revision(conn, lid, alias)
                    raise alias_conflict(lineage_id, alias, expected_revision, actual)
                new = expected_revision + 1
            if events:
                self._write(conn, WriteBatch(events=list(events)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return AliasRecord(lineage_id, alias, version, new)

    @staticmethod
    def _alias_revision(conn: sqlite3.Connection, lid: str, alias: str) -> int | None:
        row = conn.execute(
            "SELECT revision FROM aliases WHERE lineage_id=? AND alias=?", (lid, alias)
        ).fetchone()
        return row[0] if row else None

    # -- events --------------------------------------------------------------------------------

    def read_events(
        self,
        since_seq: int = 0,
        topic: str | None = None,
        lineage_id: UUID | None = None,
        limit: int | None = None,
    ) -> list[EventRecord]:
        sql = (
            "SELECT seq, event_id, lineage_id, version, topic, payload, recorded_at FROM events "
            "WHERE seq > ?"
        )
        params: list[object] = [since_seq]
        if topic is not None:
            sql += " AND topic = ?"
            params.append(topic)
        if lineage_id is not None:
            sql += " AND lineage_id = ?"
            params.append(lineage_id.hex)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [
            EventRecord(
                event_id=UUID(hex=eid),
                topic=top,
                payload=payload,
                recorded_at=parse_dt(rec),
                lineage_id=opt_uuid(lid),
                version=ver,
                seq=seq,
            )
            for seq, eid, lid, ver, top, payload, rec in self._conn().execute(sql, params)
        ]


def parse_dt(text: str) -> datetime:
    """A stored SQLAlchemy DATETIME text (UTC) as an aware datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def opt_uuid(text: str | None) -> UUID | None:
    """A stored hex uuid, or None."""
    return None if text is None else UUID(hex=text)
