"""The store contract every backend (memory, SQLite, PostgreSQL) implements.

A store persists :mod:`records <forseti.registry.records>` and answers queries; it never builds
entities. One contract test suite runs against every implementation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from uuid import UUID

from ...entities import EntityRef
from ...errors import ConflictError, DuplicateOperationError, NotFoundError, ValidationError
from ..records import (
    AliasRecord,
    EventRecord,
    TrackingUpdate,
    VersionRecord,
    WriteBatch,
)

__all__ = ["Store", "check_append", "check_new_lineage", "alias_conflict",
    "tracking_conflict", "op_ids", "merged_ops", "duplicate_operation"]


class Store(ABC):
    """Persistence for entity versions, provenance, aliases and events.

    All methods are synchronous and thread-safe. ``write`` is one transaction: every record of the
    batch is written, or none is.
    """

    #: ``"memory"``, ``"sqlite"`` or ``"postgresql"``
    dialect: str = ""
    #: whether ``aclose``/async callers should hop to a worker thread (blocking I/O)
    blocking: bool = True

    @abstractmethod
    def write(self, batch: WriteBatch) -> list[EventRecord]:
        """Append the batch atomically; return its events with their ``seq`` assigned.

        Raises :class:`ConflictError` when a version is not the next one of its lineage (or a new
        lineage already exists), :class:`NotFoundError` for an unknown lineage,
        :class:`ValidationError` for a draft that does not derive from the stored head or changes
        the lineage's type, and :class:`DuplicateOperationError` for an ``op_id`` already stored.
        """

    @abstractmethod
    def head(self, lineage_id: UUID) -> VersionRecord | None:
        """The newest version of a lineage, or ``None`` if the lineage does not exist."""

    @abstractmethod
    def get_version(self, lineage_id: UUID, version: int) -> VersionRecord | None:
        """One exact version, or ``None``."""

    @abstractmethod
    def get_by_id(self, version_id: UUID) -> VersionRecord | None:
        """The version with this id, or ``None``."""

    @abstractmethod
    def get_by_op_id(self, op_id: str) -> list[VersionRecord]:
        """The versions an operation wrote, by lineage id then version (empty if none)."""

    @abstractmethod
    def history(self, lineage_id: UUID) -> list[VersionRecord]:
        """Every version of a lineage, oldest first (empty if the lineage does not exist)."""

    @abstractmethod
    def find_heads(self, type_names: Sequence[str], name: str | None = None) -> list[VersionRecord]:
        """Head versions of the lineages of these types (and this name), oldest lineage first."""

    @abstractmethod
    def walk(self, start_id: UUID, direction: str, max_depth: int | None) -> list[EntityRef]:
        """Versions reachable from ``start_id`` over provenance edges, nearest first, each once.

        ``direction`` is ``"up"`` (towards inputs: ancestors) or ``"down"`` (towards outputs:
        descendants); ``max_depth`` bounds the number of hops.
        """

    @abstractmethod
    def get_alias(self, lineage_id: UUID, alias: str) -> AliasRecord | None:
        """The alias, or ``None``."""

    @abstractmethod
    def list_aliases(self, lineage_id: UUID) -> list[AliasRecord]:
        """All aliases of a lineage, by name."""

    @abstractmethod
    def set_alias(
        self,
        lineage_id: UUID,
        alias: str,
        version: int,
        expected_revision: int | None,
        events: Sequence[EventRecord] = (),
    ) -> AliasRecord:
        """Point ``alias`` at ``version`` by compare-and-set.

        ``expected_revision=None`` creates the alias and fails if it exists; otherwise the stored
        revision must equal it. ``events`` are appended to the log in the same transaction.
        Raises :class:`ConflictError` when the check fails and :class:`NotFoundError` when the
        version does not exist.
        """

    @abstractmethod
    def read_events(
        self,
        since_seq: int = 0,
        topic: str | None = None,
        lineage_id: UUID | None = None,
        limit: int | None = None,
    ) -> list[EventRecord]:
        """Events with ``seq > since_seq`` in commit order, optionally filtered."""

    @abstractmethod
    def get_tracking(self, consumer: str) -> int | None:
        """The last event ``seq`` a consumer processed, or ``None`` if it never recorded one."""

    def changed_externally(self) -> bool:
        """Whether another writer may have changed the store since this process last looked.

        Caches of head versions are trusted only while this returns ``False``. The default is the
        safe answer.
        """
        return True

    @abstractmethod
    def close(self) -> None:
        """Release connections and threads; idempotent."""

    def describe(self) -> str:
        """A human-readable, password-free description of where the data lives."""
        return self.dialect


def merged_ops(batch: WriteBatch) -> list[tuple[str, str | None]]:
    """Every operation id a batch records, with the op it was merged into (``None``: its own)."""
    own = op_ids(batch)
    if batch.merged_op_ids and len(own) != 1:
        raise ValidationError("merged operations need exactly one operation id on the versions")
    recorded: list[tuple[str, str | None]] = [(o, None) for o in own]
    recorded += [(m, own[0]) for m in batch.merged_op_ids]
    if len({o for o, _ in recorded}) != len(recorded):
        raise ValidationError("an operation id appears twice in one commit")
    return recorded


def op_ids(batch: WriteBatch) -> list[str]:
    """The distinct operation ids of a batch's versions, in order."""
    versions = batch.versions
    if len(versions) == 1:  # the common case, kept cheap
        op_id = versions[0].op_id
        return [] if op_id is None else [op_id]
    return list(dict.fromkeys(r.op_id for r in versions if r.op_id is not None))


