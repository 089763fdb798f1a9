"""``@emit_events``: wrap a function in Started / Completed / Failed events."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, overload

from ..entities import Entity, EntityRef
from .base import _CURRENT, Event
from .bus import EventBus, active_bus

__all__ = ["emit_events", "CallStarted", "CallCompleted", "CallFailed"]

P = ParamSpec("P")
R = TypeVar("R")


class CallStarted(Event, frozen=True):
    """A function was called: an ``@emit_events`` function, or ``reg.call(...)``.

    For ``reg.call``, ``function`` is ``"name@version"``, ``subject`` the call's
    :class:`~forseti.registry.callables.CallRecord` and ``inputs`` the exact versions it reads.
    """

    topic = "forseti.CallStarted"
    function: str
    inputs: tuple[EntityRef, ...] = ()


class CallCompleted(Event, frozen=True):
    """A function returned; ``result`` is set when it returned an entity.

    For ``reg.call``, ``outputs`` are the versions it committed or returned; the event is written
    in the same transaction as they are.
    """

    topic = "forseti.CallCompleted"
    function: str
    duration_s: float
    result: EntityRef | None = None
    outputs: tuple[EntityRef, ...] = ()


class CallFailed(Event, frozen=True):
    """A function raised (for ``reg.call``: nothing it returned was committed)."""

    topic = "forseti.CallFailed"
    function: str
    duration_s: float
    error_type: str
    error_message: str


class _Call:
    """One call of an ``@emit_events`` function: its Started event is the cause of what follows."""

    __slots__ = ("bus", "label", "token", "t0")

    def __init__(self, bus: EventBus, label: str, token: Any, t0: float) -> None:
        self.bus, self.label, self.token, self.t0 = bus, label, token, t0

    @classmethod
    def start(cls, bus: EventBus | None, label: str) -> _Call | None:
        target = bus or active_bus()
        if target is None:
            return None
        started = CallStarted(function=label)
        target.publish(started)
        return cls(target, label, _CURRENT.set(started), time.perf_counter())

    def completed(self, result: Any) -> None:
        try:
            ref = result.ref if isinstance(result, Entity) else None
            duration = time.perf_counter() - self.t0
            self.bus.publish(CallCompleted(function=self.label, duration_s=duration, result=ref))
        finally:
            _CURRENT.reset(self.token)

    def failed(self, exc: BaseException) -> None:
        try:
            self.bus.publish(
                CallFailed(
                    function=self.label,
                    duration_s=time.perf_counter() - self.t0,
                    error_type=type(exc).__name__,
                    error_message=str(exc),
                )
            )
        finally:
            _CURRENT.reset(self.token)


@overload
def emit_events(fn: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def emit_events(
    *, bus: EventBus | None = None, name: str | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def emit_events(
    fn: Callable[P, R] | None = None,
    /,
    *,
    bus: EventBus | None = None,
    name: str | None = None,
) -> Any:
    """Publish ``CallStarted`` before and ``CallCompleted``/``CallFailed`` after each call.

    Works on sync and async functions. Events go to ``bus`` or, if none is given, to the bus
    active in the caller's context (``with reg.bus.activate():``, or inside a handler); with no bus
    the function simply runs. Events published during the call are caused by its
    ``CallStarted``, so nested calls, awaits and tasks form one correlated chain.
    """

    def wrap(func: Callable[P, R]) -> Callable[P, R]:
        label = name or f"{func.__module__}.{func.__qualname__}"

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def awrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                call = _Call.start(bus, label)
                if call is None:
                    return await func(*args, **kwargs)
                try:
                    result = await func(*args, **kwargs)
                except BaseException as exc:
                    call.failed(exc)
                    raise
                call.completed(result)
                return result

            return awrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            call = _Call.start(bus, label)
            if call is None:
                return func(*args, **kwargs)
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                call.failed(exc)
                raise
            call.completed(result)
            return result

        return wrapper

    if fn is not None:
        return wrap(fn)
    return wrap
