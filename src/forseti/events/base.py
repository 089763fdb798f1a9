"""The :class:`Event` base (a ``msgspec.Struct``), event ids, causation links and the topic registry.

An event built while another event is being handled (or inside an ``@emit_events`` call) is
linked to it automatically: ``causation_id`` is the id of the event being handled and
``correlation_id`` the id of the first event of the chain. The link travels through a context
variable, so it follows plain calls, awaits and tasks.
"""

from __future__ import annotations

import contextvars
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, cast
from uuid import UUID

import msgspec

from ..entities import EntityRef
from ..entities.base import import_for
from ..entities.typenames import register_name
from ..errors import NotFoundError, ValidationError

__all__ = [
    "Event",
    "new_event_id",
    "current_event",
    "caused_by",
    "event_type",
    "event_types",
    "UnknownEventTopicError",
    "encode_event",
    "checked_payload",
    "decode_event",
]

_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)  # forked processes must not repeat ids
# version nibble (bits 76-79) = 7, variant bits (62-63) = 0b10; the rest of the low 80 bits random
_RAND_MASK = ((1 << 80) - 1) & ~((0xF << 76) | (0x3 << 62))
_V7_BITS = (0x7 << 76) | (0x2 << 62)
_SAFE = uuid.SafeUUID.unknown


def new_event_id() -> UUID:
    """A time-ordered (version 7) UUID: 48 bits of Unix milliseconds, then random bits.

    Ids that grow with time keep the log's unique index append-mostly, which is several times
    faster to insert into than random ids; and they are cheaper to make than ``uuid.uuid4()``.
    """
    value = (int(time.time() * 1000) << 80) | (_rng.getrandbits(80) & _RAND_MASK) | _V7_BITS
    u = object.__new__(UUID)
    object.__setattr__(u, "int", value)
    object.__setattr__(u, "is_safe", _SAFE)
    return u


_CURRENT: contextvars.ContextVar[Event | None] = contextvars.ContextVar(
    "forseti_current_event", default=None
)


_ACTIVE_BUS: contextvars.ContextVar[Any] = contextvars.ContextVar("forseti_active_bus", default=None)


def current_event() -> Event | None:
    """The event being handled (or the open ``@emit_events`` call's Started event), if any."""
    return _CURRENT.get()


@contextmanager
def caused_by(event: Event) -> Iterator[Event]:
    """Within the block, new events are linked to ``event`` (causation and correlation)."""
    token = _CURRENT.set(event)
    try:
        yield event
    finally:
        _CURRENT.reset(token)


def _causation() -> UUID | None:
    parent = _CURRENT.get()
    return None if parent is None else parent.id


def _correlation() -> UUID | None:
    parent = _CURRENT.get()
    if parent is None:
        return None
    return parent.correlation_id or parent.id


_TOPICS: dict[str, type[Event]] = {}


class UnknownEventTopicError(NotFoundError):
    """A stored event names a topic whose type is not registered in this process."""


class Event(msgspec.Struct, kw_only=True, frozen=True):
    """Something that happened. Subclass it with typed fields and a stable ``topic`` name.

    ``class StepCompleted(fs.Event, frozen=True): topic = "train.step_completed"; step: int``
    (``topic`` is a ``ClassVar``; without one it is ``"<module>.<qualname>"``).
    """

    topic: ClassVar[str] = "forseti.Event"
    #: persisted to the event log when published on a registry's bus
    persist: ClassVar[bool] = True

    id: UUID = msgspec.field(default_factory=new_event_id)
    timestamp: float = msgspec.field(default_factory=time.time)
    causation_id: UUID | None = msgspec.field(default_factory=_causation)
    correlation_id: UUID | None = msgspec.field(default_factory=_correlation)
    subject: EntityRef | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_name(_TOPICS, cls, "topic", "event topic")


_TOPICS[Event.topic] = Event


def event_type(topic: str) -> type[Event]:
    """The event class registered for ``topic``; :class:`UnknownEventTopicError` if none."""
    if topic not in _TOPICS:
        import_for(topic)
    try:
        return _TOPICS[topic]
    except KeyError:
        raise UnknownEventTopicError(
            f"event topic {topic!r} is not registered in this process; import the module that "
            f"defines it before replaying the log"
        ) from None


def event_types() -> dict[str, type[Event]]:
    """Every registered topic and its class."""
    return dict(_TOPICS)


_encoder = msgspec.msgpack.Encoder()
_decoders: dict[type[Event], msgspec.msgpack.Decoder[Any]] = {}
# msgspec builds a struct's type information the first time a Decoder for it is made, and two
# threads doing that at once for one class can crash the interpreter (segfault, msgspec 0.22):
# decoders are made under this lock, once per class.
_decoders_lock = threading.Lock()


def _decoder(cls: type[Event]) -> msgspec.msgpack.Decoder[Any]:
    decoder = _decoders.get(cls)
    if decoder is None:
        with _decoders_lock:
            decoder = _decoders.get(cls)
            if decoder is None:
                decoder = _decoders[cls] = msgspec.msgpack.Decoder(cls)
    return decoder


def encode_event(event: Event) -> bytes:
    """The msgpack payload of an event (its topic is stored beside it)."""
    return _encoder.encode(event)


def checked_payload(event: Event) -> bytes:
    """The payload of ``event``, after checking that it decodes back as its own type.

    msgspec does not check field types when a struct is built, so ``Step(step="x")`` would be
    accepted; a log entry that can never be read back must be refused before it is written.
    """
    payload = _encoder.encode(event)
    cls = type(event)
    try:
        _decoder(cls).decode(payload)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"{cls.__name__} event is ill-typed: {exc}") from None
    return payload


def decode_event(topic: str, payload: bytes) -> Event:
    """Rebuild an event from its topic and payload."""
    return cast(Event, _decoder(event_type(topic)).decode(payload))
