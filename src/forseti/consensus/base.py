"""The contract every robust rule follows: input checks, feasibility, Inf/NaN isolation, results.

A rule implements :meth:`Aggregator._aggregate` over finite rows with an effective ``f``; the
base class does everything else the same way for all of them:

* the input may be an ``(n, d)`` tensor or array, a list of vectors, or per-layer tensors;
* ``n`` is checked against the *declared* ``f`` (``ConfigError`` naming the largest feasible f);
* workers whose vector holds Inf or NaN are dropped before the rule sees anything (they can
  never propagate), scored ``inf``, and counted against ``f``: with ``b`` such workers the rule
  runs on ``n - b`` rows with ``f - b`` (at least 0), which keeps every feasibility condition;
* scores default to the squared distance of each worker to the aggregate.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..errors import ConfigError, ValidationError
from ._tensors import as_matrix
from .distances import sq_distances_to
from .result import AggResult

__all__ = [
    "Aggregator",
    "PreAggregator",
    "Partial",
    "check_f",
    "check_number",
    "check_positive",
    "finite_split",
    "parse_config",
]


def check_f(f: Any, what: str = "f") -> int:
    """``f`` as a non-negative int (bools refused)."""
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ConfigError(f"{what} must be a non-negative integer; got {f!r}")
    return f


def check_positive(value: Any, what: str, *, integer: bool = False) -> Any:
    """A positive number (an int when ``integer``); bools refused."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{what} must be {kind}; got {value!r}")
    if not integer and value == float("inf"):
        raise ConfigError(f"{what} must be finite; got {value!r}")
    return value


def check_number(
    value: Any,
    what: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_below: bool = False,
    open_above: bool = False,
) -> float:
    """A finite real number (bools refused) within the given bounds, as a float.

    ``minimum``/``maximum`` are inclusive unless ``open_below``/``open_above``; the error names
    the interval, e.g. ``decay must be in (0, 1]``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number; got {value!r}")
    low_ok = minimum is None or (value > minimum if open_below else value >= minimum)
    high_ok = maximum is None or (value < maximum if open_above else value <= maximum)
    if not (low_ok and high_ok):
        if minimum is not None and maximum is not None:
            left, right = "(" if open_below else "[", ")" if open_above else "]"
            bounds = f"in {left}{minimum:g}, {maximum:g}{right}"
        elif minimum is not None:
            bounds = f"{'>' if open_below else '>='} {minimum:g}"
        else:
            bounds = f"{'<' if open_above else '<='} {maximum:g}"
        raise ConfigError(f"{what} must be {bounds}; got {value!r}")
    return float(value)


def parse_config(
    config: Any, what: str, table: Mapping[str, type[Any]]
) -> tuple[type[Any], dict[str, Any]]:
    """The class and the parameters named by ``{"name": ..., "parameters": {...}}`` (or a bare
    name; class names work too), looked up in ``table``; ``ConfigError`` on anything else."""
    if isinstance(config, str):
        config = {"name": config}
    if not isinstance(config, Mapping):
        raise ConfigError(f"a {what} config must be a mapping or a name; got {config!r}")
    extra = set(config) - {"name", "parameters"}
    if extra:
        raise ConfigError(f"unexpected keys in a {what} config: {sorted(extra)}")
    name = config.get("name")
    by_class = {cls.__name__: cls for cls in table.values()}
    cls = (table.get(name) or by_class.get(name)) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(
            f"unknown {what} {name!r}; known: {', '.join(sorted(table))} (or their class names)"
        )
    params = config.get("parameters") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"'parameters' must be a mapping; got {params!r}")
    return cls, dict(params)


def finite_split(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The rows of ``x`` without Inf/NaN, and the indices of those dropped.

    A row sum is a cheap test (one read of ``x``): a non-finite row always sums to Inf/NaN; the
    rare finite row whose sum overflows is then checked element-wise and kept.
    """

    sums = x.sum(dim=1)
    suspect = (~torch.isfinite(sums)).nonzero().flatten().tolist()
    bad = [i for i in suspect if not bool(torch.isfinite(x[i]).all())]
    if not bad:
        return x, []
    keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    keep[bad] = False
    if not bool(keep.any()):
        raise ValidationError("every worker's vector holds Inf or NaN: nothing to aggregate")
    return x[keep], bad


@dataclass
class Partial:
    """What a rule computes over the finite rows (indices local to them)."""

    vector: torch.Tensor
    selected: tuple[int, ...] | None = None  # None: every row
    scores: torch.Tensor | None = None  # None: squared distance to the vector
    weights: torch.Tensor | None = None  # None: uniform over ``selected``
    meta: dict[str, Any] = field(default_factory=dict)


