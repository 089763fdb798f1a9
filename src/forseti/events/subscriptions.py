"""Subscriptions: who handles which events, and the ``@on`` marker."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import ValidationError
from .base import Event

__all__ = ["Subscription", "on", "check_event_type", "is_async", "marked"]

Handler = Callable[[Any], Any]
F = TypeVar("F", bound=Callable[..., Any])


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


def on(
    event_type: type[Event], *, where: Callable[[Any], bool] | None = None, priority: int = 0
) -> Callable[[F], F]:
    """Mark a function as a handler of ``event_type``; ``bus.include(fn_or_module)`` subscribes it.

    Marking does not subscribe anything by itself, so no handler outlives the registry it was
    included in.
    """
    check_event_type(event_type)

    def mark(fn: F) -> F:
        marks = fn.__dict__.setdefault("__forseti_on__", [])
        marks.append((event_type, where, priority))
        return fn

    return mark


def check_event_type(event_type: Any) -> None:
    if not (isinstance(event_type, type) and issubclass(event_type, Event)):
        raise ValidationError(f"subscribe to an Event subclass, not {event_type!r}")


def is_async(handler: Handler) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - async __call__ of an object
    )


def marked(source: Any, mark: str = "__forseti_on__") -> Iterator[Callable[..., Any]]:
    """``source`` if it carries ``mark``, else its attributes that do (modules, classes,
    instances)."""
    if callable(source) and hasattr(source, mark):
        yield source
        return
    for name in dir(source):
        if name.startswith("__"):
            continue
        attr = getattr(source, name, None)
        if callable(attr) and hasattr(attr, mark):
            yield attr
