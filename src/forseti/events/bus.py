"""The in-process :class:`EventBus`: typed subscriptions, ordered delivery, isolated failures.

Delivery order: handlers run by priority (higher first), then in registration order; events are
delivered in publication order. ``publish`` delivers before it returns (async handlers run on the
bus's own event-loop thread, so it works from plain code and inside a running loop alike).
``apublish`` queues the event on a bounded per-loop queue served by one dispatcher task, and waits
when the queue is full (backpressure); ``publish_nowait`` raises :class:`BackpressureError`
instead of waiting. A failing handler never stops the others: the failure is counted, logged and
published as a :class:`HandlerFailed` event (``strict=True`` re-raises them as an
``ExceptionGroup``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from ..errors import StoreClosedError, ValidationError
from .base import _ACTIVE_BUS, _CURRENT, Event, checked_payload
from .dispatch import AsyncDispatch, _Dispatcher
from .runner import AsyncRunner
from .subscriptions import Handler, Subscription, check_event_type, is_async, marked, on

__all__ = ["EventBus", "Subscription", "HandlerFailed", "BusStats", "on", "active_bus"]

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)
Sink = Callable[[Event, bytes], None]
F = TypeVar("F", bound=Callable[..., Any])

_ACTIVE = _ACTIVE_BUS


def active_bus() -> EventBus | None:
    """The bus events go to from ``@emit_events`` in this context (see ``EventBus.activate``)."""
    bus: EventBus | None = _ACTIVE.get()
    return bus


class HandlerFailed(Event, frozen=True):
    """A handler raised while handling an event; the event itself was still delivered."""

    topic = "forseti.HandlerFailed"

    handler: str
    event_id: UUID
    event_topic: str
    error_type: str
    error_message: str


@dataclass(slots=True)
class BusStats:
    """Counters since the bus was created."""

    published: int = 0
    delivered: int = 0
    failed: int = 0


class EventBus(AsyncDispatch):
    """Publishes events to subscribed handlers. Owned by a registry (``reg.bus``)."""

    def __init__(
        self, *, history_size: int = 1000, queue_size: int = 1000, strict: bool = False
    ) -> None:
        if history_size < 0 or queue_size < 1:
            raise ValidationError("history_size must be >= 0 and queue_size >= 1")
        self.strict = strict
        self.stats = BusStats()
        self._queue_size = queue_size
        self._subs: list[Subscription] = []
        self._plans: dict[type[Event], tuple[Subscription, ...]] = {}
        self._order = itertools.count()
        self._sinks: list[Sink] = []
        self._history: deque[Event] = deque(maxlen=history_size)
        self._lock = threading.Lock()
        self._dispatchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Dispatcher] = (
            weakref.WeakKeyDictionary()
        )
        self._runner = AsyncRunner()
        self._pending_errors: list[Exception] = []
        self._closed = False

    # -- subscriptions ---------------------------------------------------------------------------

    def subscribe(
        self,
        event_type: type[E],
        handler: Callable[[E], Any],
        *,
        where: Callable[[E], bool] | None = None,
        priority: int = 0,
    ) -> Subscription:
        """Call ``handler(event)`` for every ``event_type`` event (subclasses included).

        ``where`` filters events; higher ``priority`` runs first. Returns the subscription, for
        :meth:`unsubscribe`.
        """
        check_event_type(event_type)
        if not callable(handler):
            raise ValidationError(f"a handler must be callable, got {handler!r}")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValidationError("priority is an integer")
        sub = Subscription(
            event_type, handler, where, priority, next(self._order), is_async(handler)
        )
        with self._lock:
            self._subs.append(sub)
            self._plans.clear()
        return sub

    def unsubscribe(self, subscription: Subscription) -> None:
        """Remove a subscription (no error if it is already gone)."""
        with self._lock:
            if subscription in self._subs:
                self._subs.remove(subscription)
                self._plans.clear()

    def on(
        self, event_type: type[E], *, where: Callable[[E], bool] | None = None, priority: int = 0
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`subscribe`."""

        def deco(fn: F) -> F:
            self.subscribe(event_type, fn, where=where, priority=priority)
            return fn

        return deco

    def include(self, *sources: Any) -> list[Subscription]:
        """Subscribe every function marked with :func:`forseti.on` in ``sources``.

        A source is a marked function, or a module, class instance or class whose attributes are
        scanned for marked functions (bound methods for instances).
        """
        subs = []
        for source in sources:
            for fn in marked(source):
                for event_type, where, priority in getattr(fn, "__forseti_on__", ()):
                    subs.append(self.subscribe(event_type, fn, where=where, priority=priority))
        return subs

    def add_sink(self, sink: Sink) -> None:
        """Also pass every published ``persist=True`` event, with its payload, to ``sink``.

        With a sink attached, such events are checked before they are accepted: an ill-typed
        event (msgspec does not check types when a struct is built) raises ValidationError.
        """
        self._sinks.append(sink)

    def _plan(self, event_type: type[Event]) -> tuple[Subscription, ...]:
        plan = self._plans.get(event_type)
        if plan is None:
            with self._lock:
                plan = tuple(
                    sorted(
                        (s for s in self._subs if issubclass(event_type, s.event_type)),
                        key=lambda s: (-s.priority, s.order),
                    )
                )
                self._plans[event_type] = plan
        return plan

    # -- publishing ------------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to its handlers now, in order, and record it."""
        self._accept(event)
        self.deliver(event)

    def publish_persisted(self, event: Event) -> None:
        """Like :meth:`publish`, for an event the store already wrote (skips the sinks)."""
        self._accept(event, sink=False)
        self.deliver(event)

    def _accept(self, event: Event, sink: bool = True) -> None:
        if self._closed:
            raise StoreClosedError("this event bus is closed")
        if not isinstance(event, Event):
            raise ValidationError(f"expected an Event, got {type(event).__name__}")
        if sink and event.persist and self._sinks:
            payload = checked_payload(event)
            self.stats.published += 1
            self._history.append(event)
            for target in self._sinks:
                target(event, payload)
        else:
            self.stats.published += 1
            self._history.append(event)

    # -- delivery --------------------------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        """Run the handlers of an already-recorded event (used for events the store persisted)."""
        plan = self._plan(type(event))
        if not plan:
            return
        errors: list[Exception] = []
        token = _CURRENT.set(event)
        bus_token = _ACTIVE.set(self)
        try:
            for sub in plan:
                try:
                    if sub.where is not None and not sub.where(event):
                        continue
                    if sub.is_async:
                        self._portal_call(sub.handler, event)
                    else:
                        sub.handler(event)
                    self.stats.delivered += 1
                except Exception as exc:  # noqa: BLE001 - isolation is the point
                    errors.append(exc)
                    self._failed(sub, event, exc)
        finally:
            _ACTIVE.reset(bus_token)
            _CURRENT.reset(token)
        if errors and self.strict:
            raise ExceptionGroup(f"{len(errors)} handler(s) failed on {event.topic}", errors)

    def _failed(self, sub: Subscription, event: Event, exc: Exception) -> None:
        with self._lock:
            self.stats.failed += 1
        logger.warning(
            "handler %s failed on %s %s: %s: %s",
            sub.name, event.topic, event.id, type(exc).__name__, exc,
        )
        if isinstance(event, HandlerFailed):
            return  # never recurse on failures of failure handlers
        failure = HandlerFailed(
            handler=sub.name,
            event_id=event.id,
            event_topic=event.topic,
            error_type=type(exc).__name__,
            error_message=str(exc),
            subject=event.subject,
        )
        try:
            self._accept(failure)
            self.deliver(failure)
        except Exception:  # noqa: BLE001 - a failing failure-handler is only logged
            logger.exception("while publishing HandlerFailed")

    def _raise_pending(self) -> None:
        if self._pending_errors:
            errors, self._pending_errors = self._pending_errors, []
            raise ExceptionGroup(f"{len(errors)} handler(s) failed", errors)

    def _portal_call(self, handler: Handler, event: Event) -> Any:
        async def run() -> Any:
            token = _CURRENT.set(event)
            bus_token = _ACTIVE.set(self)
            try:
                return await handler(event)
            finally:
                _ACTIVE.reset(bus_token)
                _CURRENT.reset(token)

        return self._runner.call(run)

    # -- context, history, lifecycle -------------------------------------------------------------

    @contextmanager
    def activate(self) -> Iterator[EventBus]:
        """Within the block, ``@emit_events`` functions publish to this bus."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def history(self, event_type: type[E] | None = None) -> list[E]:
        """The most recent published events (a bounded ring), optionally of one type."""
        events = list(self._history)
        if event_type is None:
            return events  # type: ignore[return-value]
        return [e for e in events if isinstance(e, event_type)]

    @property
    def subscriptions(self) -> list[Subscription]:
        """The current subscriptions, in delivery order for a plain ``Event``."""
        return sorted(self._subs, key=lambda s: (-s.priority, s.order))

    def close(self) -> None:
        """Stop the bus's loop thread; publishing afterwards raises. Idempotent."""
        self._closed = True
        self._runner.close()
