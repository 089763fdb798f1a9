"""Facets of :class:`~forseti.registry.core.EntityRegistry`, one concern each.

Aliases (compare-and-set pointers), the event log (reading, flushing, projections) and blobs.
They are mixins over the registry's state; the registry class composes them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast
from uuid import UUID

from ..entities import BlobRef, Entity, EntityRef
from ..entities.base import MAX_VERSION
from ..errors import NotFoundError, ValidationError
from ..events import AliasMoved, Event, EventBus
from .blobs import BlobSource, BlobStore, BlobWriter, FileBlobStore
from .checks import as_blob, as_uuid, check_alias, check_version
from .eventlog import (
    EventWriter,
    Projection,
    ProjectionReport,
    StoredEvent,
    filter_records,
    run_projection,
    to_record,
)
from .records import AliasRecord
from .stores.base import Store

__all__ = ["AliasesMixin", "EventLogMixin", "BlobsMixin", "LineageMixin", "Alias"]

Alias = AliasRecord


if TYPE_CHECKING:
    from .core import EntityRegistry


class _Facet:
    _store: Store
    _blobs: BlobStore
    _writer: EventWriter
    bus: EventBus

    if TYPE_CHECKING:

        def _check_open(self) -> None: ...
        def get(self, lineage: EntityRef) -> Entity: ...
        def _announce(self, events: Sequence[Event]) -> None: ...


class AliasesMixin(_Facet):
    """Named pointers to versions, moved only by compare-and-set."""

    def alias(self, lineage: UUID | str, name: str) -> Alias:
        """The alias ``name`` of a lineage (its version and revision); NotFoundError if unset."""
        self._check_open()
        lid = as_uuid(lineage, "lineage_id")
        check_alias(name)
        rec = self._store.get_alias(lid, name)
        if rec is None:
            raise NotFoundError(f"lineage {lid} has no alias {name!r}")
        return rec

    def aliases(self, lineage: UUID | str) -> list[Alias]:
        """All aliases of a lineage, by name."""
        self._check_open()
        return self._store.list_aliases(as_uuid(lineage, "lineage_id"))

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
        lid = as_uuid(lineage, "lineage_id")
        check_alias(name)
        check_version(version)
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



class EventLogMixin(_Facet):
    """Reading the persisted event log and running projections over it."""

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
            lineage = ref.lineage_id if ref is not None else as_uuid(subject, "subject")
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
        return run_projection(cast("EntityRegistry", self), projection, batch_size=batch_size)



class BlobsMixin(_Facet):
    """Content-addressed blobs, verified on every read."""

    @property
    def blobs(self) -> BlobStore:
        """The content-addressed blob store."""
        return self._blobs

    def put_blob(self, source: BlobSource, *, format: str = "bin", move: bool = False) -> BlobRef:
        """Store bytes or a file's content by sha256 and return its :class:`BlobRef`.

        ``move=True`` consumes a file: it is renamed into the store when it lies on the same file
        system (write it under ``reg.blobs.tmp_dir`` for that), so a large export is not copied.
        """
        self._check_open()
        if not isinstance(source, (bytes, bytearray, memoryview, str, os.PathLike)):
            raise ValidationError(f"a blob is bytes or a file path, not {type(source).__name__}")
        BlobRef(sha256="0" * 64, size=0, format=format)  # validates the format name
        if move:
            if isinstance(source, (bytes, bytearray, memoryview)):
                raise ValidationError("move=True takes a file path, not bytes")
            return self._blobs.adopt(source, format)
        return self._blobs.put(source, format)

    def blob_writer(self, *, format: str = "bin") -> AbstractContextManager[BlobWriter]:
        """Stream a blob into the store without holding it in memory::

            with reg.blob_writer(format="safetensors") as w:
                w.write(chunk)          # any number of times
            ref = w.ref                 # stored (hashed, fsynced, encrypted if keyed)

        If the block raises, nothing is stored.
        """
        self._check_open()
        return self._blobs.writer(format)

    def open_blob(self, ref: BlobRef) -> BinaryIO:
        """A readable file of the blob, verified (IntegrityError on any mismatch)."""
        self._check_open()
        return self._blobs.open(as_blob(ref))

    def read_blob(self, ref: BlobRef) -> bytes:
        """The blob's bytes, verified (IntegrityError on any mismatch)."""
        self._check_open()
        return self._blobs.read(as_blob(ref))

    def blob_path(self, ref: BlobRef) -> Path:
        """The verified file of a blob, for tools that want a path (file blob stores only)."""
        self._check_open()
        ref = as_blob(ref)
        if not isinstance(self._blobs, FileBlobStore):
            raise ValidationError("this registry keeps blobs in memory; use open_blob()")
        if ref.encrypted:
            raise ValidationError(
                "an encrypted blob has no plaintext file; use open_blob() or read_blob()"
            )
        self._blobs.open(ref).close()
        return self._blobs.path(ref)


class LineageMixin(_Facet):
    """The provenance graph: what a version came from, and what came from it."""

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
        return self._store.walk(start, direction, max_depth)
