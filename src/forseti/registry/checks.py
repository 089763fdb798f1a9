"""Argument checks shared by the registry's public methods (each raises ValidationError)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ..entities import BlobRef, Entity
from ..entities.base import MAX_VERSION
from ..errors import NotFoundError, ValidationError

if TYPE_CHECKING:
    from .core import EntityRegistry

__all__ = ["as_uuid", "check_version", "as_blob", "check_alias", "check_op_id", "stored_version"]

_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def as_uuid(value: Any, what: str) -> UUID:
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            pass
    raise ValidationError(f"{what} must be a UUID, got {value!r}")


def check_version(version: Any) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise ValidationError(f"version must be an integer from 1 to {MAX_VERSION}, got {version!r}")


def as_blob(ref: Any) -> BlobRef:
    if not isinstance(ref, BlobRef):
        raise ValidationError(f"expected a BlobRef, got {type(ref).__name__}")
    return ref


def check_alias(name: Any) -> None:
    if not isinstance(name, str) or not _ALIAS.match(name):
        raise ValidationError(
            f"an alias name is 1-128 letters, digits, '.', '_' or '-', got {name!r}"
        )


def check_op_id(op_id: Any) -> None:
    if not isinstance(op_id, str) or not 0 < len(op_id) <= 128 or "\x00" in op_id:
        raise ValidationError(
            "op_id is a non-empty string of at most 128 characters, without NUL characters"
        )


def stored_version(reg: EntityRegistry, entity: Entity) -> Entity | None:
    """The stored version that ``entity`` is, or ``None`` for a new entity or an uncommitted
    draft (a version of that number with another id does not count). Cached versions answer
    without the store."""
    cached = reg._cached(entity.ref)
    if cached is None:
        try:
            cached = reg.get(entity.ref)
        except NotFoundError:
            return None
    return cached if cached.id == entity.id else None
