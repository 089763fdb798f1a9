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
import contextvars
import inspect
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

from ..errors import BackpressureError, StoreClosedError, ValidationError
from .base import _CURRENT, Event, checked_payload
from .runner import AsyncRunner

__all__ = ["EventBus", "Subscription", "HandlerFailed", "BusStats", "on", "active_bus"]

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)
Handler = Callable[[Any], Any]
Sink = Callable[[Event, bytes], None]
F = TypeVar("F", bound=Callable[..., Any])

_ACTIVE: contextvars.ContextVar[EventBus | None] = contextvars.ContextVar(
    "forseti_active_bus", default=None
)


def active_bus() -> EventBus | None:
    """The bus events go to from ``@emit_events`` in this context (see ``EventBus.activate``)."""
    return _ACTIVE.get()


class HandlerFailed(Event, frozen=True):
    """A handler raised while handling an event; the event itself was still delivered."""

    topic = "forseti.HandlerFailed"

    handler: str
    event_id: UUID
    event_topic: str
    error_type: str
    error_message: str


@dataclass(frozen=True, slots=True)
class Subscription:
    """One handler subscribed to one event type (and its subclasses)."""

    event_type: type[Event]
    handler: Handler
    where: Callable[[Any], bool] | None
    priority: int
    order: int
    is_async: bool

    @property
    def name(self) -> str:
        fn = self.handler
        return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


@dataclass(slots=True)
class BusStats:
    """Counters since the bus was created."""

    published: int = 0
    delivered: int = 0
    failed: int = 0


def on(
    event_type: type[Event], *, where: Callable[[Any], bool] | None = None, priority: int = 0
) -> Callable[[F], F]:
    """Mark a function as a handler of ``event_type``; ``bus.include(fn_or_module)`` subscribes it.

    Marking does not subscribe anything by itself, so no handler outlives the registry it was
    included in.
    """
    _check_type(event_type)

    def mark(fn: F) -> F:
        marks = fn.__dict__.setdefault("__forseti_on__", [])
        marks.append((event_type, where, priority))
        return fn

    return mark


class _Dispatcher:
    """The queue and dispatcher task of one event loop.

    ``overflow`` holds events that the dispatcher's own handlers publish while the queue is full:
    they cannot wait for room (only the dispatcher makes room), so they queue behind it instead.
    """

    def __init__(self, bus: EventBus, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(size)
        self.overflow: deque[Event] = deque()
        self.task = loop.create_task(bus._serve(self))

    def refill(self) -> None:
        while self.overflow and not self.queue.full():
            self.queue.put_nowait(self.overflow.popleft())


class EventBus:
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
        _check_type(event_type)
        if not callable(handler):
            raise ValidationError(f"a handler must be callable, got {handler!r}")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValidationError("priority is an integer")
        sub = Subscription(
            event_type, handler, where, priority, next(self._order), _is_async(handler)
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
            for fn in _marked(source):
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

    async def apublish(self, event: Event) -> None:
        """Queue ``event`` for this loop's dispatcher; waits while the queue is full."""
        dispatcher = await self._started_dispatcher()
        self._accept(event)
        if asyncio.current_task() is dispatcher.task and (
            dispatcher.overflow or dispatcher.queue.full()
        ):
            dispatcher.overflow.append(event)  # published by a handler: never wait on ourselves
        else:
            await dispatcher.queue.put(event)

    def publish_nowait(self, event: Event) -> None:
        """Queue ``event`` on the running loop's dispatcher without waiting.

        Raises :class:`BackpressureError` when the queue is full (nothing is recorded then).
        Without a running loop in this thread it behaves like :meth:`publish`.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self.publish(event)
            return
        dispatcher = self._dispatcher()
        if dispatcher.queue.full():
            raise BackpressureError(
                f"the event queue is full ({self._queue_size} events); await apublish() to wait"
            )
        self._accept(event)
        dispatcher.queue.put_nowait(event)

    async def drain(self) -> None:
        """Wait until every event queued on this loop has been delivered.

        With ``strict=True``, re-raises handler failures collected by the dispatcher.
        """
        dispatcher = self._dispatchers.get(asyncio.get_running_loop())
        if dispatcher is not None:
            await dispatcher.queue.join()
        self._raise_pending()

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

    async def _adeliver(
        self, event: Event, start: int = 0, progress: list[int] | None = None
    ) -> list[Exception]:
        errors: list[Exception] = []
        plan = self._plan(type(event))
        token = _CURRENT.set(event)
        bus_token = _ACTIVE.set(self)
        try:
            for i in range(start, len(plan)):
                sub = plan[i]
                if progress is not None:
                    progress[0] = i
                try:
                    if sub.where is not None and not sub.where(event):
                        continue
                    result = sub.handler(event)
                    if sub.is_async:
                        await result
                    self.stats.delivered += 1
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)
                    self._failed(sub, event, exc)
        finally:
            _ACTIVE.reset(bus_token)
            _CURRENT.reset(token)
        return errors

    async def _serve(self, dispatcher: _Dispatcher) -> None:
        queue = dispatcher.queue
        progress = [0]  # index of the handler running now, to resume after an interruption
        try:
            while True:
                event = await queue.get()
                try:
                    try:
                        errors = await self._adeliver(event, 0, progress)
                    except asyncio.CancelledError:
                        # the loop is shutting down inside a handler: that handler saw the
                        # cancellation; the event still reaches every handler after it
                        self._keep(await self._adeliver(event, progress[0] + 1))
                        dispatcher.refill()
                        raise
                    self._keep(errors)
                    dispatcher.refill()
                finally:
                    queue.task_done()
        except asyncio.CancelledError:
            await self._finish(dispatcher)  # ... and every event still queued is delivered
            raise

    async def _finish(self, dispatcher: _Dispatcher) -> None:
        """Deliver everything left queued (the loop is shutting down): nothing is dropped."""
        queue = dispatcher.queue
        while not queue.empty() or dispatcher.overflow:
            if queue.empty():
                dispatcher.refill()
            event = queue.get_nowait()
            try:
                self._keep(await self._adeliver(event))
            finally:
                queue.task_done()

    def _keep(self, errors: list[Exception]) -> None:
        if errors and self.strict:
            self._pending_errors.extend(errors)

    def _dispatcher(self) -> _Dispatcher:
        loop = asyncio.get_running_loop()
        dispatcher = self._dispatchers.get(loop)
        if dispatcher is None or dispatcher.task.done():
            dispatcher = _Dispatcher(self, loop, self._queue_size)
            self._dispatchers[loop] = dispatcher
        return dispatcher

    async def _started_dispatcher(self) -> _Dispatcher:
        """This loop's dispatcher, running: a task cancelled before its first step never runs
        its cleanup, so a new dispatcher gets one step before anything is queued on it."""
        loop = asyncio.get_running_loop()
        dispatcher = self._dispatchers.get(loop)
        if dispatcher is None or dispatcher.task.done():
            dispatcher = self._dispatcher()
            await asyncio.sleep(0)
        return dispatcher

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


def _check_type(event_type: Any) -> None:
    if not (isinstance(event_type, type) and issubclass(event_type, Event)):
        raise ValidationError(f"subscribe to an Event subclass, not {event_type!r}")


def _is_async(handler: Handler) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)
    )


def _marked(source: Any) -> Iterator[Callable[..., Any]]:
    if callable(source) and hasattr(source, "__forseti_on__"):
        yield source
        return
    for name in dir(source):
        if name.startswith("__"):
            continue
        attr = getattr(source, name, None)
        if callable(attr) and hasattr(attr, "__forseti_on__"):
            yield attr