class _Rule:
    """What rules and pre-aggregators share: a declared ``f``, a feasibility check, and a config
    (``{"name", "parameters"}``) that rebuilds them."""

    name: ClassVar[str] = ""

    def __init__(self, f: int = 0) -> None:
        self.f = check_f(f)

    def min_workers(self, f: int) -> int:
        """The fewest workers accepted when tolerating ``f``."""
        return 2 * f + 1

    def check(self, n: int, f: int | None = None) -> None:
        """Raise ``ConfigError`` unless ``n`` workers are enough for ``f`` (default: ``self.f``)."""
        f = self.f if f is None else f
        need = self.min_workers(f)
        if n < need:
            most = max((g for g in range(n + 1) if self.min_workers(g) <= n), default=None)
            hint = (
                f"at most f={most} with n={n}" if most is not None else f"n={n} is too few for any f"
            )
            raise ConfigError(
                f"{type(self).__name__} needs n >= {need} workers to tolerate f={f}; got n={n} "
                f"({hint})"
            )

    @property
    def label(self) -> str:
        """A short human name (``"nnm+trimmed_mean"`` for a stack)."""
        return self.name

    def parameters(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this object."""
        return {}

    def config(self) -> dict[str, Any]:
        """``{"name": ..., "parameters": {...}}``, accepted by :func:`forseti.consensus.build`."""
        return {"name": self.name, "parameters": self.parameters()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.parameters().items())
        return f"{type(self).__name__}({args})"


class Aggregator(_Rule, ABC):
    """A robust aggregation rule: ``rule(vectors) -> AggResult``.

    ``f`` is the number of Byzantine workers the rule is configured to tolerate; the real number
    may be smaller (or, for evaluation, larger).
    """

    def __call__(self, vectors: Any) -> AggResult:
        x, layout = as_matrix(vectors)
        n = x.shape[0]
        self.check(n)
        finite, bad = finite_split(x)
        f_eff = max(0, self.f - len(bad))
        part = self._aggregate(finite, f_eff)
        return assemble(part, finite, n, bad, layout.split(part.vector), f_eff)

    @abstractmethod
    def _aggregate(self, x: torch.Tensor, f: int) -> Partial:
        """The rule over finite rows ``x`` tolerating ``f``; ``x.shape[0] >= min_workers(f)``."""


def assemble(
    part: Partial,
    finite: torch.Tensor,
    n: int,
    bad: list[int],
    layers: tuple[torch.Tensor, ...] | None,
    f_eff: int,
) -> AggResult:
    """Map a rule's result over the finite rows back to all ``n`` workers."""
    m = finite.shape[0]
    local_sel = tuple(range(m)) if part.selected is None else part.selected
    scores_local = part.scores if part.scores is not None else sq_distances_to(finite, part.vector)
    scores_local = scores_local.detach().to(device="cpu", dtype=torch.float64)
    if part.weights is not None:
        weights_local = part.weights.detach().to(device="cpu", dtype=torch.float64)
    else:
        weights_local = torch.zeros(m, dtype=torch.float64)
        weights_local[list(local_sel)] = 1.0 / len(local_sel)
    meta = dict(part.meta)
    meta["nonfinite"] = tuple(bad)
    meta["f_effective"] = f_eff
    if not bad:  # every worker was finite: local indices are worker indices
        return AggResult(part.vector, local_sel, scores_local, weights_local, meta, layers)
    index = [i for i in range(n) if i not in set(bad)]
    scores = torch.full((n,), float("inf"), dtype=torch.float64)
    weights = torch.zeros(n, dtype=torch.float64)
    scores[index] = scores_local
    weights[index] = weights_local
    return AggResult(
        vector=part.vector,
        selected=tuple(index[i] for i in local_sel),
        scores=scores,
        weights=weights,
        meta=meta,
        layers=layers,
    )


class PreAggregator(_Rule, ABC):
    """A transform applied before a rule: ``pre(vectors) -> (m, d) tensor`` (NNM, clipping,
    bucketing). In a :class:`~forseti.consensus.Robust` stack it sees finite rows only."""

    #: whether it drops vectors (then the parts after it tolerate that many fewer)
    removes_rows: ClassVar[bool] = False

    def __call__(self, vectors: Any) -> torch.Tensor:
        x, _ = as_matrix(vectors)
        self.check(x.shape[0])
        finite, bad = finite_split(x)
        return self.transform(finite, max(0, self.f - len(bad)))

    @abstractmethod
    def transform(self, x: torch.Tensor, f: int) -> torch.Tensor:
        """The transformed rows of finite ``x`` (shape ``(m, d)``)."""
