"""The embedded default: SQLite through the stdlib driver, WAL mode, one connection per thread.

Write transactions start with ``BEGIN IMMEDIATE`` (a deferred ``BEGIN`` that reads then writes
fails under contention with ``database is locked``), so the head check and the insert happen under
the write lock; the ``(lineage_id, version)`` primary key remains the final OCC check.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from uuid import UUID

from ...entities import EntityRef
from ...entities.refs import fast_uuid
from ...errors import (
    ConflictError,
    IntegrityError,
    SchemaVersionError,
    StoreClosedError,
    ValidationError,
)
from ..records import EventRecord, VersionRecord, WriteBatch
from ..schema import SCHEMA_VERSION, ddl_statements
from .base import (
    Store,
    check_append,
    check_new_lineage,
    duplicate_operation,
    merged_ops,
)
from .graph import GraphIndex
from .sqlite_log import SQLiteLogMixin, opt_uuid, parse_dt

__all__ = ["SQLiteStore"]

logger = logging.getLogger(__name__)

_VERSION_COLS = "id, lineage_id, version, previous_id, type, state, state_hash, created_at, op_id"


_second: tuple[int | None, str] = (None, "")


def _ts(dt: datetime) -> str:
    """SQLAlchemy's SQLite DATETIME text, in UTC (the per-second prefix is cached: hot path)."""
    global _second
    seconds = int(dt.timestamp() // 1)
    cached = _second
    if cached[0] != seconds:
        cached = _second = (seconds, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)))
    return f"{cached[1]}.{dt.microsecond:06d}"


def _enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch to WAL. The switch itself ignores the busy handler when several processes create
    the same file at once, so it is retried (with a short backoff) until ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)  # another process holds the lock for a moment: back off and retry
            delay = min(delay * 2, 0.05)


