"""The entity registry: stores (memory, SQLite, PostgreSQL), blobs, lineage queries."""

from __future__ import annotations

import os

import anyio.to_thread

from .aio import AsyncEntityRegistry
from .blobs import BlobStore, FileBlobStore, MemoryBlobStore
from .core import Alias, EntityRegistry
from .encryption import BlobCipher, generate_blob_key
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
    "BlobCipher",
    "generate_blob_key",
]


def open(  # noqa: A001 - the public name is forseti.open
    url: str | None = None,
    *,
    blob_dir: str | os.PathLike[str] | None = None,
    blob_key: bytes | None = None,
    event_batch_size: int = 1000,
    event_interval: float = 0.05,
) -> EntityRegistry:
    """Open a registry.

    ``url`` is ``memory://``, ``sqlite:///path.db`` or ``postgresql://user@host/db``; without it,
    ``$FORSETI_URL``, else a SQLite file under ``./.forseti/``. Blobs go to ``blob_dir`` (or
    ``$FORSETI_BLOB_DIR``), by default a ``blobs/`` folder beside the SQLite file. Published
    events are written to the log in group commits of up to ``event_batch_size`` events, at least
    every ``event_interval`` seconds.

    ``blob_key`` (16, 24 or 32 bytes, e.g. :func:`forseti.generate_blob_key`) encrypts every blob
    this registry stores with AES-GCM and lets it read blobs stored under the same key; a wrong
    or missing key fails with :class:`~forseti.errors.DecryptionError`. Entity rows are not
    encrypted, and blobs stored before are still read as they are.
    """
    cipher = BlobCipher(blob_key) if blob_key is not None else None
    store, blobs = open_store(resolve_url(url), blob_dir)
    blobs.cipher = cipher
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
    blob_key: bytes | None = None,
    event_batch_size: int = 1000,
    event_interval: float = 0.05,
) -> AsyncEntityRegistry:
    """Open an :class:`AsyncEntityRegistry`; same arguments as :func:`open`."""
    registry = await anyio.to_thread.run_sync(
        lambda: open(
            url,
            blob_dir=blob_dir,
            blob_key=blob_key,
            event_batch_size=event_batch_size,
            event_interval=event_interval,
        )
    )
    return AsyncEntityRegistry(registry)
