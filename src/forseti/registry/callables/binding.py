"""Binding a call's arguments: resolve entities, refs, ids and addresses; validate plain values.

Binding reads the store but never writes it, so a call with a bad argument changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

import pydantic

from ...entities import Entity, EntityRef
from ...entities.frozen import deep_freeze
from ...errors import NotFoundError, ValidationError
from ..checks import stored_version
from .addresses import looks_like_address, resolve_address
from .spec import FunctionSpec, Param

if TYPE_CHECKING:
    from ..core import EntityRegistry

__all__ = ["BoundCall", "bind"]

_SCALARS = (str, int, float, bool, type(None))
_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1


@dataclass(slots=True)
class BoundCall:
    """A call ready to run: the arguments to pass and the exact versions they read."""

    args: list[Any]
    kwargs: dict[str, Any]
    #: every entity version read, once each, in the order first read
    inputs: dict[EntityRef, Entity] = field(default_factory=dict)
    #: each argument as JSON (entities as ``"lineage@version"``), for the call record
    arguments: dict[str, Any] = field(default_factory=dict)


def bind(
    reg: EntityRegistry, spec: FunctionSpec, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> BoundCall:
    """Match ``args``/``kwargs`` to ``spec``'s parameters and resolve every value."""
    call = BoundCall([], {})
    given: dict[str, Any] = {}
    positional = spec.positional
    extra: list[Any] = []
    for i, value in enumerate(args):
        if i < len(positional) and not positional[i].variadic:
            given[positional[i].name] = value
        elif positional and positional[-1].variadic:
            extra.append(value)
        else:
            raise ValidationError(
                f"{spec.label} takes {sum(not p.variadic for p in positional)} positional "
                f"argument(s) but {len(args)} were given"
            )
    for name, value in kwargs.items():
        if name in given:
            raise ValidationError(f"{spec.label} got several values for argument {name!r}")
        given[name] = value
    for index, p in enumerate(spec.params):
        if p.variadic:
            call.args.extend(
                _resolve(reg, spec, p, v, call, f"{p.name}[{i}]") for i, v in enumerate(extra)
            )
            continue
        if p.name in given:
            value = _resolve(reg, spec, p, given.pop(p.name), call, p.name)
        elif p.required:
            raise ValidationError(f"{spec.label} is missing the required argument {p.name!r}")
        else:
            continue  # the function's own default applies
        if p.positional and not call.kwargs and len(call.args) == index:
            call.args.append(value)
        else:
            call.kwargs[p.name] = value
    if given:
        if spec.var_keyword is None:
            raise ValidationError(
                f"{spec.label} has no parameter(s) {', '.join(sorted(given))}; it takes "
                f"{', '.join(p.name for p in spec.params if not p.variadic) or 'no arguments'}"
            )
        for name, value in given.items():
            call.kwargs[name] = _resolve(reg, spec, spec.var_keyword, value, call, name)
    return call


def _resolve(
    reg: EntityRegistry, spec: FunctionSpec, p: Param, value: Any, call: BoundCall, label: str
) -> Any:
    if value is None and (p.optional or (not p.entity_types and not p.as_ref)):
        call.arguments[label] = None
        return _plain(spec, p, None, label)
    if p.many:
        if not isinstance(value, list | tuple):
            raise ValidationError(
                f"{spec.label}: argument {label!r} takes a list of "
                f"{_names(p)}, got {type(value).__name__}"
            )
        items = [_entity(reg, spec, p, v, call, f"{label}[{i}]") for i, v in enumerate(value)]
        call.arguments[label] = tuple(str(e.ref) for e in items)
        return type(value)(items)
    if p.entity_types or p.as_ref:
        entity = _entity(reg, spec, p, value, call, label)
        call.arguments[label] = value if looks_like_address(value) else str(entity.ref)
        return entity.ref if p.as_ref else entity
    if looks_like_address(value):
        call.arguments[label] = value
        resolved = resolve_address(reg, value)
        for e in resolved.read:
            call.inputs.setdefault(e.ref, e)
        return _plain(spec, p, resolved.value, label)
    if isinstance(value, Entity):
        entity = _stored(reg, spec, value, label)
        checked = _plain(spec, p, entity, label)  # e.g. an entity for an int is refused
        call.inputs.setdefault(entity.ref, entity)
        call.arguments[label] = str(entity.ref)
        return checked
    call.arguments[label] = _summary(value)
    return _plain(spec, p, value, label)


