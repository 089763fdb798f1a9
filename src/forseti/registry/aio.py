"""The asynchronous face: :class:`AsyncEntityRegistry`, the same calls as coroutines.

It wraps one :class:`~forseti.registry.core.EntityRegistry` (one core, two faces). Calls that do
blocking I/O run on a worker thread so the event loop never stalls; the memory store answers
inline.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, ParamSpec, TypeVar
from uuid import UUID

import anyio
import anyio.to_thread

from ..entities import BlobRef, Entity, EntityRef
from ..events import Event, EventBus
from .blobs import BlobSource
from .callables import CallableRegistry, prepare
from .core import Alias, EntityRegistry
from .eventlog import Projection, ProjectionReport, StoredEvent

if TYPE_CHECKING:
    from ..operations import Operation, OperationResult

__all__ = ["AsyncEntityRegistry"]

P = ParamSpec("P")
T = TypeVar("T")
E = TypeVar("E", bound=Entity)


class AsyncEntityRegistry:
    """``await``-able twin of :class:`EntityRegistry`; open one with ``await forseti.aopen()``."""

    def __init__(self, registry: EntityRegistry) -> None:
        self._sync = registry
        self._inline = not registry.store.blocking

    @property
    def sync(self) -> EntityRegistry:
        """The synchronous registry over the same store (shares caches and connections)."""
        return self._sync

    @property
    def url(self) -> str:
        return self._sync.url

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._inline:
            return fn(*args, **kwargs)
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    async def add(self, entity: E) -> E:
        """See :meth:`EntityRegistry.add`."""
        return await self._run(self._sync.add, entity)

    async def commit(self, draft: E) -> E:
        """See :meth:`EntityRegistry.commit`."""
        return await self._run(self._sync.commit, draft)

    async def commit_many(
        self, drafts: Sequence[Entity], *, op_id: str | None = None
    ) -> list[Entity]:
        """See :meth:`EntityRegistry.commit_many`."""
        return await self._run(self._sync.commit_many, drafts, op_id=op_id)

    async def get(
        self,
        lineage: UUID | str | EntityRef,
        version: int | None = None,
        *,
        alias: str | None = None,
    ) -> Entity:
        """See :meth:`EntityRegistry.get`."""
        return await self._run(self._sync.get, lineage, version, alias=alias)

    async def get_by_id(self, version_id: UUID | str) -> Entity:
        """See :meth:`EntityRegistry.get_by_id`."""
        return await self._run(self._sync.get_by_id, version_id)

    async def history(self, lineage: UUID | str) -> list[Entity]:
        """See :meth:`EntityRegistry.history`."""
        return await self._run(self._sync.history, lineage)

    async def find(self, entity_cls: type[E], **fields: Any) -> list[E]:
        """See :meth:`EntityRegistry.find`."""
        return await self._run(functools.partial(self._sync.find, entity_cls, **fields))

    async def ancestors(
        self, of: Entity | EntityRef, *, max_depth: int | None = None
    ) -> list[EntityRef]:
        """See :meth:`EntityRegistry.ancestors`."""
        return await self._run(self._sync.ancestors, of, max_depth=max_depth)

    async def descendants(
        self, of: Entity | EntityRef, *, max_depth: int | None = None
    ) -> list[EntityRef]:
        """See :meth:`EntityRegistry.descendants`."""
        return await self._run(self._sync.descendants, of, max_depth=max_depth)

    async def alias(self, lineage: UUID | str, name: str) -> Alias:
        """See :meth:`EntityRegistry.alias`."""
        return await self._run(self._sync.alias, lineage, name)

    async def aliases(self, lineage: UUID | str) -> list[Alias]:
        """See :meth:`EntityRegistry.aliases`."""
        return await self._run(self._sync.aliases, lineage)

    async def move_alias(
        self, lineage: UUID | str, name: str, version: int, *, expected_revision: int | None
    ) -> Alias:
        """See :meth:`EntityRegistry.move_alias`."""
        return await self._run(
            self._sync.move_alias, lineage, name, version, expected_revision=expected_revision
        )

    async def submit(self, op: Operation) -> OperationResult:
        """See :meth:`EntityRegistry.submit` (waits for its turn on a worker thread)."""
        return await anyio.to_thread.run_sync(self._sync.submit, op)

    async def submit_many(self, ops: Sequence[Operation]) -> list[OperationResult]:
        """See :meth:`EntityRegistry.submit_many`."""
        return await anyio.to_thread.run_sync(self._sync.submit_many, ops)

    @property
    def callables(self) -> CallableRegistry:
        """The registry's callable registry (shared with the sync face)."""
        return self._sync.callables

    async def call(self, target: str | Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """See :meth:`EntityRegistry.call`. Async functions are awaited on this loop; sync ones
        run on a worker thread, so a slow function never stalls the loop."""
        sync = self._sync
        sync._check_open()
        spec = await self._run(sync.callables.lookup, target)
        inv = await self._run(prepare, sync, spec, args, kwargs)
        inv.start()
        try:
            try:
                result = await inv.arun()
                value, _ = await self._run(inv.complete, result)
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    await self._run(inv.fail, exc)
                raise
            return value
        finally:
            inv.end()

    async def resolve(self, address: str) -> Any:
        """See :meth:`EntityRegistry.resolve`."""
        return await self._run(self._sync.resolve, address)

    @property
    def bus(self) -> EventBus:
        """The registry's event bus (``await areg.bus.apublish(event)``)."""
        return self._sync.bus

    async def events(
        self,
        since_seq: int = 0,
        *,
        topic: str | type[Event] | None = None,
        subject: EntityRef | UUID | str | None = None,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        """See :meth:`EntityRegistry.events`."""
        return await self._run(
            self._sync.events, since_seq, topic=topic, subject=subject, limit=limit
        )

    async def flush_events(self) -> int:
        """See :meth:`EntityRegistry.flush_events`."""
        return await self._run(self._sync.flush_events)

    async def run_projection(
        self, projection: Projection, *, batch_size: int = 500
    ) -> ProjectionReport:
        """See :meth:`EntityRegistry.run_projection`."""
        return await self._run(self._sync.run_projection, projection, batch_size=batch_size)

    async def put_blob(
        self, source: BlobSource, *, format: str = "bin", move: bool = False
    ) -> BlobRef:
        """See :meth:`EntityRegistry.put_blob`."""
        return await self._run(self._sync.put_blob, source, format=format, move=move)

    async def open_blob(self, ref: BlobRef) -> BinaryIO:
        """See :meth:`EntityRegistry.open_blob`."""
        return await self._run(self._sync.open_blob, ref)

    async def read_blob(self, ref: BlobRef) -> bytes:
        """See :meth:`EntityRegistry.read_blob`."""
        return await self._run(self._sync.read_blob, ref)

    async def blob_path(self, ref: BlobRef) -> Path:
        """See :meth:`EntityRegistry.blob_path`."""
        return await self._run(self._sync.blob_path, ref)

    async def close(self) -> None:
        """Release the store; idempotent."""
        await self._run(self._sync.close)

    async def __aenter__(self) -> AsyncEntityRegistry:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncEntityRegistry({self.url!r})"
