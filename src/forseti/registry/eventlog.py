"""The persisted event log: a group-commit writer, a reader, and exactly-once projections.

Events that belong to a committed entity change are written by the registry in the same
transaction as the change (outbox). Every other published event (training steps, metrics) is
buffered here and written in batches — every ``batch_size`` events or ``interval`` seconds, and on
``flush()``/``close()`` — so a crash can lose only the unflushed tail of such events, never an
event of a committed version.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from ..entities import Entity, EntityRef
from ..errors import IntegrityError, StoreClosedError, ValidationError
from ..events import Event, decode_event, encode_event
from ..events.base import checked_payload
from .records import EventRecord, TrackingUpdate, WriteBatch
from .stores.base import Store

if TYPE_CHECKING:
    from .core import EntityRegistry

__all__ = ["EventWriter", "StoredEvent", "Projection", "ProjectionReport", "to_record", "from_record"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event read back from the log, with its position (``seq``) in commit order."""

    seq: int
    event: Event


def to_record(event: Event, payload: bytes | None = None, *, trusted: bool = False) -> EventRecord:
    """The log row of an event.

    The payload is checked (see :func:`~forseti.events.base.checked_payload`) unless it is given
    already checked, or the event is ``trusted`` (built by Forseti itself from typed values).
    """
    subject = event.subject
    if payload is None:
        payload = encode_event(event) if trusted else checked_payload(event)
    return EventRecord(
        event_id=event.id,
        topic=event.topic,
        payload=payload,
        recorded_at=datetime.fromtimestamp(event.timestamp, UTC),
        lineage_id=subject.lineage_id if subject is not None else None,
        version=subject.version if subject is not None else None,
    )