class SQLiteStore(SQLiteLogMixin, Store):
    """A SQLite file (WAL, ``synchronous=NORMAL``), safe across threads and processes."""

    dialect = "sqlite"
    blocking = True

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path).expanduser().resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timeout = timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
        self._graph = GraphIndex()  # built on the first provenance walk
        self._shm_fd: int | None = None
        self._shm_token = b""
        self._bootstrap()
        self._watch_shm()

    # -- connections ---------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise StoreClosedError(f"the SQLite store at {self.path} is closed")
        conn = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        _enable_wal(conn, self._timeout)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys=ON")
        self._local.conn = conn
        # unknown until first checked: a new connection may see commits the caches missed
        self._local.data_version = None
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _bootstrap(self) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='forseti_schema'"
            ).fetchone()
            if exists:
                row = conn.execute("SELECT version FROM forseti_schema WHERE singleton=1").fetchone()
                found = row[0] if row else None
                if found is not None and found > SCHEMA_VERSION:
                    raise SchemaVersionError(
                        f"{self.path} was written by a newer Forseti (schema {found}); this version "
                        f"understands schema {SCHEMA_VERSION}: upgrade forseti to open it"
                    )
            for stmt in ddl_statements("sqlite"):
                conn.execute(stmt)
            conn.execute(
                "INSERT OR IGNORE INTO forseti_schema (singleton, version) VALUES (1, ?)",
                (SCHEMA_VERSION,),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            self.close()
            raise

    # -- writes --------------------------------------------------------------------------------

    def write(self, batch: WriteBatch) -> list[EventRecord]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = self._write(conn, batch)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return out

    def _write(self, conn: sqlite3.Connection, batch: WriteBatch) -> list[EventRecord]:
        for op_id, merged_into in merged_ops(batch):
            cur = conn.execute(
                "INSERT OR IGNORE INTO operations (op_id, merged_into, recorded_at) "
                "VALUES (?, ?, ?)",
                (op_id, merged_into, _ts(batch.versions[0].created_at)),
            )
            if cur.rowcount != 1:
                raise duplicate_operation(op_id)
        for rec in batch.versions:
            lid = rec.lineage_id.hex
            row = conn.execute(
                "SELECT v.version, v.id, v.type, l.name FROM entity_versions v "
                "JOIN lineages l ON l.lineage_id = v.lineage_id WHERE v.lineage_id=? "
                "ORDER BY v.version DESC LIMIT 1",
                (lid,),
            ).fetchone()
            if rec.version == 1:
                check_new_lineage(rec, row[0] if row else None)
                conn.execute(
                    "INSERT INTO lineages (lineage_id, kind, name, created_at) VALUES (?, ?, ?, ?)",
                    (lid, rec.type_name, rec.name, _ts(rec.created_at)),
                )
            else:
                check_append(rec, (row[0], UUID(hex=row[1]), row[2]) if row else None)
                if row[3] != rec.name:  # renamed: find(name=...) follows the head
                    conn.execute("UPDATE lineages SET name=? WHERE lineage_id=?", (rec.name, lid))
            try:
                conn.execute(
                    f"INSERT INTO entity_versions ({_VERSION_COLS}) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        rec.id.hex,
                        lid,
                        rec.version,
                        rec.previous_id.hex if rec.previous_id else None,
                        rec.type_name,
                        rec.state,
                        rec.state_hash,
                        _ts(rec.created_at),
                        rec.op_id,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise _map_integrity(exc, rec) from None
        if batch.edges:
            conn.executemany(
                "INSERT OR IGNORE INTO provenance_edges (src_id, dst_id, relation) VALUES (?,?,?)",
                [(e.src_id.hex, e.dst_id.hex, e.relation) for e in batch.edges],
            )
        out: list[EventRecord] = []
        if batch.events:
            rows = [
                (
                    ev.event_id.hex,
                    ev.lineage_id.hex if ev.lineage_id else None,
                    ev.version,
                    ev.topic,
                    ev.payload,
                    _ts(ev.recorded_at),
                )
                for ev in batch.events
            ]
            columns = "event_id, lineage_id, version, topic, payload, recorded_at"
            if batch.skip_logged_events:
                conn.executemany(
                    f"INSERT OR IGNORE INTO events ({columns}) VALUES (?,?,?,?,?,?)", rows
                )
            else:
                out = self._append_events(conn, batch.events, rows, columns)
        if batch.tracking is not None:
            self._track(conn, batch.tracking)
        return out

    # -- reads ---------------------------------------------------------------------------------

    def _version(self, row: tuple | None) -> VersionRecord | None:  # type: ignore[type-arg]
        if row is None:
            return None
        return VersionRecord(
            id=UUID(hex=row[0]),
            lineage_id=UUID(hex=row[1]),
            version=row[2],
            previous_id=opt_uuid(row[3]),
            type_name=row[4],
            name=None,
            state=row[5],
            state_hash=row[6],
            created_at=parse_dt(row[7]),
            op_id=row[8],
        )

    def head(self, lineage_id: UUID) -> VersionRecord | None:
        row = self._conn().execute(
            f"SELECT {_VERSION_COLS} FROM entity_versions WHERE lineage_id=? "
            "ORDER BY version DESC LIMIT 1",
            (lineage_id.hex,),
        ).fetchone()
        return self._version(row)

    def get_version(self, lineage_id: UUID, version: int) -> VersionRecord | None:
        row = self._conn().execute(
            f"SELECT {_VERSION_COLS} FROM entity_versions WHERE lineage_id=? AND version=?",
            (lineage_id.hex, version),
        ).fetchone()
        return self._version(row)

    def get_by_id(self, version_id: UUID) -> VersionRecord | None:
        row = self._conn().execute(
            f"SELECT {_VERSION_COLS} FROM entity_versions WHERE id=?", (version_id.hex,)
        ).fetchone()
        return self._version(row)

    def get_by_op_id(self, op_id: str) -> list[VersionRecord]:
        rows = self._conn().execute(
            f"SELECT {_VERSION_COLS} FROM entity_versions WHERE op_id=coalesce("
            "(SELECT merged_into FROM operations WHERE op_id=?), ?) ORDER BY lineage_id, version",
            (op_id, op_id),
        ).fetchall()
        return [self._version(r) for r in rows]  # type: ignore[misc]

    def history(self, lineage_id: UUID) -> list[VersionRecord]:
        rows = self._conn().execute(
            f"SELECT {_VERSION_COLS} FROM entity_versions WHERE lineage_id=? ORDER BY version",
            (lineage_id.hex,),
        ).fetchall()
        return [self._version(r) for r in rows]  # type: ignore[misc]

    def find_heads(self, type_names: Sequence[str], name: str | None = None) -> list[VersionRecord]:
        if not type_names:
            return []
        marks = ",".join("?" * len(type_names))
        params: list[object] = list(type_names)
        where = f"l.kind IN ({marks})"
        if name is not None:
            where += " AND l.name = ?"
            params.append(name)
        cols = ", ".join(f"v.{c.strip()}" for c in _VERSION_COLS.split(","))
        rows = self._conn().execute(
            f"SELECT {cols} FROM lineages l JOIN entity_versions v ON v.lineage_id = l.lineage_id "
            f"AND v.version = (SELECT max(version) FROM entity_versions WHERE lineage_id = "
            f"l.lineage_id) WHERE {where} ORDER BY l.created_at, l.lineage_id",
            params,
        ).fetchall()
        return [self._version(r) for r in rows]  # type: ignore[misc]

    def walk(self, start_id: UUID, direction: str, max_depth: int | None) -> list[EntityRef]:
        # edges are append-only and SQLite hands out rowids in commit order, so the in-memory
        # copy only needs the rows after the last one it has
        graph = self._graph
        with graph.lock:
            rows = self._conn().execute(
                "SELECT e.rowid, e.src_id, e.dst_id, s.lineage_id, s.version, d.lineage_id, "
                "d.version FROM provenance_edges e JOIN entity_versions s ON s.id = e.src_id "
                "JOIN entity_versions d ON d.id = e.dst_id WHERE e.rowid > ? ORDER BY e.rowid",
                (graph.cursor,),
            ).fetchall()
            if rows:
                lineages: dict[str, UUID] = {}

                def lineage(text: str) -> UUID:
                    found = lineages.get(text)
                    if found is None:
                        found = lineages[text] = fast_uuid(text)
                    return found

                graph.add(
                    (pos, a, b, lineage(la), va, lineage(lb), vb)
                    for pos, a, b, la, va, lb, vb in rows
                )
            return graph.walk(start_id.hex, direction, max_depth)

    # -- cache coherence, lifecycle ------------------------------------------------------------

    def changed_externally(self) -> bool:
        # Fast path: the WAL-index header in the "-shm" file changes with every commit (its
        # iChange counter, frame count and checksums; see sqlite.org/walformat.html). Reading it
        # costs a fraction of a query. Any change, ours included, reports True: the head cache is
        # then re-read once. A torn read only gives a spurious True.
        if self._shm_fd is not None and not self._closed:
            try:
                token = os.pread(self._shm_fd, 40, 8)
            except OSError:
                token = b""
            if len(token) == 40:
                if token == self._shm_token:
                    return False
                self._shm_token = token
                return True
        conn = self._conn()
        current = conn.execute("PRAGMA data_version").fetchone()[0]
        if current != self._local.data_version:
            self._local.data_version = current
            return True
        return False

    def _watch_shm(self) -> None:
        try:
            self._shm_fd = os.open(f"{self.path}-shm", os.O_RDONLY)
        except OSError:
            self._shm_fd = None  # no shared-memory index: PRAGMA data_version it is

    def close(self) -> None:
        self._closed = True
        fd, self._shm_fd = self._shm_fd, None
        if fd is not None:
            os.close(fd)
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover - closing is best effort
                logger.debug("error closing a SQLite connection", exc_info=True)
        self._local = threading.local()

    def describe(self) -> str:
        return f"sqlite:///{self.path}"


def _map_integrity(exc: sqlite3.IntegrityError, rec: VersionRecord) -> Exception:
    text = str(exc)
    if "entity_versions.id" in text:
        return ValidationError(f"a version with id {rec.id} is already stored")
    if "entity_versions.lineage_id" in text:
        return ConflictError(
            f"lineage {rec.lineage_id}: version {rec.version} was committed concurrently",
            lineage_id=rec.lineage_id,
            expected=rec.version - 1,
            actual=None,
        )
    return IntegrityError(f"the store refused version {rec.version} of {rec.lineage_id}: {text}")
