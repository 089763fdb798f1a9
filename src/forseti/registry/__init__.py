"""The entity registry: stores (memory, SQLite, PostgreSQL), blobs, lineage queries."""

from __future__ import annotations

import os

import anyio.to_thread

from .aio import AsyncEntityRegistry
from .blobs import BlobStore, FileBlobStore, MemoryBlobStore
from .core import Alias, EntityRegistry
from .records import AliasRecord, EdgeRecord, EventRecord, VersionRecord, WriteBatch
from .schema import SCHEMA_VERSION
from .stores.base import Store
from .urls import DEFAULT_URL, open_store, resolve_url

__all__ = [
    "open",
    "aopen",
    "EntityRegistry",
    "AsyncEntityRegistry",
    "Alias",
    "Store",
    "BlobStore",
    "FileBlobStore",
    "MemoryBlobStore",
    "VersionRecord",
    "EdgeRecord",
    "EventRecord",
    "AliasRecord",
    "WriteBatch",
    "SCHEMA_VERSION",
    "DEFAULT_URL",
]


def open(  # noqa: A001 - the public name is forseti.open
    url: str | None = None,
    *,
    blob_dir: str | os.PathLike[str] | None = None,
    event_batch_size: int = 1000,
    event_interval: float = 0.05,
) -> EntityRegistry:
    """Open a registry.

    ``url`` is ``memory://``, ``sqlite:///path.db`` or ``postgresql://user@host/db``; without it,
    ``$FORSETI_URL``, else a SQLite file under ``./.forseti/``. Blobs go to ``blob_dir`` (or
    ``$FORSETI_BLOB_DIR``), by default a ``blobs/`` folder beside the SQLite file. Published
    events are written to the log in group commits of up to ``event_batch_size`` events, at least
    every ``event_interval`` seconds.
    """
    store, blobs = open_store(resolve_url(url), blob_dir)
    try:
        return EntityRegistry(
            store, blobs, event_batch_size=event_batch_size, event_interval=event_interval
        )
    except BaseException:
        store.close()
        raise


async def aopen(
    url: str | None = None,
    *,
    blob_dir: str | os.PathLike[str] | None = None,
    event_batch_size: int = 1000,
    event_interval: float = 0.05,
) -> AsyncEntityRegistry:
    """Open an :class:`AsyncEntityRegistry`; same arguments as :func:`open`."""
    registry = await anyio.to_thread.run_sync(
        lambda: open(
            url,
            blob_dir=blob_dir,
            event_batch_size=event_batch_size,
            event_interval=event_interval,
        )
    )
    return AsyncEntityRegistry(registry)