def from_record(rec: EventRecord) -> StoredEvent:
    """Rebuild a logged event; :class:`IntegrityError` if its payload no longer decodes."""
    try:
        event = decode_event(rec.topic, rec.payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise IntegrityError(f"event {rec.seq} ({rec.topic}) does not decode: {exc}") from None
    return StoredEvent(rec.seq or 0, event)


class EventWriter:
    """Buffers events and writes them in group commits on a background thread."""

    def __init__(self, store: Store, *, batch_size: int = 1000, interval: float = 0.05) -> None:
        if batch_size < 1 or interval <= 0:
            raise ValidationError("batch_size must be >= 1 and interval > 0")
        self._store = store
        self.batch_size = batch_size
        self.interval = interval
        self._buffer: list[tuple[Event, bytes]] = []
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()  # batches reach the store in the order they were taken
        self._closed = False
        self.written = 0
        self.failed_batches = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="forseti-event-writer", daemon=True)
        self._thread.start()
        # a process that ends without close() still writes what it buffered
        atexit.register(_flush_at_exit, weakref.ref(self))

    def submit(self, event: Event, payload: bytes) -> None:
        """Queue an event (and its encoded payload) for the next group commit."""
        with self._cond:
            if self._closed:
                raise StoreClosedError("the event writer is closed")
            self._buffer.append((event, payload))
            if len(self._buffer) >= self.batch_size:
                self._cond.notify()

    @contextmanager
    def drained(self) -> Iterator[list[EventRecord]]:
        """Everything buffered, as log records, for the caller to write in its own transaction.

        The background writer is held back meanwhile, so nothing published later can be logged
        first. If the block raises, the events go back to the front of the buffer: nothing is
        lost, and the writer logs them later.
        """
        with self._write_lock:
            with self._cond:
                taken, self._buffer = self._buffer, []
            try:
                yield [to_record(e, p) for e, p in taken]
            except BaseException:
                with self._cond:
                    self._buffer[:0] = taken
                raise

    @property
    def pending(self) -> int:
        """Events submitted but not yet written."""
        return len(self._buffer)

    def flush(self) -> int:
        """Write everything submitted so far, in this thread.

        Returns how many submitted events were handed to the store (an event the log already
        holds is counted, though the store skips it).
        """
        written = 0
        while True:
            with self._write_lock:
                with self._cond:
                    batch, self._buffer = self._buffer[: self.batch_size * 10], self._buffer[
                        self.batch_size * 10 :
                    ]
                if not batch:
                    return written
                self._write(batch)
                written += len(batch)

    def _write(self, batch: list[tuple[Event, bytes]]) -> None:
        records = [to_record(e, p) for e, p in batch]
        try:
            # idempotent by event id: an event published twice is logged once and never jams
            self._store.write(WriteBatch(events=records, skip_logged_events=True))
        except (ValidationError, IntegrityError):
            self._write_one_by_one(records)
        except Exception:
            self.failed_batches += 1
            with self._cond:  # put them back in front, in order, for the next attempt
                self._buffer[:0] = batch
            raise
        self.written += len(batch)

    def _write_one_by_one(self, records: list[EventRecord]) -> None:
        """Write what the store accepts; drop (and count) the events it refuses for good."""
        for rec in records:
            try:
                self._store.write(WriteBatch(events=[rec], skip_logged_events=True))
            except (ValidationError, IntegrityError) as exc:
                self.dropped += 1
                logger.error("event %s (%s) refused by the store, dropped: %s", rec.event_id, rec.topic, exc)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._buffer and not self._closed:
                    self._cond.wait(self.interval)
                if self._closed:
                    return
                if not self._buffer:
                    continue
                if len(self._buffer) < self.batch_size:
                    self._cond.wait(self.interval)  # let a group gather
                if self._closed:
                    return
            try:
                self.flush()
            except StoreClosedError:
                return
            except Exception:  # noqa: BLE001 - keep the writer alive; the events stay queued
                logger.exception("writing a batch of events failed; will retry")
                with self._cond:
                    self._cond.wait(self.interval)

    def close(self) -> None:
        """Flush what is queued and stop the writer thread; idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        self.flush()


def _flush_at_exit(ref: weakref.ref[EventWriter]) -> None:
    writer = ref()
    if writer is not None and not writer._closed:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - the store may already be gone at exit
            logger.exception("could not flush buffered events at exit")


class Projection:
    """A read model or reaction fed from the event log, exactly once per event across restarts.

    Subclass it, set a unique ``name`` and (optionally) ``topics``, and implement :meth:`apply`,
    which returns the entity versions (new entities or drafts) the event leads to. The registry
    commits them together with the projection's tracking row, in one transaction, so a crash
    never applies an event twice or skips one. Run it with ``reg.run_projection(projection)``.
    """

    name: str = ""
    topics: tuple[type[Event], ...] = ()

    def apply(self, event: Event, registry: EntityRegistry) -> Sequence[Entity]:
        """The entity versions to commit because of ``event`` (may be empty)."""
        raise NotImplementedError

    def wants(self, event: Event) -> bool:
        """Whether this projection handles ``event`` (by ``topics``; all events if empty)."""
        return not self.topics or isinstance(event, self.topics)


@dataclass(frozen=True, slots=True)
class ProjectionReport:
    """What one ``run_projection`` call did."""

    name: str
    processed: int
    committed_versions: int
    last_seq: int


def run_projection(
    registry: EntityRegistry,
    projection: Projection,
    *,
    batch_size: int = 500,
    on_event: Callable[[StoredEvent], Any] | None = None,
) -> ProjectionReport:
    """Feed every not-yet-processed event of the log to ``projection`` (see :class:`Projection`)."""
    if not isinstance(projection, Projection) or not projection.name:
        raise ValidationError("run_projection() takes a Projection with a non-empty name")
    store = registry.store
    start = store.get_tracking(projection.name)
    cursor = start or 0
    tracked = start  # what the tracking row says now (None: no row yet)
    processed = versions = 0
    while True:
        records = store.read_events(since_seq=cursor, limit=batch_size)
        if not records:
            break
        for rec in records:
            stored = from_record(rec)
            if projection.wants(stored.event):
                drafts = list(projection.apply(stored.event, registry) or ())
                if drafts:
                    update = TrackingUpdate(projection.name, tracked, stored.seq)
                    registry.commit_many(drafts, tracking=update)
                    tracked = stored.seq
                    versions += len(drafts)
                processed += 1
                if on_event is not None:
                    on_event(stored)
            cursor = stored.seq
    if cursor != (tracked or 0):
        store.write(WriteBatch(tracking=TrackingUpdate(projection.name, tracked, cursor)))
    return ProjectionReport(projection.name, processed, versions, cursor)


def filter_records(
    records: Iterable[EventRecord], subject: EntityRef | None
) -> list[StoredEvent]:
    """Decode log rows, keeping those about ``subject``'s exact version when one is given."""
    out = []
    for rec in records:
        if subject is not None and rec.version != subject.version:
            continue
        out.append(from_record(rec))
    return out
