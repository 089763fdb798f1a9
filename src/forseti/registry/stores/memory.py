"""The in-memory store: the reference implementation the other backends are tested against."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from uuid import UUID

from ...errors import DuplicateOperationError, NotFoundError, StoreClosedError, ValidationError, ConflictError
from ..records import AliasRecord, EdgeRecord, EventRecord, VersionRecord, WriteBatch
from .base import Store, check_append, check_new_lineage

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Everything in dicts behind one lock; nothing survives ``close()``."""

    dialect = "memory"
    blocking = False

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._history: dict[UUID, list[VersionRecord]] = {}
        self._by_id: dict[UUID, VersionRecord] = {}
        self._by_op: dict[str, list[VersionRecord]] = {}
        self._kinds: dict[UUID, tuple[str, str | None]] = {}
        self._up: dict[UUID, list[EdgeRecord]] = {}  # dst -> edges into it
        self._down: dict[UUID, list[EdgeRecord]] = {}  # src -> edges out of it
        self._edge_keys: set[tuple[UUID, UUID, str]] = set()
        self._aliases: dict[tuple[UUID, str], AliasRecord] = {}
        self._events: list[EventRecord] = []
        self._event_ids: set[UUID] = set()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the memory store is closed")

    # -- writes --------------------------------------------------------------------------------

    def write(self, batch: WriteBatch) -> list[EventRecord]:
        with self._lock:
            self._check_open()
            staged: dict[UUID, VersionRecord] = {}
            ids: set[UUID] = set()
            ops: set[str] = set()
            for rec in batch.versions:
                prior = staged.get(rec.lineage_id)
                if prior is None and rec.lineage_id in self._history:
                    prior = self._history[rec.lineage_id][-1]
                if rec.version == 1:
                    check_new_lineage(rec, prior.version if prior else None)
                else:
                    check_append(rec, (prior.version, prior.id, prior.type_name) if prior else None)
                if rec.id in self._by_id or rec.id in ids:
                    raise ValidationError(f"a version with id {rec.id} is already stored")
                if rec.op_id is not None and rec.op_id in self._by_op and rec.op_id not in ops:
                    raise DuplicateOperationError(
                        f"operation {rec.op_id!r} was already committed", op_id=rec.op_id
                    )
                staged[rec.lineage_id] = rec
                ids.add(rec.id)
                if rec.op_id is not None:
                    ops.add(rec.op_id)
            for ev in batch.events:
                if ev.event_id in self._event_ids:
                    raise ValidationError(f"event {ev.event_id} is already in the log")
            # every check passed: apply
            for rec in batch.versions:
                if rec.version == 1:
                    self._kinds[rec.lineage_id] = (rec.type_name, rec.name)
                    self._history[rec.lineage_id] = []
                self._history[rec.lineage_id].append(rec)
                self._by_id[rec.id] = rec
                if rec.op_id is not None:
                    self._by_op.setdefault(rec.op_id, []).append(rec)
            for edge in batch.edges:
                key = (edge.src_id, edge.dst_id, edge.relation)
                if key not in self._edge_keys:
                    self._edge_keys.add(key)
                    self._up.setdefault(edge.dst_id, []).append(edge)
                    self._down.setdefault(edge.src_id, []).append(edge)
            out = []
            for ev in batch.events:
                stored = replace(ev, seq=len(self._events) + 1)
                self._events.append(stored)
                self._event_ids.add(ev.event_id)
                out.append(stored)
            return out

    # -- reads ---------------------------------------------------------------------------------

    def head(self, lineage_id: UUID) -> VersionRecord | None:
        self._check_open()
        versions = self._history.get(lineage_id)
        return versions[-1] if versions else None

    def get_version(self, lineage_id: UUID, version: int) -> VersionRecord | None:
        self._check_open()
        versions = self._history.get(lineage_id)
        if versions and 1 <= version <= len(versions):
            return versions[version - 1]
        return None

    def get_by_id(self, version_id: UUID) -> VersionRecord | None:
        self._check_open()
        return self._by_id.get(version_id)

    def get_by_op_id(self, op_id: str) -> list[VersionRecord]:
        self._check_open()
        return list(self._by_op.get(op_id, ()))

    def history(self, lineage_id: UUID) -> list[VersionRecord]:
        self._check_open()
        with self._lock:
            return list(self._history.get(lineage_id, ()))

    def find_heads(self, type_names: Sequence[str], name: str | None = None) -> list[VersionRecord]:
        self._check_open()
        wanted = set(type_names)
        with self._lock:
            return [
                self._history[lid][-1]
                for lid, (kind, lname) in self._kinds.items()
                if kind in wanted and (name is None or lname == name)
            ]

    def graph_edges(self, start_id: UUID, direction: str) -> list[tuple[UUID, UUID, int, UUID]]:
        self._check_open()
        out: list[tuple[UUID, UUID, int, UUID]] = []
        with self._lock:
            seen = {start_id}
            stack = [start_id]
            while stack:
                node = stack.pop()
                if direction == "up":
                    pairs = [(e.src_id) for e in self._up.get(node, ())]
                else:
                    pairs = [(e.dst_id) for e in self._down.get(node, ())]
                for other in pairs:
                    rec = self._by_id[other]
                    out.append((node, other, rec.version, rec.lineage_id))
                    if other not in seen:
                        seen.add(other)
                        stack.append(other)
        return out

    # -- aliases -------------------------------------------------------------------------------

    def get_alias(self, lineage_id: UUID, alias: str) -> AliasRecord | None:
        self._check_open()
        return self._aliases.get((lineage_id, alias))

    def list_aliases(self, lineage_id: UUID) -> list[AliasRecord]:
        self._check_open()
        with self._lock:
            return sorted(
                (a for (lid, _), a in self._aliases.items() if lid == lineage_id),
                key=lambda a: a.alias,
            )

    def set_alias(
        self, lineage_id: UUID, alias: str, version: int, expected_revision: int | None
    ) -> AliasRecord:
        with self._lock:
            self._check_open()
            if self.get_version(lineage_id, version) is None:
                raise NotFoundError(f"lineage {lineage_id} has no version {version}")
            current = self._aliases.get((lineage_id, alias))
            actual = current.revision if current else None
            if actual != expected_revision:
                raise ConflictError(
                    f"alias {alias!r} of lineage {lineage_id} is at revision {actual}, "
                    f"not {expected_revision}",
                    lineage_id=lineage_id,
                    expected=expected_revision,
                    actual=actual,
                )
            rec = AliasRecord(lineage_id, alias, version, (actual or 0) + 1)
            self._aliases[(lineage_id, alias)] = rec
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

    def changed_externally(self) -> bool:
        return False

    def close(self) -> None:
        self._closed = True
