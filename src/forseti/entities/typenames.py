"""Stable names for classes stored by name (entity types, event topics): one registration rule."""

from __future__ import annotations

from typing import Any

__all__ = ["register_name"]


def register_name(table: dict[str, Any], cls: type, attr: str, kind: str) -> str:
    """Register ``cls`` in ``table`` under its ``attr`` class variable (set to a default if absent).

    The default name is ``"<module>.<qualname>"``. Re-defining the same class (a re-run notebook
    cell) replaces it; another class claiming a used name is a ``TypeError``.
    """
    name = cls.__dict__.get(attr)
    if not name:
        name = f"{cls.__module__}.{cls.__qualname__}"
        setattr(cls, attr, name)
    if not isinstance(name, str) or "\x00" in name:
        raise TypeError(f"{cls.__name__}.{attr} must be a string without NUL characters")
    known = table.get(name)
    if known is not None and (known.__module__, known.__qualname__) != (
        cls.__module__,
        cls.__qualname__,
    ):
        raise TypeError(
            f"{kind} {name!r} is already used by {known.__module__}.{known.__qualname__}; "
            f"give {cls.__qualname__} its own {attr}"
        )
    table[name] = cls
    return name
