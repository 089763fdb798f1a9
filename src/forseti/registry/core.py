"""The synchronous :class:`EntityRegistry`: add, commit, read, query and trace entity versions."""

from __future__ import annotations

import contextvars
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload
from uuid import UUID

from ..entities import Entity, EntityRef, entity_types
from ..entities.frozen import normalize
from ..errors import NotFoundError, StoreClosedError, ValidationError
from ..events import Event, EventBus
from .batch import build_batch
from .blobs import BlobStore
from .callables import CallablesMixin
from .checks import as_uuid, check_op_id, check_version
from .codec import decode_version
from .eventlog import EventWriter
from .facets import Alias, AliasesMixin, BlobsMixin, EventLogMixin, LineageMixin
from .records import TrackingUpdate, VersionRecord
from .stores.base import Store

if TYPE_CHECKING:
    from ..operations import Operation, OperationResult, OperationScheduler

__all__ = ["EntityRegistry", "Alias", "active_registry"]

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Entity)

_ACTIVE: contextvars.ContextVar[EntityRegistry | None] = contextvars.ContextVar(
    "forseti_active_registry", default=None
)


def active_registry() -> EntityRegistry | None:
    """The registry made active by ``with reg.activate():`` in this context, if any."""
    return _ACTIVE.get()


class EntityRegistry(AliasesMixin, EventLogMixin, BlobsMixin, LineageMixin, CallablesMixin):
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
        self._scheduler: OperationScheduler | None = None

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
                if self._callables is not None:
                    self._callables.close()
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

    @contextmanager
    def activate(self) -> Iterator[EntityRegistry]:
        """Within the block, ``@with_conflict_resolution`` functions use this registry and
        ``@emit_events`` functions publish on its bus."""
        token = _ACTIVE.set(self)
        try:
            with self.bus.activate():
                yield self
        finally:
            _ACTIVE.reset(token)

    # -- operations ------------------------------------------------------------------------------

    @property
    def scheduler(self) -> OperationScheduler:
        """The registry's operation scheduler (created on first use)."""
        if self._scheduler is None:
            # forseti.operations builds on the registry: imported when first needed
            from ..operations import OperationScheduler

            with self._lock:
                if self._scheduler is None:
                    self._scheduler = OperationScheduler(self)
        return self._scheduler

    def submit(self, op: Operation) -> OperationResult:
        """Stage ``op`` behind higher-priority work on its targets, then commit it with retry.

        Returns the result (committed, replayed for an ``op_id`` already committed, or rejected
        under policy ``reject``); raises ConflictError when the retry budget is spent, and the
        error of ``op.apply`` if it fails. See :mod:`forseti.operations.scheduler`.
        """
        self._check_open()
        return self.scheduler.submit(op)

    def submit_many(self, ops: Sequence[Operation]) -> list[OperationResult]:
        """Stage several operations together (so they are ordered and merged), then run them."""
        self._check_open()
        return self.scheduler.submit_many(ops)

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
        merged_op_ids: Sequence[str] = (),
    ) -> list[Entity]:
        """Store several new versions (of one or more lineages) in one transaction.

        All of them are written or none is. Version-1 entities start new lineages; later versions
        must be drafts of their lineage's head. ``op_id``, when given, is recorded with the
        versions and may be committed only once; ``merged_op_ids`` are further operation ids folded
        into this one (recorded too, so each is idempotent). The registry's own events
        (``EntityRegistered``, ``EntityVersionCommitted``) and any ``events`` given are written in
        the same transaction (outbox), then delivered on ``reg.bus``.
        """
        return self._commit(
            drafts, op_id=op_id, events=events, tracking=tracking, merged_op_ids=merged_op_ids
        )

    def _commit(
        self,
        drafts: Sequence[Entity],
        *,
        op_id: str | None = None,
        events: Sequence[Event] = (),
        tracking: TrackingUpdate | None = None,
        merged_op_ids: Sequence[str] = (),
        with_published: bool = False,
    ) -> list[Entity]:
        """:meth:`commit_many`; ``with_published`` also writes the events published on the bus
        and not logged yet, in the same transaction and before this commit's own events, so the
        log keeps them in publication order (a registered call's ``CallStarted``, the events its
        function published, then its outcome)."""
        self._check_open()
        batch, announced = build_batch(
            drafts, op_id=op_id, events=events, tracking=tracking, resolve=self._version_id
        )
        for merged in merged_op_ids:
            check_op_id(merged)
            batch.merged_op_ids.append(merged)
        if with_published:
            with self._writer.drained() as published:
                if published:
                    batch.events[:0] = published
                    batch.skip_logged_events = True  # as the writer does: idempotent by id
                self._store.write(batch)
        else:
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
        lid = as_uuid(lineage, "lineage_id")
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
        check_version(version)
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
        vid = as_uuid(version_id, "id")
        rec = self._store.get_by_id(vid)
        if rec is None:
            raise NotFoundError(f"no entity version with id {vid}")
        return self._load(rec)

    def history(self, lineage: UUID | str) -> list[Entity]:
        """Every version of a lineage, oldest first; :class:`NotFoundError` if it does not exist."""
        self._check_open()
        lid = as_uuid(lineage, "lineage_id")
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