def duplicate_operation(op_id: str) -> DuplicateOperationError:
    """The error for an operation id that was already committed."""
    return DuplicateOperationError(f"operation {op_id!r} was already committed", op_id=op_id)


def check_new_lineage(rec: VersionRecord, existing_head: int | None) -> None:
    """Validate that ``rec`` (a version 1) may start its lineage."""
    if existing_head is not None:
        raise ConflictError(
            f"lineage {rec.lineage_id} already exists (head is version {existing_head}); "
            f"commit a draft made with evolve() instead of adding it again",
            lineage_id=rec.lineage_id,
            expected=0,
            actual=existing_head,
        )


def check_append(
    rec: VersionRecord, head: tuple[int, UUID, str] | None
) -> None:
    """Validate that ``rec`` is the next version after ``head = (version, id, type_name)``."""
    if head is None:
        raise NotFoundError(f"lineage {rec.lineage_id} does not exist; add() its first version")
    head_version, head_id, head_type = head
    expected = rec.version - 1
    if head_version != expected:
        raise ConflictError(
            f"lineage {rec.lineage_id}: the draft expects head version {expected} but the head is "
            f"version {head_version}; reload the head and evolve it again",
            lineage_id=rec.lineage_id,
            expected=expected,
            actual=head_version,
        )
    if head_id != rec.previous_id:
        raise ValidationError(
            f"lineage {rec.lineage_id}: the draft's previous_id {rec.previous_id} is not the id of "
            f"stored version {expected} ({head_id}); make drafts with evolve()"
        )
    if head_type != rec.type_name:
        raise ValidationError(
            f"lineage {rec.lineage_id} holds {head_type!r} entities, not {rec.type_name!r}"
        )


def tracking_conflict(update: TrackingUpdate, actual: int | None) -> ConflictError:
    """The error for a failed compare-and-set of a consumer's tracking row."""
    return ConflictError(
        f"consumer {update.consumer!r} is at seq {actual}, not {update.expected}: another "
        f"instance processed events meanwhile",
        expected=update.expected,
        actual=actual,
    )


def alias_conflict(
    lineage_id: UUID, alias: str, expected: int | None, actual: int | None
) -> ConflictError:
    """The error for a failed compare-and-set of an alias (``None`` means absent)."""
    what = "does not exist" if actual is None else f"is at revision {actual}"
    return ConflictError(
        f"alias {alias!r} of lineage {lineage_id} {what}, not "
        f"{'absent' if expected is None else f'revision {expected}'}",
        lineage_id=lineage_id,
        expected=expected,
        actual=actual,
    )
