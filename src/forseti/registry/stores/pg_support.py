"""PostgreSQL support for :mod:`~forseti.registry.stores.postgres`: the SQL it runs, and the
private event-loop thread and connection-loss handling its synchronous API rests on."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar
from uuid import UUID

import asyncpg

from ...errors import ConflictError, IntegrityError, StoreClosedError, ValidationError
from ..records import VersionRecord
from .base import check_new_lineage

logger = logging.getLogger(__name__)

T = TypeVar("T")

LOCK_BOOTSTRAP = 0x46525331  # "FRS1": first open of a schema (DDL, schema row)
LOCK_EVENTS = 0x46525332  # "FRS2": one event appender at a time, so seq follows commit order
SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
COLS = "id, lineage_id, version, previous_id, type, state, state_hash, created_at, op_id"
SELECT = f"SELECT {COLS} FROM entity_versions WHERE "
LOST = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, ConnectionDoesNotExistError
    asyncpg.AdminShutdownError,  # 57P01: pg_terminate_backend
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.InternalClientError,  # a pooled connection killed while idle (MagicStack/asyncpg#1069)
    ConnectionError,
)
MAYBE_LOST = (*LOST, asyncpg.InterfaceError)
# Append a version after the head in one statement: read the head, insert only if the draft
# follows it (then its provenance edges, and the lineage's new name if the version renamed it:
# find(name=...) follows the head), and return the head so a refusal can be explained. The
# (lineage_id, version) primary key still stops a concurrent writer that read the same head.
# Events in batch order, after the per-schema ordering lock: every output row of the join needs
# the one-row ``lk``, so the lock is held before the first ``nextval`` (seq) is drawn, and until
# COMMIT, so seq follows commit order for readers tailing the log.
EVENTS = (
    "WITH lk AS MATERIALIZED (SELECT pg_advisory_xact_lock($7, $8)) "
    "INSERT INTO events (event_id, lineage_id, version, topic, payload, recorded_at) "
    "SELECT e, l, v, t, p, r FROM lk, unnest($1::uuid[], $2::uuid[], $3::int4[], $4::text[], "
    "$5::bytea[], $6::timestamptz[]) WITH ORDINALITY x(e, l, v, t, p, r, o) "
    "ORDER BY o RETURNING event_id, seq"
)
# the group-commit writer's appends: idempotent by event id (a re-published event is logged once)
EVENTS_SKIP = EVENTS.replace(
    "ORDER BY o RETURNING event_id, seq", "ORDER BY o ON CONFLICT (event_id) DO NOTHING"
)
APPEND = (
    "WITH head AS (SELECT version, id, type FROM entity_versions WHERE lineage_id = $2::uuid "
    "ORDER BY version DESC LIMIT 1), "
    f"ins AS (INSERT INTO entity_versions ({COLS}) SELECT $1::uuid, $2::uuid, $3::int4, "
    "$4::uuid, $5::text, $6::bytea, $7::text, $8::timestamptz, $9::text FROM head "
    "WHERE head.version = $3::int4 - 1 AND head.id = $4::uuid AND head.type = $5::text "
    "RETURNING 1), "
    "edges AS (INSERT INTO provenance_edges (src_id, dst_id, relation) "
    "SELECT * FROM unnest($10::uuid[], $11::uuid[], $12::text[]) WHERE EXISTS (SELECT FROM ins) "
    "ON CONFLICT DO NOTHING), "
    "ren AS (UPDATE lineages SET name = $13::text WHERE lineage_id = $2::uuid "
    "AND name IS DISTINCT FROM $13::text AND EXISTS (SELECT FROM ins)) "
    "SELECT h.version, h.id, h.type, EXISTS (SELECT FROM ins) FROM (VALUES (1)) one "
    "LEFT JOIN head h ON true"
)


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection died (so its transaction, if any, did not commit)."""
    return isinstance(exc, LOST) or (
        isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc)
    )


def terminate(conn: asyncpg.Connection) -> None:
    try:
        conn.terminate()
    except asyncpg.InterfaceError:  # already closed and handed back to the pool
        pass


def std_uuid(value: UUID | None) -> UUID | None:
    # asyncpg returns its own UUID subclass; hand out plain uuid.UUID objects
    return None if value is None else UUID(int=value.int)


async def fetch_rows(conn: asyncpg.Connection, sql: str, *args: Any) -> list[Any]:
    return await conn.fetch(sql, *args)  # type: ignore[no-any-return]


def version_record(row: Any) -> VersionRecord:
    vid, lid, version, prev, type_name, state, state_hash, created_at, op_id = row
    return VersionRecord(
        UUID(int=vid.int), UUID(int=lid.int), version, std_uuid(prev), type_name, None, state,
        state_hash, created_at, op_id,
    )  # fmt: skip


class OutcomeUnknown(Exception):
    """The connection broke while COMMIT was in flight: such a write is never retried."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class LoopThread:
    """An event loop running forever in a daemon thread; ``run`` waits for a coroutine on it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError("a PostgresStore cannot be called from its own event loop thread")
        if self.loop.is_closed() or not self._thread.is_alive():
            raise StoreClosedError("the PostgreSQL store's event loop has stopped")
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            while True:
                try:
                    return fut.result(timeout=1.0)
                except TimeoutError:
                    if fut.done():
                        raise
                    if not self._thread.is_alive():
                        raise StoreClosedError("the PostgreSQL store was closed") from None
        except BaseException:
            fut.cancel()
            raise

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self.loop.close()


async def no_reset(conn: asyncpg.Connection) -> None:
    """Pool release hook: the store never leaves session state behind (saves a round trip)."""


async def map_unique(
    conn: asyncpg.Connection, exc: asyncpg.UniqueViolationError, rec: VersionRecord | None
) -> Exception:
    """Turn a duplicate-key error of a version insert into the contract's error."""
    name = exc.constraint_name or ""
    if rec is None:
        return IntegrityError(f"the store refused the write: {exc}")
    if name == "uq_entity_versions_id":
        return ValidationError(f"a version with id {rec.id} is already stored")
    if name not in ("pk_entity_versions", "pk_lineages"):
        return IntegrityError(
            f"the store refused version {rec.version} of {rec.lineage_id}: {exc}"
        )
    try:  # the failed transaction is rolled back: this read sees the winner's commit
        actual = await conn.fetchval(
            "SELECT max(version) FROM entity_versions WHERE lineage_id=$1", rec.lineage_id
        )
    except MAYBE_LOST:
        actual = None
    if name == "pk_lineages" and actual is not None:
        try:
            check_new_lineage(rec, actual)
        except ConflictError as conflict:
            return conflict
    return ConflictError(
        f"lineage {rec.lineage_id}: version {rec.version} was committed concurrently",
        lineage_id=rec.lineage_id,
        expected=rec.version - 1,
        actual=actual,
    )
