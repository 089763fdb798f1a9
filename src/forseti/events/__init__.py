"""Events: typed ``Event`` structs, the in-process ``EventBus``, ``@on``, ``@emit_events``.

Persistence of events (the log, the group-commit writer, projections) lives with the registry,
which owns a bus and a store.
"""

from .base import (
    Event,
    UnknownEventTopicError,
    caused_by,
    current_event,
    decode_event,
    encode_event,
    event_type,
    event_types,
    new_event_id,
)
from .bus import BusStats, EventBus, HandlerFailed, Subscription, active_bus, on
from .decorators import CallCompleted, CallFailed, CallStarted, emit_events
from .registry_events import AliasMoved, EntityRegistered, EntityVersionCommitted

__all__ = [
    "Event",
    "EventBus",
    "Subscription",
    "BusStats",
    "HandlerFailed",
    "on",
    "emit_events",
    "active_bus",
    "current_event",
    "caused_by",
    "new_event_id",
    "event_type",
    "event_types",
    "encode_event",
    "decode_event",
    "UnknownEventTopicError",
    "CallStarted",
    "CallCompleted",
    "CallFailed",
    "EntityRegistered",
    "EntityVersionCommitted",
    "AliasMoved",
]
