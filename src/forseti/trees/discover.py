"""Finding a tree in a registry: resolving the root, then following stored references."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ..entities import Entity, EntityRef
from ..errors import NotFoundError, ValidationError
from .edges import TreeEdge, check_kinds, edge_kind

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = ["resolve", "discover"]


def resolve(reg: EntityRegistry, ref: Entity | EntityRef | UUID | str | Any) -> Entity:
    """The version ``ref`` names: an entity (itself), an :class:`EntityRef`, a lineage id (its
    head), a string ``"LINEAGE@VERSION"``, or a version id (tried when no lineage has that id).

    :class:`~forseti.errors.ValidationError` for something else, :class:`NotFoundError` if absent.
    """
    if isinstance(ref, Entity):
        return ref
    if isinstance(ref, EntityRef):
        return reg.get(ref)
    if isinstance(ref, str) and "@" in ref:
        lineage, _, version = ref.strip().partition("@")
        if not version.isdigit():
            raise ValidationError(f"expected LINEAGE@VERSION with a numeric version, got {ref!r}")
        return reg.get(lineage, int(version))
    if isinstance(ref, (UUID, str)):
        try:
            return reg.get(ref.strip() if isinstance(ref, str) else ref)
        except NotFoundError:
            try:
                return reg.get_by_id(ref.strip() if isinstance(ref, str) else ref)
            except NotFoundError:
                raise NotFoundError(f"no lineage and no version with id {ref}") from None
    raise ValidationError(
        f"expected an Entity, EntityRef, lineage id or 'LINEAGE@VERSION', got {type(ref).__name__}"
    )


def discover(
    reg: EntityRegistry,
    root: Any,
    kinds: Iterable[str],
    follow: str,
    max_depth: int | None,
) -> tuple[Entity, list[Entity], list[TreeEdge]]:
    """The root, the versions and the edges reachable from ``root`` (breadth first).

    Each version is loaded once (``reg.get`` is cached); cycles are left for the tree to find.
    """
    wanted = check_kinds(kinds)
    if follow not in ("exact", "head"):
        raise ValidationError(f"follow is 'exact' or 'head', got {follow!r}")
    if max_depth is not None and (
        isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0
    ):
        raise ValidationError(f"max_depth is a non-negative integer or None, got {max_depth!r}")
    top = resolve(reg, root)
    seen: dict[EntityRef, Entity] = {top.ref: top}
    edges: list[TreeEdge] = []
    frontier = [top]
    depth = 0
    while frontier and (max_depth is None or depth < max_depth):
        depth += 1
        nxt: list[Entity] = []
        for entity in frontier:
            cls = type(entity)
            for relation, ref in entity.references():
                kind = edge_kind(cls, relation)
                if wanted is not None and kind not in wanted:
                    continue
                child = reg.get(ref) if follow == "exact" else reg.get(ref.lineage_id)
                known = seen.get(child.ref)
                if known is None:
                    seen[child.ref] = child
                    nxt.append(child)
                edges.append(TreeEdge(entity.ref, child.ref, kind, relation))
        frontier = nxt
    return top, list(seen.values()), edges
