"""Plain data ↔ tensors + JSON, without pickle: the codec of the training-state blob.

:class:`Packer` turns a Python value made of numbers, strings, ``None``, lists, tuples, deques,
string-keyed dicts, numpy arrays and scalars, and numpy random generators into a JSON tree; the
arrays go to a tensor table (they are written as safetensors). :func:`unpack` reverses it.
Anything else raises :class:`Unsupported`: callers decide whether to skip it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import IntegrityError

__all__ = ["Packer", "Unsupported", "unpack", "generator_state", "set_generator_state"]

_SCALARS = (bool, int, str, type(None))
_PLAIN = frozenset({bool, int, float, str, type(None)})
_KINDS = frozenset("biuf")  # bool, signed, unsigned, float: what safetensors stores


class Unsupported(TypeError):
    """A value the codec cannot store as data."""


def generator_state(gen: np.random.Generator) -> dict[str, Any]:
    """A numpy generator's bit-generator state (a JSON-able dict)."""
    return dict(gen.bit_generator.state)


def set_generator_state(
    gen: np.random.Generator | None, state: Mapping[str, Any]
) -> np.random.Generator:
    """``gen`` (or a new generator of the recorded kind) set to ``state``."""
    name = str(state.get("bit_generator", ""))
    if gen is None or type(gen.bit_generator).__name__ != name:
        cls = getattr(np.random, name, None)
        if not (isinstance(cls, type) and issubclass(cls, np.random.BitGenerator)):
            raise IntegrityError(f"unknown numpy bit generator {name!r} in a training state")
        gen = np.random.Generator(cls())
    gen.bit_generator.state = dict(state)
    return gen


class Packer:
    """Collects the arrays of packed values under ``prefix``-based names."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def pack(self, key: str, value: Any, rows: int | None = None) -> Any:
        """``value`` as a JSON tree; arrays stored as ``key`` (their first ``rows`` rows only).

        All or nothing: when part of ``value`` is :class:`Unsupported`, none of its arrays stay.
        """
        before = set(self.tensors)
        try:
            return self._pack(key, value, rows)
        except Unsupported:
            for name in set(self.tensors) - before:
                del self.tensors[name]
            raise

    def _name(self, key: str) -> str:
        name, n = key, 0
        while name in self.tensors:  # e.g. a dict key with a dot in it
            n += 1
            name = f"{key}~{n}"
        return name

    def _pack(self, key: str, value: Any, rows: int | None) -> Any:
        if isinstance(value, np.generic):  # before float: np.float64 is a float
            if value.dtype.kind not in _KINDS:
                raise Unsupported(f"{key}: a numpy {value.dtype} scalar")
            return {"scalar": self._pack(key, value.item(), None), "dtype": str(value.dtype)}
        if isinstance(value, float):
            return value if math.isfinite(value) else {"float": repr(float(value))}
        if isinstance(value, _SCALARS):
            return value
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in _KINDS:
                raise Unsupported(f"{key}: an array of {value.dtype}")
            data = np.array(value[:rows] if rows is not None else value, copy=True, order="C")
            if data.dtype.kind == "u" and data.dtype.itemsize > 1:
                data = data.astype(np.int64)  # stored widened; the dtype below restores it
            name = self._name(key)
            self.tensors[name] = torch.from_numpy(data)
            return {"array": name, "dtype": str(value.dtype), "rows": rows}
        if isinstance(value, np.random.Generator):
            return {"generator": self._pack(f"{key}.state", generator_state(value), None)}
        if isinstance(value, (list, tuple, deque)):
            if all(type(v) in _PLAIN for v in value) and all(
                math.isfinite(v) for v in value if type(v) is float
            ):  # the common case (episode returns, lengths): JSON as it is
                items = list(value)
            else:
                items = [self._pack(f"{key}.{i}", v, None) for i, v in enumerate(value)]
            if isinstance(value, list):
                return items
            if isinstance(value, tuple):
                return {"tuple": items}
            return {"deque": items, "maxlen": value.maxlen}
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {"dict": {k: self._pack(f"{key}.{k}", v, rows) for k, v in value.items()}}
        raise Unsupported(f"{key}: a {type(value).__name__}")


def unpack(tree: Any, tensors: Mapping[str, torch.Tensor], into: Any = None) -> Any:
    """The value :meth:`Packer.pack` stored. ``into`` is the current value: a stored generator
    state is set on it, and an array stored by its first rows is written into it in place."""
    if isinstance(tree, list):
        return [unpack(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "float" in tree:
        return float(tree["float"])
    if "array" in tree:
        stored = tensors.get(tree["array"])
        if stored is None:
            raise IntegrityError(f"the training state lacks the array {tree['array']!r}")
        array = stored.numpy().astype(np.dtype(tree["dtype"]), copy=True)
        if tree.get("rows") is not None:
            if not isinstance(into, np.ndarray) or into.shape[1:] != array.shape[1:]:
                raise IntegrityError(f"{tree['array']!r} does not fit the buffer it belongs to")
            into[: array.shape[0]] = array
            return into
        return array
    if "scalar" in tree:
        return np.dtype(tree["dtype"]).type(unpack(tree["scalar"], tensors))
    if "generator" in tree:
        current = into if isinstance(into, np.random.Generator) else None
        return set_generator_state(current, unpack(tree["generator"], tensors))
    if "tuple" in tree:
        return tuple(unpack(v, tensors) for v in tree["tuple"])
    if "deque" in tree:
        return deque((unpack(v, tensors) for v in tree["deque"]), maxlen=tree["maxlen"])
    if "dict" in tree:
        old = into if isinstance(into, dict) else {}
        return {k: unpack(v, tensors, old.get(k)) for k, v in tree["dict"].items()}
    raise IntegrityError(f"unknown entry in a training state: {sorted(tree)}")
