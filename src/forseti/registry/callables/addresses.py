"""Addresses: ``"@<uuid>"`` names an entity, ``"@<uuid>.field.sub"`` one value inside it.

The uuid is a lineage id (its head) or a version id. Each path segment is a field of an entity,
a key of a mapping, or an index into a tuple; a segment that lands on an :class:`EntityRef`
follows it to that exact version. Resolution loads only the versions on the path (from the
registry's cache when it can), never a whole tree.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from pydantic import BaseModel

from ...entities import Entity, EntityRef
from ...errors import NotFoundError, ValidationError

if TYPE_CHECKING:
    from ..core import EntityRegistry

__all__ = ["Resolved", "parse_address", "looks_like_address", "resolve_address", "follow_path"]

_HEX = "[0-9a-fA-F]"
_UUID_TEXT = re.compile(rf"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}|{_HEX}{{32}}")
_UUID_START = re.compile(rf"@(?:{_HEX}{{8}}-|{_HEX}{{32}}(?:\.|\Z))")
_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*|[0-9]+")


@dataclass(frozen=True, slots=True)
class Resolved:
    """The value an address names and the entity versions read to reach it (root first)."""

    value: Any
    read: tuple[Entity, ...]


def looks_like_address(value: object) -> bool:
    """Whether ``value`` is a string meant as an address (``"@"`` then a uuid)."""
    return isinstance(value, str) and value[:1] == "@" and _UUID_START.match(value) is not None


def parse_address(text: str) -> tuple[UUID, tuple[str | int, ...]]:
    """Split an address into its uuid and path segments.

    The uuid is written as 8-4-4-4-12 or 32 hex digits. A segment of digits is an index (an
    ``int``) unless it has a leading zero, which makes it a key like any other name.
    """
    if not isinstance(text, str) or not text.startswith("@"):
        raise ValidationError(f"an address starts with '@', got {text!r}")
    return _parse(text)


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> tuple[UUID, tuple[str | int, ...]]:
    head, _, rest = text[1:].partition(".")
    if not _UUID_TEXT.fullmatch(head):
        raise ValidationError(
            f"address {text!r}: {head!r} is not a UUID (use '@<lineage or version id>.field')"
        )
    uid = UUID(head)
    segments: list[str | int] = []
    if rest or text.endswith("."):
        for seg in rest.split("."):
            if not _SEGMENT.fullmatch(seg):
                raise ValidationError(
                    f"address {text!r}: {seg!r} is not a field name, key or index"
                )
            segments.append(int(seg) if seg.isdigit() and (seg == "0" or seg[0] != "0") else seg)
    return uid, tuple(segments)


def resolve_address(reg: EntityRegistry, text: str) -> Resolved:
    """The value at ``text``; :class:`NotFoundError` if the entity or a segment does not exist."""
    uid, path = parse_address(text)
    try:
        entity = reg.get(uid)
    except NotFoundError:
        try:
            entity = reg.get_by_id(uid)
        except NotFoundError:
            raise NotFoundError(
                f"address {text!r}: no lineage or version with id {uid}"
            ) from None
    return follow_path(reg, entity, path, text)


def follow_path(
    reg: EntityRegistry, value: Any, path: tuple[str | int, ...], text: str = ""
) -> Resolved:
    """Walk ``path`` from ``value`` (fields, keys, indexes; refs followed), as addresses do.

    ``text`` names the whole path in error messages.
    """
    read = [value] if isinstance(value, Entity) else []
    for i, seg in enumerate(path):
        if isinstance(value, EntityRef):
            value = reg.get(value)
            read.append(value)
        value = _step(value, seg, text or ".".join(map(str, path)), path[:i])
    return Resolved(value, tuple(read))


def _step(value: Any, seg: str | int, text: str, before: tuple[str | int, ...]) -> Any:
    where = ".".join(map(str, before)) or "the entity"
    if isinstance(value, Entity):
        if isinstance(seg, str) and seg in type(value).model_fields:
            return getattr(value, seg)
        raise NotFoundError(
            f"address {text!r}: {type(value).__name__} at {where} has no field {seg!r}"
        )
    if isinstance(value, Mapping):
        try:
            return value[str(seg)]
        except KeyError:
            raise NotFoundError(f"address {text!r}: no key {str(seg)!r} at {where}") from None
    if isinstance(value, tuple | list):
        if isinstance(seg, int) and seg < len(value):
            return value[seg]
        raise NotFoundError(
            f"address {text!r}: {where} has {len(value)} item(s); {seg!r} is not an index of it"
        )
    if isinstance(value, BaseModel) and isinstance(seg, str) and seg in type(value).model_fields:
        return getattr(value, seg)
    raise NotFoundError(
        f"address {text!r}: {where} is a {type(value).__name__}, which has no {seg!r}"
    )
