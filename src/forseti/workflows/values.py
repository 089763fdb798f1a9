"""Workflow values as JSON: step outputs and step arguments, so a run can resume elsewhere.

An entity is stored as ``{"$ref": "<lineage>@<version>"}`` and read back as that exact version;
a reference to another step's output as ``{"$step": name, "path": [...]}``. Plain JSON values are
kept as they are. Anything else cannot outlive the process: an output is stored as
``{"$repr": ...}`` (a later step that needs it after a restart fails clearly), an argument is
refused when the workflow starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ..entities import Entity, EntityRef
from ..errors import NotFoundError, ValidationError

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = ["encode_output", "decode_value", "encode_argument", "NotPersistable"]

_SCALARS = (str, int, float, bool, type(None))
_MARKS = ("$ref", "$step", "$repr")


class NotPersistable(ValidationError):
    """A value that cannot be stored as JSON (and so cannot outlive the process)."""


def _ref_text(ref: EntityRef) -> str:
    return f"{ref.lineage_id}@{ref.version}"


def _parse_ref(text: str) -> EntityRef:
    lineage, _, version = text.partition("@")
    if not version.isdigit():
        raise ValidationError(f"{text!r} is not '<lineage>@<version>'")
    return EntityRef(lineage, int(version))


def _encode(value: Any, other: Callable[[Any], Any], where: str) -> Any:
    if isinstance(value, Entity):
        return {"$ref": _ref_text(value.ref)}
    if isinstance(value, EntityRef):
        return {"$ref": _ref_text(value)}
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_encode(v, other, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        if any(k in _MARKS for k in value):
            raise NotPersistable(f"{where}: mapping keys {', '.join(_MARKS)} are reserved")
        return {k: _encode(v, other, f"{where}.{k}") for k, v in value.items()}
    return other(value)


def encode_output(value: Any) -> Any:
    """A step output as JSON (``{"$repr": ...}`` for what JSON cannot hold)."""

    def fallback(v: Any) -> Any:
        text = repr(v)
        return {"$repr": text if len(text) <= 500 else text[:499] + "…"}

    return _encode(value, fallback, "output")


def encode_argument(value: Any, where: str, placeholder: Callable[[Any], Any | None]) -> Any:
    """A step argument as JSON; ``placeholder`` encodes references to other steps' outputs."""

    def other(v: Any) -> Any:
        encoded = placeholder(v)
        if encoded is None:
            raise NotPersistable(
                f"{where}: a {type(v).__name__} cannot be stored with the run (workflow arguments "
                f"are entities, refs, ids, addresses, other steps' outputs or JSON values)"
            )
        return encoded

    return _encode(value, other, where)


def decode_value(
    reg: EntityRegistry, value: Any, step_value: Callable[[str, list[Any]], Any] | None = None
) -> Any:
    """The live value of stored JSON: entities loaded at their exact versions."""
    if isinstance(value, list | tuple):
        return [decode_value(reg, v, step_value) for v in value]
    if isinstance(value, Mapping):
        if "$ref" in value:
            return reg.get(_parse_ref(value["$ref"]))
        if "$repr" in value:
            raise NotFoundError(
                f"a step output ({value['$repr']}) was not JSON, so it was not stored and is "
                f"gone after a restart; return entities or JSON values from workflow steps"
            )
        if "$step" in value:
            if step_value is None:
                raise ValidationError("a step reference outside a workflow")
            return step_value(value["$step"], list(value.get("path", ())))
        return {k: decode_value(reg, v, step_value) for k, v in value.items()}
    return value
