"""Helpers of :class:`~forseti.trees.EntityTree`: field matching for ``find`` and the live
``tree.nodes`` view."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..entities import Entity, EntityRef
from ..entities.frozen import normalize

if TYPE_CHECKING:
    from .model import EntityTree

__all__ = ["field_filter", "matches", "NodesView"]

_MISSING = object()


def field_filter(fields: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(name, value, normalized value or a marker)`` for each wanted field (normalized once)."""
    return [
        (name, value, normalize(value) if isinstance(value, (Mapping, list, tuple)) else _MISSING)
        for name, value in fields.items()
    ]


def matches(entity: Entity, wanted: Sequence[tuple[str, Any, Any]]) -> bool:
    """Whether ``entity`` has each wanted field with an equal value (mappings and sequences
    compared as plain data, so a FrozenDict equals a dict)."""
    fields = type(entity).model_fields
    for name, value, plain in wanted:
        if name not in fields:
            return False
        have = getattr(entity, name)
        if plain is _MISSING:
            if have != value:
                return False
        elif normalize(have) != plain:
            return False
    return True


class NodesView(Mapping[EntityRef, Entity]):
    """``tree.nodes``: a live, read-only mapping over the tree's nodes."""

    __slots__ = ("_tree",)

    def __init__(self, tree: EntityTree) -> None:
        self._tree = tree

    def __getitem__(self, ref: EntityRef) -> Entity:
        index = self._tree._index.get(ref)
        if index is None:
            raise KeyError(ref)
        return self._tree._entities[index]

    def __iter__(self) -> Iterator[EntityRef]:
        return iter(list(self._tree._refs))

    def __len__(self) -> int:
        return len(self._tree._refs)
