"""Deeply immutable JSON-like values for entity fields.

A frozen pydantic model still lets ``entity.params["lr"] = 1`` mutate a dict inside it, which would
silently rewrite history that other readers share. Entity fields that hold mappings use these types
instead: dicts become :class:`FrozenDict`, lists become tuples, all the way down.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, NonNegativeInt, PlainSerializer

__all__ = [
    "FrozenDict",
    "deep_freeze",
    "thaw",
    "normalize",
    "JSONMap",
    "JSONValue",
    "FloatMap",
    "IntMap",
]


class FrozenDict(Mapping[str, Any]):
    """An immutable, hashable mapping with string keys."""

    __slots__ = ("_data", "_hash")
    _data: dict[str, Any]
    _hash: int | None

    def __init__(self, data: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        merged = dict(data or {}, **kwargs)
        object.__setattr__(self, "_data", merged)
        object.__setattr__(self, "_hash", None)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            object.__setattr__(self, "_hash", hash(frozenset(self._data.items())))
        assert self._hash is not None
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenDict):
            return bool(self._data == other._data)
        if isinstance(other, Mapping):
            return bool(normalize(self) == normalize(other))
        return NotImplemented

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("FrozenDict is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (self._data,))

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"


_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1


def normalize(value: Any) -> Any:
    """Plain dicts and lists all the way down, for comparing frozen and unfrozen values."""
    if isinstance(value, Mapping):
        return {k: normalize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return [normalize(v) for v in value]
    return value


def deep_freeze(value: Any, _path: str = "") -> Any:
    """Return ``value`` with dicts turned into FrozenDicts and lists into tuples, recursively.

    Only JSON-like values are accepted (str, int, float, bool, None, mappings with str keys,
    sequences); anything else raises ``ValueError`` naming where it was found.
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _UINT_MAX:
            raise ValueError(
                f"integer {value} at {_path or '<root>'} does not fit in 64 bits; store it as a string"
            )
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"keys must be strings, got {k!r} at {_path or '<root>'}")
            out[k] = deep_freeze(v, f"{_path}.{k}" if _path else k)
        return FrozenDict(out)
    if isinstance(value, (list, tuple)):
        return tuple(deep_freeze(v, f"{_path}[{i}]") for i, v in enumerate(value))
    raise ValueError(
        f"only JSON-like values (str, int, float, bool, None, dict, list) are allowed, "
        f"got {type(value).__name__} at {_path or '<root>'}"
    )


def thaw(value: Any) -> Any:
    """Inverse of :func:`deep_freeze`: plain dicts and lists, ready to serialize."""
    kind = type(value)
    if kind is FrozenDict:
        return {k: thaw(v) for k, v in value._data.items()}
    if kind is tuple:
        return [thaw(v) for v in value]
    if kind in _SCALARS:
        return value
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _freeze_floats(value: Mapping[str, float]) -> FrozenDict:
    for k, v in value.items():
        if math.isnan(v):
            raise ValueError(f"{k} is NaN")
    return FrozenDict(value)


JSONMap = Annotated[
    Mapping[str, Any],
    AfterValidator(deep_freeze),
    PlainSerializer(thaw, return_type=dict),
]
"""A deeply frozen JSON-like mapping (hyper-parameters, free-form metadata)."""

JSONValue = Annotated[Any, AfterValidator(deep_freeze), PlainSerializer(thaw)]
"""Any deeply frozen JSON-like value: a scalar, a mapping or a sequence."""

FloatMap = Annotated[
    Mapping[str, float],
    AfterValidator(_freeze_floats),
    PlainSerializer(dict, return_type=dict),
]
"""A frozen mapping of names to finite-or-infinite (never NaN) floats, e.g. metrics."""

IntMap = Annotated[
    Mapping[str, NonNegativeInt],
    AfterValidator(FrozenDict),
    PlainSerializer(dict, return_type=dict),
]
"""A frozen mapping of names to non-negative integers, e.g. split sizes."""
