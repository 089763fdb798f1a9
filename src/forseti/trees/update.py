"""Versioning a tree at O(changed) cost: commit one node and only the versions that must follow it.

Changing a node of a tree makes a new version of it; every node that *stores* a reference to it
(through a ``hierarchical`` or ``reference`` edge) must then get a new version too, pointing at the
new one, and so on up to the root. Nothing else changes: siblings, cousins and every other
subtree keep their versions, because their stored references are still right. So the cost is the
target plus its tree-ancestors, whatever the size of the tree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..entities import Entity, EntityRef
from ..errors import ValidationError

if TYPE_CHECKING:
    from ..registry import EntityRegistry
    from .model import EntityTree

__all__ = ["commit_change", "tree_ancestors"]


def _stores(parent: Entity, relation: str) -> bool:
    """Whether ``relation`` is a field of ``parent`` (an edge a builder inferred is not)."""
    return relation != "derived_from" and relation in type(parent).model_fields


def tree_ancestors(tree: EntityTree, index: int) -> list[int]:
    """The nodes that store a reference to node ``index``, directly or through each other.

    Walks the reverse adjacency from ``index`` along ``hierarchical``/``reference`` edges whose
    relation is a field of the parent. Nearest first; the cost is the size of the answer (plus
    the edges into it).
    """
    entities = tree._entities
    found: dict[int, None] = {}
    stack = [index]
    while stack:
        for parent, kind, relation in tree._in[stack.pop()]:
            if (
                kind != "derived_from"
                and parent not in found
                and _stores(entities[parent], relation)
            ):
                found[parent] = None
                stack.append(parent)
    found.pop(index, None)
    return list(found)


def _children_first(tree: EntityTree, changed: list[int]) -> list[int]:
    """``changed`` ordered so that every node comes after the changed nodes it references."""
    members = set(changed)
    waiting = {i: 0 for i in changed}
    for i in changed:
        waiting[i] = len({c for c, _, _ in tree._out[i] if c in members})
    ready = [i for i in changed if waiting[i] == 0]
    order: list[int] = []
    while ready:
        i = ready.pop()
        order.append(i)
        for parent in dict.fromkeys(p for p, _, _ in tree._in[i]):
            if parent in waiting:
                waiting[parent] -= 1
                if waiting[parent] == 0:
                    ready.append(parent)
    return order


def _repoint(entity: Entity, new_refs: dict[EntityRef, EntityRef]) -> dict[str, Any]:
    """The field changes that make ``entity``'s reference fields point at the new versions."""
    updates: dict[str, Any] = {}
    fields = dict.fromkeys(rel for rel, _ in entity.references() if rel != "derived_from")
    for name in fields:
        value = getattr(entity, name)
        if isinstance(value, EntityRef):
            updates[name] = new_refs.get(value, value)
        elif isinstance(value, tuple):
            updates[name] = tuple(
                new_refs.get(v, v) if isinstance(v, EntityRef) else v for v in value
            )
    return {k: v for k, v in updates.items() if v != getattr(entity, k)}


def commit_change(
    reg: EntityRegistry, tree: EntityTree, target: EntityRef | Entity, **changes: Any
) -> EntityTree:
    """Commit ``target.evolve(**changes)`` and new versions of its tree-ancestors, atomically.

    Every node that reaches ``target`` through stored ``hierarchical``/``reference`` edges gets a
    new version whose reference fields point at the new versions (a shared child changes all of
    its parents); edges a builder inferred (a run's ``checkpoints``) and ``derived_from`` edges
    store nothing in the parent and do not propagate. All the drafts go to one
    ``reg.commit_many`` (all or nothing): ``1 + len(ancestors)`` versions, whatever the size of
    the tree. If a changed node is not the head of its lineage any more, the registry raises
    :class:`~forseti.errors.ConflictError` and nothing is written.

    The tree is updated **in place** for the changed nodes only (their entries point at the new
    versions; the edges keep their shape) and returned. Nothing is copied or rebuilt.
    """
    index = tree._position(target)
    if isinstance(target, Entity) and tree._entities[index].id != target.id:
        raise ValidationError(f"{target.ref} in this tree is a different entity than the one given")
    if not changes:
        raise ValidationError("commit_change() needs at least one field to change")
    changed = [index, *tree_ancestors(tree, index)]
    new_refs: dict[EntityRef, EntityRef] = {}
    drafts: list[tuple[int, Entity]] = []
    for i in _children_first(tree, changed):
        entity = tree._entities[i]
        if i == index:
            draft = entity.evolve(**changes)
        else:
            draft = entity.evolve(**_repoint(entity, new_refs))
        new_refs[entity.ref] = draft.ref
        drafts.append((i, draft))
    committed = reg.commit_many([d for _, d in drafts])
    for (i, _), entity in zip(drafts, committed, strict=True):
        tree._replace(i, entity)
    return tree
