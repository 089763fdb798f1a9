"""Typed edges between the versions in a tree, and how a reference field maps to an edge kind."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from ..entities import Entity, EntityRef
from ..errors import ValidationError

__all__ = ["EdgeKind", "EDGE_KINDS", "TreeEdge", "edge_kind", "check_kinds"]

EdgeKind = Literal["hierarchical", "reference", "derived_from"]
"""``hierarchical``: the parent owns the child (a field in ``child_fields``); ``reference``: the
parent uses the child (any other reference field); ``derived_from``: provenance."""

EDGE_KINDS: tuple[EdgeKind, ...] = get_args(EdgeKind)


@dataclass(frozen=True, slots=True)
class TreeEdge:
    """One edge: ``parent`` points at ``child`` through ``relation`` (a field name, or a name a
    builder gives, such as ``"checkpoints"``), and the edge is of ``kind``."""

    parent: EntityRef
    child: EntityRef
    kind: EdgeKind = "hierarchical"
    relation: str = "child"


def edge_kind(cls: type[Entity], relation: str) -> EdgeKind:
    """The kind of the edge an entity of class ``cls`` has through ``relation``."""
    if relation == "derived_from":
        return "derived_from"
    return "hierarchical" if relation in cls.child_fields else "reference"


def check_kinds(kinds: Iterable[str] | None) -> frozenset[str] | None:
    """``kinds`` as a set (``None``: every kind); :class:`ValidationError` for an unknown one."""
    if kinds is None:
        return None
    if isinstance(kinds, str):
        kinds = (kinds,)
    out = frozenset(kinds)
    unknown = out - set(EDGE_KINDS)
    if unknown or not out:
        raise ValidationError(
            f"edge kinds are {', '.join(EDGE_KINDS)}; got {sorted(out) or 'none'}"
        )
    return out
