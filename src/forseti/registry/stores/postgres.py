"""PostgreSQL through asyncpg: the team backend.

The synchronous :class:`~forseti.registry.stores.base.Store` API runs coroutines on a private event
loop in a daemon thread owned by the store, so it also works when called from inside a running
event loop (notebooks, ``asyncio.run``). An asyncpg pool lives on that loop.

The ``(lineage_id, version)`` primary key is the OCC check: the head is read first for a clear
error, and a concurrent writer that gets there first makes the insert fail with the constraint's
name, which is mapped to :class:`~forseti.errors.ConflictError`. Event appends take a
transaction-level advisory lock so ``seq`` follows commit order (see PERSISTENCE.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import zlib
from collections.abc import Callable, Coroutine, Hashable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import asyncpg

from ...entities import EntityRef
from ...entities.refs import fast_ref, fast_uuid
from ...errors import (
    ConfigError,
    ConflictError,
    IntegrityError,
    SchemaVersionError,
    StoreClosedError,
)
from ..records import EventRecord, VersionRecord, WriteBatch
from ..schema import SCHEMA_VERSION, ddl_statements
from ..urls import _options, redact
from .base import (
    Store,
    check_append,
    check_new_lineage,
    duplicate_operation,
    merged_ops,
)
from .graph import bfs
from .pg_log import PostgresLogMixin

__all__ = ["PostgresStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

from .pg_support import (
    APPEND,
    COLS,
    EVENTS_SKIP,
    LOCK_BOOTSTRAP,
    LOCK_EVENTS,
    MAYBE_LOST,
    SCHEMA_NAME,
    SELECT,
    LoopThread,
    OutcomeUnknown,
    connection_lost,
    fetch_rows,
    map_unique,
    no_reset,
    terminate,
    version_record,
)


class PostgresStore(PostgresLogMixin, Store):
    """A PostgreSQL database (optionally one schema of it), safe across threads and processes.

    ``url`` is ``postgresql://user[:password]@host[:port]/db[?schema=NAME]`` (``postgres://``
    too; options ``sslmode`` and ``connect_timeout`` are passed on). The schema is created if
    missing. ``max_connections`` bounds the pool.
    """

    dialect = "postgresql"
    blocking = True

    def __init__(self, url: str, *, max_connections: int = 10) -> None:
        self._redacted = redact(url)
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("postgresql", "postgres"):
            raise ConfigError(f"{self._redacted!r} is not a postgresql:// URL")
        options = _options(parts.query, {"schema", "sslmode", "connect_timeout"})
        self.schema: str | None = options.get("schema") or None
        if self.schema is not None and not SCHEMA_NAME.match(self.schema):
            raise ConfigError(
                f"schema {self.schema!r} must be a letter or _ followed by letters, digits or _"
            )
        try:
            timeout = float(options.get("connect_timeout", "10"))
        except ValueError:
            raise ConfigError("URL option connect_timeout is not a number") from None
        query = f"sslmode={options['sslmode']}" if "sslmode" in options else ""
        dsn = urlunsplit(("postgresql", parts.netloc, parts.path, query, ""))
        # advisory locks are per database: the second key keeps schemas from contending
        key2 = zlib.crc32((self.schema or "").encode()) - (1 << 31)
        self._bootstrap_lock, self._events_lock = (LOCK_BOOTSTRAP, key2), (LOCK_EVENTS, key2)
        self._pid = os.getpid()
        self._closed = False
        self._close_lock = threading.Lock()
        self._pool: asyncpg.Pool | None = None
        self._loop = LoopThread(f"forseti-pg-{id(self):x}")
        try:
            self._loop.run(self._open(dsn, timeout, max(1, max_connections)))
        except BaseException:
            self.close()
            raise

    # -- lifecycle -----------------------------------------------------------------------------

    async def _open(self, dsn: str, timeout: float, max_connections: int) -> None:
        settings = {"search_path": f'"{self.schema}"'} if self.schema else None
        try:
            self._pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=max_connections, timeout=timeout,
                server_settings=settings, reset=no_reset,
            )  # fmt: skip
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                ValueError) as exc:  # fmt: skip
            raise ConfigError(
                f"cannot connect to PostgreSQL at {self._redacted}: {type(exc).__name__}: {exc}"
            ) from None
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await self._bootstrap(conn)
        except asyncpg.PostgresError as exc:
            raise ConfigError(
                f"cannot prepare the Forseti schema in {self._redacted}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        logger.debug("opened PostgreSQL store %s", self._redacted)

    async def _bootstrap(self, conn: asyncpg.Connection) -> None:
        """Create the schema and tables, serialized by an advisory lock (concurrent first opens)."""
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", *self._bootstrap_lock)
        if self.schema:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        found = None
        if await conn.fetchval("SELECT to_regclass('forseti_schema') IS NOT NULL"):
            found = await conn.fetchval("SELECT version FROM forseti_schema WHERE singleton=1")
            if found is not None and found > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self._redacted} was written by a newer Forseti (schema {found}); this "
                    f"version understands schema {SCHEMA_VERSION}: upgrade forseti to open it"
                )
        if found != SCHEMA_VERSION:  # a current schema needs no DDL (and no table locks)
            for stmt in ddl_statements("postgresql"):
                await conn.execute(stmt)
            await conn.execute(
                "INSERT INTO forseti_schema (singleton, version) VALUES (1, $1) "
                "ON CONFLICT DO NOTHING",
                SCHEMA_VERSION,
            )

    def close(self) -> None:
        with self._close_lock:
            if self._closed and self._pool is None:
                return
            self._closed = True
            pool, self._pool = self._pool, None
        if os.getpid() != self._pid:  # a forked child: the loop thread is not ours
            return
        if pool is not None:
            try:
                self._loop.run(self._close_pool(pool))
            except Exception:  # pragma: no cover - closing is best effort
                logger.debug("error closing the PostgreSQL pool", exc_info=True)
        self._loop.stop()

    @staticmethod
    async def _close_pool(pool: asyncpg.Pool) -> None:
        try:
            await asyncio.wait_for(pool.close(), timeout=5)
        except (TimeoutError, *MAYBE_LOST):
            pool.terminate()

    def describe(self) -> str:
        return self._redacted

    def changed_externally(self) -> bool:
        return True  # no head caching on a shared server

    # -- plumbing ------------------------------------------------------------------------------

    def _call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the store's loop with a pooled connection."""
        if self._closed:
            raise StoreClosedError(f"the PostgreSQL store at {self._redacted} is closed")
        if os.getpid() != self._pid:
            raise StoreClosedError(
                "this PostgresStore was opened in another process; open a new one after fork()"
            )
        return self._loop.run(self._retrying(fn, args))

    async def _retrying(
        self, fn: Callable[..., Coroutine[Any, Any, T]], args: tuple[Any, ...]
    ) -> T:
        """Retry once on a fresh connection when the first one turns out to be dead.

        Safe for writes too: a connection that died before COMMIT was sent committed nothing; a
        write whose COMMIT was in flight (:class:`OutcomeUnknown`) is never retried.
        """
        pool = self._pool
        if pool is None:
            raise StoreClosedError(f"the PostgreSQL store at {self._redacted} is closed")
        for attempt in (1, 2):
            async with pool.acquire() as conn:
                try:
                    return await fn(conn, *args)
                except OutcomeUnknown as exc:
                    terminate(conn)
                    raise exc.cause from None
                except MAYBE_LOST as exc:
                    if not connection_lost(exc):
                        raise
                    terminate(conn)  # never hand a broken connection back to the pool
                    if attempt == 2 or self._closed:
                        raise
                    logger.warning("PostgreSQL connection lost (%s); reconnecting, retrying", exc)
            await pool.expire_connections()  # its siblings may be dead too: replace them all
        raise AssertionError("unreachable")  # pragma: no cover

    # -- writes --------------------------------------------------------------------------------

    def write(self, batch: WriteBatch) -> list[EventRecord]:
        return self._call(self._write, batch)

    async def _write(self, conn: asyncpg.Connection, batch: WriteBatch) -> list[EventRecord]:
        current: list[VersionRecord] = []  # the version being inserted, for error mapping
        body_done = False
        try:
            async with conn.transaction():
                out = await self._write_tx(conn, batch, current)
                body_done = True
        except asyncpg.UniqueViolationError as exc:
            raise await map_unique(conn, exc, current[-1] if current else None) from None
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
            # two multi-lineage commits crossed; the database rolled this one back: a conflict
            rec = current[-1] if current else None
            raise ConflictError(
                f"the commit crossed a concurrent one and was rolled back ({exc.sqlstate})",
                lineage_id=rec.lineage_id if rec else None,
                expected=rec.version - 1 if rec else None,
            ) from None
        except MAYBE_LOST as exc:
            if body_done and connection_lost(exc):
                exc.add_note("the connection broke during COMMIT: the outcome is unknown")
                raise OutcomeUnknown(exc) from exc
            raise
        return out

    async def _write_tx(
        self, conn: asyncpg.Connection, batch: WriteBatch, current: list[VersionRecord]
    ) -> list[EventRecord]:
        for op_id, merged_into in merged_ops(batch):
            if await conn.fetchval(
                "INSERT INTO operations (op_id, merged_into, recorded_at) VALUES ($1, $2, now()) "
                "ON CONFLICT DO NOTHING RETURNING 1",
                op_id,
                merged_into,
            ) is None:
                raise duplicate_operation(op_id)
        # the usual commit (one version after the first) is one statement with its edges
        inline = len(batch.versions) == 1 and batch.versions[0].version > 1
        # rows are locked in one global order (lineage, version), so crossing commits of several
        # lineages do not deadlock each other
        for rec in sorted(batch.versions, key=lambda r: (r.lineage_id, r.version)):
            current.append(rec)
            if rec.version > 1:
                edges = batch.edges if inline else []
                row = await conn.fetchrow(
                    APPEND, rec.id, rec.lineage_id, rec.version, rec.previous_id, rec.type_name,
                    rec.state, rec.state_hash, rec.created_at, rec.op_id,
                    [e.src_id for e in edges], [e.dst_id for e in edges], [e.relation for e in edges],
                    rec.name,
                )  # fmt: skip
                if not row[3]:  # the head check failed: say why, exactly as the other stores do
                    head = None if row[0] is None else (row[0], UUID(int=row[1].int), row[2])
                    check_append(rec, head)
                    raise IntegrityError(f"version {rec.version} of {rec.lineage_id} was refused")
                continue
            row = await conn.fetchrow(
                "SELECT version FROM entity_versions WHERE lineage_id=$1 "
                "ORDER BY version DESC LIMIT 1",
                rec.lineage_id,
            )
            check_new_lineage(rec, row[0] if row else None)
            await conn.execute(
                "INSERT INTO lineages (lineage_id, kind, name, created_at) VALUES ($1, $2, $3, $4)",
                rec.lineage_id, rec.type_name, rec.name, rec.created_at,
            )  # fmt: skip
            await conn.execute(
                f"INSERT INTO entity_versions ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                rec.id, rec.lineage_id, rec.version, rec.previous_id, rec.type_name, rec.state,
                rec.state_hash, rec.created_at, rec.op_id,
            )  # fmt: skip
        current.clear()
        if batch.edges and not inline:
            await conn.executemany(
                "INSERT INTO provenance_edges (src_id, dst_id, relation) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING",
                [(e.src_id, e.dst_id, e.relation) for e in batch.edges],
            )
        if batch.skip_logged_events:
            out: list[EventRecord] = []
            if batch.events:
                await conn.execute(EVENTS_SKIP, *self._event_args(batch.events))
        else:
            out = await self._append_events(conn, batch.events)
        if batch.tracking is not None:
            await self._track(conn, batch.tracking)
        return out

    # -- reads ---------------------------------------------------------------------------------

    def _rows(self, sql: str, *args: Any) -> list[Any]:
        """The rows of one query (converted to records on the caller's thread)."""
        return self._call(fetch_rows, sql, *args)

    def _one(self, sql: str, *args: Any) -> VersionRecord | None:
        rows = self._rows(sql, *args)
        return version_record(rows[0]) if rows else None

    def _many(self, sql: str, *args: Any) -> list[VersionRecord]:
        return [version_record(r) for r in self._rows(sql, *args)]

    def head(self, lineage_id: UUID) -> VersionRecord | None:
        return self._one(SELECT + "lineage_id=$1 ORDER BY version DESC LIMIT 1", lineage_id)

    def get_version(self, lineage_id: UUID, version: int) -> VersionRecord | None:
        return self._one(SELECT + "lineage_id=$1 AND version=$2", lineage_id, version)

    def get_by_id(self, version_id: UUID) -> VersionRecord | None:
        return self._one(SELECT + "id=$1", version_id)

    def get_by_op_id(self, op_id: str) -> list[VersionRecord]:
        return self._many(
            SELECT + "op_id=coalesce((SELECT merged_into FROM operations WHERE op_id=$1), $1) "
            "ORDER BY lineage_id, version",
            op_id,
        )

    def history(self, lineage_id: UUID) -> list[VersionRecord]:
        return self._many(SELECT + "lineage_id=$1 ORDER BY version", lineage_id)

    def find_heads(self, type_names: Sequence[str], name: str | None = None) -> list[VersionRecord]:
        if not type_names:
            return []
        cols = ", ".join(f"v.{c.strip()}" for c in COLS.split(","))
        where = "l.kind = ANY($1::text[])" + (" AND l.name = $2" if name is not None else "")
        args: list[Any] = [list(type_names)] + ([name] if name is not None else [])
        return self._many(
            f"SELECT {cols} FROM lineages l JOIN entity_versions v ON v.lineage_id = l.lineage_id "
            f"AND v.version = (SELECT max(version) FROM entity_versions WHERE lineage_id = "
            f"l.lineage_id) WHERE {where} ORDER BY l.created_at, l.lineage_id",
            *args,
        )

    def walk(self, start_id: UUID, direction: str, max_depth: int | None) -> list[EntityRef]:
        near, far = ("dst_id", "src_id") if direction == "up" else ("src_id", "dst_id")
        rows = self._rows(
            f"WITH RECURSIVE walk(near, far) AS ("
            f" SELECT {near}, {far} FROM provenance_edges WHERE {near} = $1"
            f" UNION SELECT e.{near}, e.{far} FROM provenance_edges e JOIN walk w ON e.{near} = w.far"
            f") SELECT w.near, w.far, v.version, v.lineage_id FROM walk w "
            f"JOIN entity_versions v ON v.id = w.far",
            start_id,
        )
        neighbours: dict[Hashable, list[Hashable]] = {}
        refs: dict[Hashable, EntityRef] = {}
        for a, b, version, lineage in rows:
            neighbours.setdefault(a.int, []).append(b.int)
            refs[b.int] = fast_ref(fast_uuid(lineage.int), version)
        return bfs(start_id.int, neighbours, refs, max_depth)
