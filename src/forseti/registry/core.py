"""The synchronous :class:`EntityRegistry`: add, commit, read, query and trace entity versions."""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, TypeVar, overload
from uuid import UUID

from ..entities import BlobRef, Entity, EntityRef, entity_types
from ..entities.refs import fast_ref
from ..entities.base import MAX_VERSION
from ..entities.frozen import normalize
from ..errors import NotFoundError, StoreClosedError, ValidationError
from ..events import AliasMoved, EntityRegistered, EntityVersionCommitted, Event, EventBus
from .blobs import BlobSource, BlobStore, FileBlobStore
from .codec import decode_version, encode_version
from .eventlog import (
    EventWriter,
    Projection,
    ProjectionReport,
    StoredEvent,
    filter_records,
    run_projection,
    to_record,
)
from .records import AliasRecord, EdgeRecord, TrackingUpdate, VersionRecord, WriteBatch
from .stores.base import Store, walk_graph

__all__ = ["EntityRegistry", "Alias"]

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Entity)
Alias = AliasRecord

_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class EntityRegistry:
    """Versioned entities with lineage, over a store (memory, SQLite or PostgreSQL).

    Open one with :func:`forseti.open`. The registry owns its store, blob store, event bus
    (``reg.bus``) and event-log writer; :meth:`close` (or ``with``) flushes and releases them. All
    methods are thread-safe and never touch the caller's event loop, so they work inside a running
    one (notebooks).
    """

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        *,
        cache_size: int = 65_536,
        bus: EventBus | None = None,
        event_batch_size: int = 1000,
        event_interval: float = 0.05,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self.bus = bus if bus is not None else EventBus()
        """The registry's event bus: registry events, and whatever you publish on it."""
        self._writer = EventWriter(store, batch_size=event_batch_size, interval=event_interval)
        self.bus.add_sink(self._writer.submit)
        self._cache_size = cache_size
        self._versions: OrderedDict[EntityRef, Entity] = OrderedDict()  # immutable: safe to cache
        self._heads: dict[UUID, Entity] = {}
        # bumped whenever the head cache is dropped: a read that began before a drop must not
        # put its (possibly older) head back
        self._generation = 0
        self._lock = threading.Lock()
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The store this registry writes to."""
        return self._store

    @property
    def url(self) -> str:
        """Where the data lives (password-free)."""
        return self._store.describe()

    def close(self) -> None:
        """Flush buffered events and release the store, bus and writer; idempotent."""
        if not self._closed:
            self._closed = True
            try:
                self._writer.close()
            finally:
                self.bus.close()
                self._store.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> EntityRegistry:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EntityRegistry({self.url!r}{', closed' if self._closed else ''})"

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("this registry is closed")

    # -- writes --------------------------------------------------------------------------------

    def add(self, entity: E) -> E:
        """Store the first version of a new lineage and return it.

        Raises :class:`~forseti.errors.ValidationError` for anything but a version-1 entity and
        :class:`~forseti.errors.ConflictError` if the lineage already exists.
        """
        if isinstance(entity, Entity) and entity.version != 1:
            raise ValidationError(
                f"add() stores the first version of a lineage; this is version {entity.version}: "
                f"use commit()"
            )
        return self.commit_many([entity])[0]  # type: ignore[return-value]

    def commit(self, draft: E) -> E:
        """Store a draft made by ``entity.evolve(...)`` as the lineage's next version.

        The store checks that the head is still the version the draft was made from; if another
        writer got there first, :class:`~forseti.errors.ConflictError` carries ``expected`` and
        ``actual`` and nothing is written.
        """
        if isinstance(draft, Entity) and draft.version == 1:
            raise ValidationError("commit() stores a draft from evolve(); use add() for version 1")
        return self.commit_many([draft])[0]  # type: ignore[return-value]

    def commit_many(
        self,
        drafts: Sequence[Entity],
        *,
        op_id: str | None = None,
        events: Sequence[Event] = (),
        tracking: TrackingUpdate | None = None,
    ) -> list[Entity]:
        """Store several new versions (of one or more lineages) in one transaction.

        All of them are written or none is. Version-1 entities start new lineages; later versions
        must be drafts of their lineage's head. ``op_id``, when given, is recorded with the
        versions and may be committed only once. The registry's own events
        (``EntityRegistered``, ``EntityVersionCommitted``) and any ``events`` given are written in
        the same transaction (outbox), then delivered on ``reg.bus``.
        """
        self._check_open()
        if not isinstance(drafts, (list, tuple)) or (not drafts and tracking is None):
            raise ValidationError("commit_many() takes a non-empty sequence of entities")
        for d in drafts:
            if not isinstance(d, Entity):
                raise ValidationError(f"expected an Entity, got {type(d).__name__}")
        if op_id is not None and (
            not isinstance(op_id, str) or not 0 < len(op_id) <= 128 or "\x00" in op_id
        ):
            raise ValidationError(
                "op_id is a non-empty string of at most 128 characters, without NUL characters"
            )
        for e in events:
            if not isinstance(e, Event):
                raise ValidationError(f"expected an Event, got {type(e).__name__}")
        batch = WriteBatch(tracking=tracking)
        earlier: dict[EntityRef, UUID] = {}  # drafts before this one: the only ones it may cite
        batch_refs: set[EntityRef] | None = None
        announced: list[Event] = []
        for d in drafts:
            rec = encode_version(d, op_id)
            batch.versions.append(rec)
            if d.previous_id is not None:
                batch.edges.append(EdgeRecord(d.previous_id, d.id, "previous"))
                announced.append(
                    EntityVersionCommitted(
                        subject=d.ref,
                        entity_type=rec.type_name,
                        previous=fast_ref(d.lineage_id, d.version - 1),
                        version_id=d.id,
                        op_id=op_id,
                    )
                )
            else:
                announced.append(
                    EntityRegistered(
                        subject=d.ref, entity_type=rec.type_name, name=rec.name, op_id=op_id
                    )
                )
            for relation, ref in d.references():
                src = earlier.get(ref)
                if src is None:
                    if batch_refs is None:
                        batch_refs = {x.ref for x in drafts}
                    if ref.lineage_id == d.lineage_id and ref.version >= d.version or (
                        ref in batch_refs
                    ):
                        raise ValidationError(
                            f"{type(d).__name__}.{relation} refers to {ref}, which is not an "
                            f"earlier version: provenance cannot form a cycle"
                        )
                    src = self._version_id(ref, relation, d)
                batch.edges.append(EdgeRecord(src, d.id, relation))
            if len(drafts) > 1:
                earlier[d.ref] = d.id
        batch.events = [to_record(e, trusted=True) for e in announced]
        batch.events += [to_record(e) for e in events]
        announced.extend(events)
        self._store.write(batch)
        with self._lock:
            for d in drafts:
                self._remember(d, head=True)
        self._announce(announced)
        return list(drafts)

    def _announce(self, events: Sequence[Event]) -> None:
        """Deliver events the store already wrote; every one, even if a strict handler fails."""
        errors: list[Exception] = []
        for e in events:
            try:
                self.bus.publish_persisted(e)
            except ExceptionGroup as group:
                errors.extend(group.exceptions)
        if errors:
            raise ExceptionGroup(
                f"{len(errors)} handler(s) failed on committed events (the commit stands)", errors
            )

    def _version_id(self, ref: EntityRef, relation: str, owner: Entity) -> UUID:
        cached = self._cached(ref)
        if cached is not None:
            return cached.id
        rec = self._store.get_version(ref.lineage_id, ref.version)
        if rec is None:
            raise NotFoundError(
                f"{type(owner).__name__}.{relation} refers to {ref}, which is not stored"
            )
        return rec.id

    # -- reads ---------------------------------------------------------------------------------

    @overload
    def get(self, lineage: EntityRef, version: None = None, *, alias: None = None) -> Entity: ...
    @overload
    def get(
        self, lineage: UUID | str, version: int | None = None, *, alias: str | None = None
    ) -> Entity: ...

    def get(
        self,
        lineage: UUID | str | EntityRef,
        version: int | None = None,
        *,
        alias: str | None = None,
    ) -> Entity:
        """The head of a lineage, or an exact ``version``, or the version an ``alias`` points at.

        ``lineage`` may also be an :class:`EntityRef`. Raises :class:`NotFoundError` if absent.
        """
        self._check_open()
        if isinstance(lineage, EntityRef):
            if version is not None or alias is not None:
                raise ValidationError("an EntityRef already names its version")
            lineage, version = lineage.lineage_id, lineage.version
        lid = _as_uuid(lineage, "lineage_id")
        if alias is not None:
            if version is not None:
                raise ValidationError("give a version or an alias, not both")
            version = self.alias(lid, alias).version
        if version is None:
            generation = self._fresh_generation()
            hit = self._heads.get(lid)
            if hit is not None:
                return hit
            rec = self._store.head(lid)
            if rec is None:
                raise NotFoundError(f"no lineage {lid}")
            return self._load(rec, head=True, generation=generation)
        _check_version(version)
        cached = self._cached(EntityRef(lid, version))
        if cached is not None:
            return cached
        rec = self._store.get_version(lid, version)
        if rec is None:
            raise NotFoundError(f"lineage {lid} has no version {version}")
        return self._load(rec)

    def get_by_id(self, version_id: UUID | str) -> Entity:
        """The version with this ``id``; :class:`NotFoundError` if there is none."""
        self._check_open()
        vid = _as_uuid(version_id, "id")
        rec = self._store.get_by_id(vid)
        if rec is None:
            raise NotFoundError(f"no entity version with id {vid}")
        return self._load(rec)

    def history(self, lineage: UUID | str) -> list[Entity]:
        """Every version of a lineage, oldest first; :class:`NotFoundError` if it does not exist."""
        self._check_open()
        lid = _as_uuid(lineage, "lineage_id")
        records = self._store.history(lid)
        if not records:
            raise NotFoundError(f"no lineage {lid}")
        return [self._load(r) for r in records]

    def find(self, entity_cls: type[E], **fields: Any) -> list[E]:
        """Head versions of lineages of ``entity_cls`` (or a subclass) whose fields equal ``fields``.

        ``reg.find(ModelEntity, name="tiny")``. Oldest lineage first.
        """
        self._check_open()
        if not (isinstance(entity_cls, type) and issubclass(entity_cls, Entity)):
            raise ValidationError(f"find() takes an Entity subclass, got {entity_cls!r}")
        unknown = set(fields) - set(entity_cls.model_fields)
        if unknown:
            raise ValidationError(
                f"{entity_cls.__name__} has no field(s) {', '.join(sorted(unknown))}"
            )
        name = fields.get("name")
        if isinstance(name, str) and "\x00" in name:
            return []  # no stored name holds a NUL character (the stores refuse them)
        generation = self._fresh_generation()
        records = self._store.find_heads(
            sorted(entity_types(entity_cls)), name if isinstance(name, str) else None
        )
        out = []
        for rec in records:
            entity = self._load(rec, head=True, generation=generation)
            if all(normalize(getattr(entity, k)) == normalize(v) for k, v in fields.items()):
                out.append(entity)
        return out  # type: ignore[return-value]

    def ancestors(self, of: Entity | EntityRef, *, max_depth: int | None = None) -> list[EntityRef]:
        """Every version ``of`` was derived from, nearest first (previous versions included)."""
        return self._walk(of, "up", max_depth)

    def descendants(
        self, of: Entity | EntityRef, *, max_depth: int | None = None
    ) -> list[EntityRef]:
        """Every version derived from ``of``, nearest first (later versions included)."""
        return self._walk(of, "down", max_depth)

    def _walk(self, of: Entity | EntityRef, direction: str, max_depth: int | None) -> list[EntityRef]:
        self._check_open()
        if max_depth is not None and (
            isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1
        ):
            raise ValidationError("max_depth is a positive integer or None")
        ref = of.ref if isinstance(of, Entity) else of
        if not isinstance(ref, EntityRef):
            raise ValidationError(f"expected an Entity or EntityRef, got {type(of).__name__}")
        start = self.get(ref).id
        edges = self._store.graph_edges(start, direction)
        return walk_graph(self._store.graph_key(start), edges, max_depth)

    # -- aliases -------------------------------------------------------------------------------

    def alias(self, lineage: UUID | str, name: str) -> Alias:
        """The alias ``name`` of a lineage (its version and revision); NotFoundError if unset."""
        self._check_open()
        lid = _as_uuid(lineage, "lineage_id")
        _check_alias(name)
        rec = self._store.get_alias(lid, name)
        if rec is None:
            raise NotFoundError(f"lineage {lid} has no alias {name!r}")
        return rec

    def aliases(self, lineage: UUID | str) -> list[Alias]:
        """All aliases of a lineage, by name."""
        self._check_open()
        return self._store.list_aliases(_as_uuid(lineage, "lineage_id"))

    def move_alias(
        self,
        lineage: UUID | str,
        name: str,
        version: int,
        *,
        expected_revision: int | None,
    ) -> Alias:
        """Point alias ``name`` at ``version`` by compare-and-set on its revision.

        Pass ``expected_revision=None`` to create the alias, or the revision you read to move it;
        if another writer moved it in between, :class:`~forseti.errors.ConflictError`.
        """
        self._check_open()
        lid = _as_uuid(lineage, "lineage_id")
        _check_alias(name)
        _check_version(version)
        if expected_revision is not None and (
            isinstance(expected_revision, bool)
            or not isinstance(expected_revision, int)
            or not 0 <= expected_revision < MAX_VERSION
        ):
            raise ValidationError(
                f"expected_revision is None or an integer from 0 to {MAX_VERSION - 1}"
            )
        before = self._store.get_alias(lid, name)
        previous = None
        if before is not None and before.revision == expected_revision:
            previous = EntityRef(lid, before.version)
        event = AliasMoved(
            subject=EntityRef(lid, version),
            alias=name,
            revision=(expected_revision or 0) + 1,
            previous=previous,
        )
        moved = self._store.set_alias(
            lid, name, version, expected_revision, [to_record(event, trusted=True)]
        )
        self._announce([event])
        return moved

    # -- events ----------------------------------------------------------------------------------

    def events(
        self,
        since_seq: int = 0,
        *,
        topic: str | type[Event] | None = None,
        subject: EntityRef | UUID | str | None = None,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        """Logged events after ``since_seq``, in commit order (buffered ones are flushed first).

        Filter by ``topic`` (a topic name or an Event class) and by ``subject`` (a lineage id, or
        an :class:`EntityRef` for one exact version).
        """
        self._check_open()
        if isinstance(since_seq, bool) or not isinstance(since_seq, int) or since_seq < 0:
            raise ValidationError("since_seq is a non-negative integer")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValidationError("limit is a positive integer or None")
        if isinstance(topic, type) and issubclass(topic, Event):
            topic = topic.topic
        elif topic is not None and not isinstance(topic, str):
            raise ValidationError("topic is a topic name or an Event subclass")
        ref = subject if isinstance(subject, EntityRef) else None
        lineage = None
        if subject is not None:
            lineage = ref.lineage_id if ref is not None else _as_uuid(subject, "subject")
        self._writer.flush()
        records = self._store.read_events(since_seq, topic, lineage, limit if ref is None else None)
        out = filter_records(records, ref)
        return out[:limit] if limit is not None else out

    def flush_events(self) -> int:
        """Write every buffered event to the log now; returns how many were written."""
        self._check_open()
        return self._writer.flush()

    def run_projection(self, projection: Projection, *, batch_size: int = 500) -> ProjectionReport:
        """Feed every event the projection has not processed yet to it, exactly once.

        The entity versions it returns are committed together with its tracking row, so a crash
        or restart never processes an event twice or skips one.
        """
        self._check_open()
        self._writer.flush()
        return run_projection(self, projection, batch_size=batch_size)

    # -- blobs ---------------------------------------------------------------------------------

    @property
    def blobs(self) -> BlobStore:
        """The content-addressed blob store."""
        return self._blobs

    def put_blob(self, source: BlobSource, *, format: str = "bin") -> BlobRef:
        """Store bytes or a file's content by sha256 and return its :class:`BlobRef`."""
        self._check_open()
        if not isinstance(source, (bytes, bytearray, memoryview, str, os.PathLike)):
            raise ValidationError(f"a blob is bytes or a file path, not {type(source).__name__}")
        BlobRef(sha256="0" * 64, size=0, format=format)  # validates the format name
        return self._blobs.put(source, format)

    def open_blob(self, ref: BlobRef) -> BinaryIO:
        """A readable file of the blob, verified (IntegrityError on any mismatch)."""
        self._check_open()
        return self._blobs.open(_as_blob(ref))

    def read_blob(self, ref: BlobRef) -> bytes:
        """The blob's bytes, verified (IntegrityError on any mismatch)."""
        self._check_open()
        return self._blobs.read(_as_blob(ref))

    def blob_path(self, ref: BlobRef) -> Path:
        """The verified file of a blob, for tools that want a path (file blob stores only)."""
        self._check_open()
        ref = _as_blob(ref)
        if not isinstance(self._blobs, FileBlobStore):
            raise ValidationError("this registry keeps blobs in memory; use open_blob()")
        self._blobs.open(ref).close()
        return self._blobs.path(ref)

    # -- cache -----------------------------------------------------------------------------------

    def _cached(self, ref: EntityRef) -> Entity | None:
        return self._versions.get(ref)

    def _fresh_generation(self) -> int:
        """Drop the head cache if another writer may have moved a head; the current generation."""
        if self._store.changed_externally():
            with self._lock:
                self._heads.clear()
                self._generation += 1
        return self._generation

    def _load(self, rec: VersionRecord, head: bool = False, generation: int | None = None) -> Entity:
        hit = self._versions.get(EntityRef(rec.lineage_id, rec.version))
        if hit is None or hit.id != rec.id:
            hit = decode_version(rec)
        with self._lock:
            self._remember(hit, head and generation in (None, self._generation))
        return hit

    def _remember(self, entity: Entity, head: bool) -> None:
        versions = self._versions
        versions[entity.ref] = entity
        if len(versions) > self._cache_size:
            versions.popitem(last=False)
        if head:
            current = self._heads.get(entity.lineage_id)
            if current is None or current.version < entity.version:
                self._heads[entity.lineage_id] = entity


def _as_uuid(value: Any, what: str) -> UUID:
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            pass
    raise ValidationError(f"{what} must be a UUID, got {value!r}")


def _check_version(version: Any) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise ValidationError(f"version must be an integer from 1 to {MAX_VERSION}, got {version!r}")


def _as_blob(ref: Any) -> BlobRef:
    if not isinstance(ref, BlobRef):
        raise ValidationError(f"expected a BlobRef, got {type(ref).__name__}")
    return ref


def _check_alias(name: Any) -> None:
    if not isinstance(name, str) or not _ALIAS.match(name):
        raise ValidationError(
            f"an alias name is 1-128 letters, digits, '.', '_' or '-', got {name!r}"
        )
