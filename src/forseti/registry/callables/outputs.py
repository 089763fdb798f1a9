"""Turning a function's return value into committed versions with provenance.

An entity in the return value (alone, or inside a tuple, list or dict) is either a stored
version (returned as is) or something new: a draft from ``input.evolve(...)`` becomes the next
version of its lineage, an entity built from scratch starts a new lineage. Each new one gets
``derived_from`` edges to the exact versions the call read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...entities import Entity, EntityRef, FrozenDict
from ..checks import stored_version

if TYPE_CHECKING:
    from ..core import EntityRegistry

__all__ = ["Outputs", "collect_outputs"]


@dataclass(slots=True)
class Outputs:
    """The return value rebuilt around the versions to commit, and what it refers to."""

    value: Any
    #: new versions to commit, in the order they appear in the return value
    drafts: list[Entity] = field(default_factory=list)
    #: every entity version in the return value (new or already stored), once each
    refs: list[EntityRef] = field(default_factory=list)


def collect_outputs(reg: EntityRegistry, result: Any, inputs: Sequence[EntityRef]) -> Outputs:
    """Find the entities in ``result`` and give the new ones provenance to ``inputs``."""
    out = Outputs(None)
    seen: dict[int, Entity] = {}

    def visit(value: Any) -> Any:
        if isinstance(value, Entity):
            done = seen.get(id(value))
            if done is None:
                done = seen[id(value)] = _one(reg, value, inputs, out)
            return done
        if type(value) in (tuple, list):
            return type(value)(visit(v) for v in value)
        if type(value) is dict:
            return {k: visit(v) for k, v in value.items()}
        return value

    out.value = visit(result)
    return out


def _one(reg: EntityRegistry, entity: Entity, inputs: Sequence[EntityRef], out: Outputs) -> Entity:
    if stored_version(reg, entity) is not None:
        if entity.ref not in out.refs:
            out.refs.append(entity.ref)
        return entity
    derived = tuple(dict.fromkeys((*entity.derived_from, *inputs)))
    if derived != entity.derived_from:
        # a system field on a version that is not stored yet: no validator depends on it
        entity = entity.model_copy(update={"derived_from": derived})
    out.drafts.append(entity)
    out.refs.append(entity.ref)
    return entity


def is_plain(value: Any) -> bool:
    """Whether ``value`` holds no entity (so it can go into the record's ``result``)."""
    if isinstance(value, Entity):
        return False
    if isinstance(value, tuple | list):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict | FrozenDict):
        return all(is_plain(v) for v in value.values())
    return True
