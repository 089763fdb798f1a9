"""The error :mod:`forseti.trees` raises when a tree's edges close a cycle."""

from __future__ import annotations

from ..entities import EntityRef
from ..errors import ValidationError

__all__ = ["CycleError"]


class CycleError(ValidationError):
    """The edges of a tree close a cycle; nothing was built.

    ``cycle`` holds the refs along it, first and last the same (``a -> b -> a``); the message
    names each of them. Stored references name exact earlier versions, so stored data alone never
    forms one: cycles come from following heads (``follow="head"``) or from explicit edges.
    """

    def __init__(self, message: str, cycle: tuple[EntityRef, ...] = ()) -> None:
        super().__init__(message)
        self.cycle: tuple[EntityRef, ...] = cycle
