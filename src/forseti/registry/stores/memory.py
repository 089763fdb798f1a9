"""The in-memory store: the reference implementation the other backends are tested against.

Dicts are keyed by ``uuid.int`` rather than by ``UUID`` objects: ``UUID.__hash__`` is Python code,
and a commit touches a dozen keys.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from uuid import UUID

from ...entities import EntityRef
from ...errors import (
    NotFoundError,
    StoreClosedError,
    ValidationError,
)
from ..records import AliasRecord, EventRecord, VersionRecord, WriteBatch
from .base import (
    Store,
    alias_conflict,
    check_append,
    check_new_lineage,
    duplicate_operation,
    merged_ops,
    tracking_conflict,
)
from .graph import GraphIndex

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Everything in dicts behind one lock; nothing survives ``close()``."""

    dialect = "memory"
    blocking = False

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._history: dict[int, list[VersionRecord]] = {}
        self._by_id: dict[int, VersionRecord] = {}
        self._by_op: dict[str, list[VersionRecord]] = {}
        self._kinds: dict[int, tuple[str, str | None]] = {}
        self._edge_keys: set[tuple[int, int, str]] = set()
        self._graph = GraphIndex()  # the provenance graph, by version id
        self._aliases: dict[tuple[int, str], AliasRecord] = {}
        self._events: list[EventRecord] = []
        self._event_ids: set[int] = set()
        self._tracking: dict[str, int] = {}
        self._ops: dict[str, str | None] = {}  # recorded op ids -> the op they were merged into
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the memory store is closed")

    # -- writes --------------------------------------------------------------------------------

    def write(self, batch: WriteBatch) -> list[EventRecord]:
        with self._lock:
            self._check_open()
            history = self._history
            staged: dict[int, VersionRecord] = {}
            ids: set[int] = set()
            recorded = merged_ops(batch)
            for op_id, _ in recorded:  # checked first, as the SQL stores do
                if op_id in self._ops:
                    raise duplicate_operation(op_id)
            for rec in batch.versions:
                lid = rec.lineage_id.int
                prior = staged.get(lid)
                if prior is None and lid in history:
                    prior = history[lid][-1]
                if rec.version == 1:
                    check_new_lineage(rec, prior.version if prior else None)
                else:
                    check_append(rec, (prior.version, prior.id, prior.type_name) if prior else None)
                rid = rec.id.int
                if rid in self._by_id or rid in ids:
                    raise ValidationError(f"a version with id {rec.id} is already stored")
                staged[lid] = rec
                ids.add(rid)
            event_ids: set[int] = set()
            new_events = []
            for ev in batch.events:
                eid = ev.event_id.int
                if eid in self._event_ids or eid in event_ids:
                    if batch.skip_logged_events:
                        continue
                    raise ValidationError(f"event {ev.event_id} is already in the log")
                event_ids.add(eid)
                new_events.append(ev)
            track = batch.tracking
            if track is not None and self._tracking.get(track.consumer) != track.expected:
                raise tracking_conflict(track, self._tracking.get(track.consumer))
            # every check passed: apply
            for op_id, merged_into in recorded:
                self._ops[op_id] = merged_into
            for rec in batch.versions:
                lid = rec.lineage_id.int
                if rec.version == 1:
                    self._kinds[lid] = (rec.type_name, rec.name)
                    history[lid] = [rec]
                else:
                    history[lid].append(rec)
                    kind, name = self._kinds[lid]
                    if name != rec.name:  # renamed: find(name=...) follows the head
                        self._kinds[lid] = (kind, rec.name)
                self._by_id[rec.id.int] = rec
                if rec.op_id is not None:
                    self._by_op.setdefault(rec.op_id, []).append(rec)
            new_edges = []
            for edge in batch.edges:
                src, dst = edge.src_id.int, edge.dst_id.int
                key = (src, dst, edge.relation)
                if key not in self._edge_keys:
                    self._edge_keys.add(key)
                    a, b = self._by_id[src], self._by_id[dst]
                    new_edges.append((0, src, dst, a.lineage_id, a.version, b.lineage_id, b.version))
            self._graph.add(new_edges)
            out = []
            for ev in new_events:
                stored = EventRecord(
                    ev.event_id, ev.topic, ev.payload, ev.recorded_at, ev.lineage_id,
                    ev.version, len(self._events) + 1,
                )  # fmt: skip
                self._events.append(stored)
                self._event_ids.add(ev.event_id.int)
                out.append(stored)
            if batch.skip_logged_events:
                out = []
            if track is not None:
                self._tracking[track.consumer] = track.last_seq
            return out

    # -- reads ---------------------------------------------------------------------------------

    def head(self, lineage_id: UUID) -> VersionRecord | None:
        self._check_open()
        versions = self._history.get(lineage_id.int)
        return versions[-1] if versions else None

    def get_version(self, lineage_id: UUID, version: int) -> VersionRecord | None:
        self._check_open()
        versions = self._history.get(lineage_id.int)
        if versions and 1 <= version <= len(versions):
            return versions[version - 1]
        return None

    def get_by_id(self, version_id: UUID) -> VersionRecord | None:
        self._check_open()
        return self._by_id.get(version_id.int)

    def get_by_op_id(self, op_id: str) -> list[VersionRecord]:
        self._check_open()
        primary = self._ops.get(op_id) or op_id
        return sorted(self._by_op.get(primary, ()), key=lambda r: (r.lineage_id.hex, r.version))

    def history(self, lineage_id: UUID) -> list[VersionRecord]:
        self._check_open()
        with self._lock:
            return list(self._history.get(lineage_id.int, ()))

    def find_heads(self, type_names: Sequence[str], name: str | None = None) -> list[VersionRecord]:
        self._check_open()
        wanted = set(type_names)
        with self._lock:
            return [
                self._history[lid][-1]
                for lid, (kind, lname) in self._kinds.items()
                if kind in wanted and (name is None or lname == name)
            ]

    def walk(self, start_id: UUID, direction: str, max_depth: int | None) -> list[EntityRef]:
        self._check_open()
        with self._lock:
            return self._graph.walk(start_id.int, direction, max_depth)

    # -- aliases -------------------------------------------------------------------------------

    def get_alias(self, lineage_id: UUID, alias: str) -> AliasRecord | None:
        self._check_open()
        return self._aliases.get((lineage_id.int, alias))

    def list_aliases(self, lineage_id: UUID) -> list[AliasRecord]:
        self._check_open()
        with self._lock:
            return sorted(
                (a for (lid, _), a in self._aliases.items() if lid == lineage_id.int),
                key=lambda a: a.alias,
            )

    def set_alias(
        self,
        lineage_id: UUID,
        alias: str,
        version: int,
        expected_revision: int | None,
        events: Sequence[EventRecord] = (),
    ) -> AliasRecord:
        with self._lock:
            self._check_open()
            if self.get_version(lineage_id, version) is None:
                raise NotFoundError(f"lineage {lineage_id} has no version {version}")
            current = self._aliases.get((lineage_id.int, alias))
            actual = current.revision if current else None
            if actual != expected_revision:
                raise alias_conflict(lineage_id, alias, expected_revision, actual)
            rec = AliasRecord(lineage_id, alias, version, (actual or 0) + 1)
            if events:
                self.write(WriteBatch(events=list(events)))
            self._aliases[(lineage_id.int, alias)] = rec
            return rec

    # -- events --------------------------------------------------------------------------------

    def read_events(
        self,
        since_seq: int = 0,
        topic: str | None = None,
        lineage_id: UUID | None = None,
        limit: int | None = None,
    ) -> list[EventRecord]:
        self._check_open()
        with self._lock:
            out = []
            for ev in self._events[max(since_seq, 0):]:
                if topic is not None and ev.topic != topic:
                    continue
                if lineage_id is not None and ev.lineage_id != lineage_id:
                    continue
                out.append(ev)
                if limit is not None and len(out) >= limit:
                    break
            return out

    def get_tracking(self, consumer: str) -> int | None:
        self._check_open()
        return self._tracking.get(consumer)

    def changed_externally(self) -> bool:
        return False

    def close(self) -> None:
        self._closed = True
