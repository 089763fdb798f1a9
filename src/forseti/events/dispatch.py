"""Async dispatch: one bounded queue and one dispatcher task per event loop.

``apublish`` waits while the queue is full (backpressure); events a handler publishes while the
queue is full go to an overflow list instead, because the dispatcher cannot wait on itself. When a
loop shuts down (``asyncio.run`` returning without ``drain()``), the dispatcher is cancelled and
then delivers whatever is still queued, so no event is dropped.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from typing import TYPE_CHECKING

from ..errors import BackpressureError
from .base import _ACTIVE_BUS, _CURRENT, Event
from .subscriptions import Subscription

if TYPE_CHECKING:
    from .bus import BusStats

__all__ = ["AsyncDispatch"]


class _Dispatcher:
    """The queue and dispatcher task of one event loop.

    ``overflow`` holds events that the dispatcher's own handlers publish while the queue is full:
    they cannot wait for room (only the dispatcher makes room), so they queue behind it instead.
    """

    def __init__(self, bus: AsyncDispatch, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(size)
        self.overflow: deque[Event] = deque()
        self.task = loop.create_task(bus._serve(self))

    def refill(self) -> None:
        while self.overflow and not self.queue.full():
            self.queue.put_nowait(self.overflow.popleft())


class AsyncDispatch:
    """The async half of :class:`~forseti.events.bus.EventBus` (a mixin over its state)."""

    _queue_size: int
    _pending_errors: list[Exception]
    _dispatchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Dispatcher]
    strict: bool
    stats: BusStats

    if TYPE_CHECKING:  # provided by EventBus

        def _accept(self, event: Event, sink: bool = True) -> None: ...
        def _failed(self, sub: Subscription, event: Event, exc: Exception) -> None: ...
        def _plan(self, event_type: type[Event]) -> tuple[Subscription, ...]: ...
        def _raise_pending(self) -> None: ...
        def publish(self, event: Event) -> None: ...

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

    async def _adeliver(
        self, event: Event, start: int = 0, progress: list[int] | None = None
    ) -> list[Exception]:
        errors: list[Exception] = []
        plan = self._plan(type(event))
        token = _CURRENT.set(event)
        bus_token = _ACTIVE_BUS.set(self)
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
            _ACTIVE_BUS.reset(bus_token)
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
        finally:
            loop = asyncio.get_running_loop()
            if self._dispatchers.get(loop) is dispatcher:
                del self._dispatchers[loop]  # a finished loop is not kept alive by the bus

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
