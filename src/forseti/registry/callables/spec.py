"""A registered function's signature, analysed once: which parameters take entities, which values.

Everything a call needs to check its arguments is worked out at registration, so a call only
looks things up (the trivial-function overhead budget is tens of microseconds).
"""

from __future__ import annotations

import collections.abc
import functools
import hashlib
import inspect
import textwrap
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic

from ...entities import Entity, EntityRef
from ...errors import ValidationError

__all__ = ["Param", "FunctionSpec", "analyse", "code_hash"]

_EMPTY = inspect.Parameter.empty
_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable)


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter: how a call fills it."""

    name: str
    #: the entity classes it accepts (empty: it takes a plain value)
    entity_types: tuple[type[Entity], ...]
    #: it takes a list/tuple of entities
    many: bool
    #: ``None`` is accepted
    optional: bool
    #: it is annotated ``EntityRef``: the argument is checked to exist, then passed as a ref
    as_ref: bool
    #: validates (and coerces) a plain value; ``None`` for unannotated or ``Any``
    adapter: pydantic.TypeAdapter[Any] | None
    default: Any
    positional: bool
    variadic: bool

    @property
    def required(self) -> bool:
        return self.default is _EMPTY and not self.variadic


@dataclass(frozen=True, slots=True, eq=False)
class FunctionSpec:
    """A function version: the callable, its analysed parameters and identity."""

    name: str
    version: int
    fn: Callable[..., Any]
    is_async: bool
    params: tuple[Param, ...]
    by_name: dict[str, Param]
    #: ``**kwargs`` parameter, if any
    var_keyword: Param | None
    #: what the call may return when the annotation names entity types (``None`` included
    #: for an optional one); empty: not checked
    returns: tuple[type[Any], ...]
    signature: str
    code_hash: str
    description: str
    function_ref: EntityRef | None
    _positional: tuple[Param, ...] = ()

    @property
    def label(self) -> str:
        """``name@version``, as events and records show it."""
        return f"{self.name}@{self.version}"

    @property
    def positional(self) -> tuple[Param, ...]:
        """The parameters that can be passed by position, in order."""
        return self._positional

    def __post_init__(self) -> None:
        object.__setattr__(self, "_positional", tuple(p for p in self.params if p.positional))


def analyse(
    fn: Callable[..., Any], name: str
) -> tuple[tuple[Param, ...], Param | None, tuple[type[Any], ...]]:
    """The parameters of ``fn`` (positional ones first) and the entity types it returns."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"cannot read the signature of {name!r}: {exc}") from None
    try:
        hints = typing.get_type_hints(_annotated(fn))
    except Exception as exc:  # a name in an annotation that cannot be resolved
        raise ValidationError(
            f"cannot resolve the type hints of {name!r} ({type(exc).__name__}: {exc}); "
            f"define the types it mentions at module level"
        ) from None
    params: list[Param] = []
    var_keyword: Param | None = None
    for p in sig.parameters.values():
        annotation = hints.get(p.name, _EMPTY)
        param = _param(p, annotation, name)
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = param
        else:
            params.append(param)
    types_, many, optional = _entity_types(hints.get("return", _EMPTY))
    returns: tuple[type[Any], ...] = ()
    if types_ and not many:  # checked when the call returns; a list of entities is not
        returns = (*types_, type(None)) if optional else types_
    return tuple(params), var_keyword, returns


def _annotated(fn: Callable[..., Any]) -> Any:
    """Where ``fn``'s annotations live: the function a partial wraps, a callable object's
    ``__call__``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isbuiltin(fn):
        return fn
    if inspect.isclass(fn):
        return fn.__init__
    return type(fn).__call__


def _param(p: inspect.Parameter, annotation: Any, fname: str) -> Param:
    types_, many, optional = _entity_types(annotation)
    as_ref = annotation is EntityRef or (
        _is_union(annotation) and EntityRef in typing.get_args(annotation)
    )
    adapter = None
    if not types_ and not as_ref and annotation not in (_EMPTY, Any, object):
        try:
            adapter = pydantic.TypeAdapter(annotation)
        except pydantic.PydanticSchemaGenerationError:
            adapter = None  # an arbitrary class: checked by the function itself
    if as_ref:
        optional = type(None) in typing.get_args(annotation)
    return Param(
        name=p.name,
        entity_types=types_,
        many=many,
        optional=optional or p.default is None,
        as_ref=as_ref,
        adapter=adapter,
        default=p.default,
        positional=p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL),
        variadic=p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD),
    )


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _is_entity_class(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Entity)


def _entity_types(annotation: Any) -> tuple[tuple[type[Entity], ...], bool, bool]:
    """``(entity classes, many, optional)`` for an annotation; no classes for a plain value."""
    if _is_entity_class(annotation):
        return (annotation,), False, False
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if _is_union(annotation):
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        if rest and all(_is_entity_class(a) for a in rest):
            return tuple(rest), False, optional
        if len(rest) == 1:
            inner, many, _ = _entity_types(rest[0])
            return inner, many, optional
        return (), False, optional
    if origin in _SEQUENCES and args:
        items = [a for a in args if a is not Ellipsis]
        if len(items) == 1:
            inner, many, _ = _entity_types(items[0])
            if inner and not many:
                return inner, True, False
    return (), False, False


def code_hash(fn: Callable[..., Any]) -> str:
    """sha256 of the function's source, or of its bytecode and constants when there is none."""
    h = hashlib.sha256()
    target: Any = inspect.unwrap(fn)
    while isinstance(target, functools.partial):  # the wrapped code and the bound arguments
        h.update(repr((target.args, sorted(target.keywords.items()))).encode())
        target = target.func
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = type(target)  # a callable object: its class's code
    try:
        h.update(textwrap.dedent(inspect.getsource(target)).encode())
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        if code is None:
            h.update(f"{type(target).__module__}.{type(target).__qualname__}".encode())
        else:
            h.update(code.co_code)
            h.update(repr(code.co_consts).encode())
            h.update(repr(code.co_names).encode())
    return h.hexdigest()