def _plain(spec: FunctionSpec, p: Param, value: Any, label: str) -> Any:
    if p.adapter is None:
        return value
    try:
        return p.adapter.validate_python(value)
    except pydantic.ValidationError as exc:
        raise ValidationError.from_pydantic(exc, f"{spec.label}: argument {label!r}") from None


def _entity(
    reg: EntityRegistry, spec: FunctionSpec, p: Param, value: Any, call: BoundCall, label: str
) -> Entity:
    if isinstance(value, Entity):
        entity = _stored(reg, spec, value, label)
    elif isinstance(value, EntityRef):
        entity = reg.get(value)
    elif looks_like_address(value):
        resolved = resolve_address(reg, value)
        for e in resolved.read:
            call.inputs.setdefault(e.ref, e)
        target = resolved.value
        if isinstance(target, EntityRef):
            target = reg.get(target)
        if not isinstance(target, Entity):
            raise ValidationError(
                f"{spec.label}: argument {label!r} takes {_names(p)}, but address {value!r} "
                f"names a {type(target).__name__}"
            )
        entity = target
    elif isinstance(value, UUID | str):
        entity = _by_id(reg, spec, value, label)
    else:
        raise ValidationError(
            f"{spec.label}: argument {label!r} takes {_names(p)} (an entity, EntityRef, id or "
            f"'@' address), got {type(value).__name__}"
        )
    if p.entity_types and not isinstance(entity, p.entity_types):
        raise ValidationError(
            f"{spec.label}: argument {label!r} takes {_names(p)}, got a "
            f"{type(entity).__name__} ({entity.ref})"
        )
    call.inputs.setdefault(entity.ref, entity)
    return entity


def _by_id(reg: EntityRegistry, spec: FunctionSpec, value: UUID | str, label: str) -> Entity:
    try:
        uid = value if isinstance(value, UUID) else UUID(value)
    except ValueError:
        raise ValidationError(
            f"{spec.label}: argument {label!r}: {value!r} is not a lineage id, version id or "
            f"'@' address"
        ) from None
    try:
        return reg.get(uid)
    except NotFoundError:
        try:
            return reg.get_by_id(uid)
        except NotFoundError:
            raise NotFoundError(
                f"{spec.label}: argument {label!r}: no lineage or version with id {uid}"
            ) from None


def _stored(reg: EntityRegistry, spec: FunctionSpec, entity: Entity, label: str) -> Entity:
    """``entity`` itself if it is a stored version; a clear error for a draft or new entity."""
    stored = stored_version(reg, entity)
    if stored is None:
        raise ValidationError(
            f"{spec.label}: argument {label!r} is a {type(entity).__name__} that is not stored "
            f"(a new entity or an uncommitted draft); add or commit it first"
        )
    return stored


def _names(p: Param) -> str:
    if not p.entity_types:
        return "an entity"
    return " or ".join(t.__name__ for t in p.entity_types)


def _summary(value: Any) -> Any:
    """``value`` as JSON for the call record (its repr when it is not JSON-like)."""
    if isinstance(value, int) and not isinstance(value, bool) and not _INT_MIN <= value <= _UINT_MAX:
        return str(value)  # the stores keep 64-bit integers
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, EntityRef):
        return str(value)
    try:
        return deep_freeze(value)
    except ValueError:
        text = repr(value)
        return text if len(text) <= 200 else text[:199] + "…"
