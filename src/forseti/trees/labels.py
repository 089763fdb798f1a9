"""How a tree names its nodes: ``Type 'name' v3`` (shared by error messages and renderers)."""

from __future__ import annotations

from ..entities import Entity

__all__ = ["type_name", "node_label"]


def type_name(entity: Entity) -> str:
    """A short type name: ``ModelEntity`` -> ``Model``."""
    name = type(entity).__name__
    return name[: -len("Entity")] if name.endswith("Entity") and name != "Entity" else name


def node_label(entity: Entity) -> str:
    """``Type 'name' v3``; ``Checkpoint step 100 v1`` for an entity with a ``step`` and no name."""
    name = getattr(entity, "name", None)
    if isinstance(name, str):
        return f"{type_name(entity)} {name!r} v{entity.version}"
    step = getattr(entity, "step", None)
    if isinstance(step, int) and not isinstance(step, bool):
        return f"{type_name(entity)} step {step} v{entity.version}"
    return f"{type_name(entity)} v{entity.version}"
