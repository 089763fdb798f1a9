"""Attacks that tune their own scale against the rule they face (ByzFL's optimised attacks).

:class:`OptimalALIE` sends ``mean + s * std`` and :class:`OptimalIPM` sends ``-s * mean``, with the
scale ``s`` chosen by a line search that maximises the damage ``||F(X) - mean_H||``: the rule
``F`` (after the pre-aggregators) applied to the honest vectors plus the ``f`` Byzantine ones.
The search is ByzFL's ``Optimal_ALittleIsEnough`` / ``Optimal_InnerProductManipulation``, step
for step, so on the same inputs, rule and ``f`` both choose the same scale:

1. *expansion*: evaluate ``start``; then ``start + delta``, doubling ``delta`` after each
   improvement, until a proposal does no better (then ``delta *= ratio``);
2. *contraction*: with the evaluations left (``evals`` in all), propose ``best + delta``, keep it
   if it does better, and shrink ``delta *= ratio`` each time.

Like ByzFL, the search only moves forward from ``start`` (a negative ``delta`` searches the
other way). With ``jitter > 0`` the noise is drawn once, before the search, and the scale is
optimised against the jittered vectors actually sent. The chosen scale and damage are kept in
``last_scale`` / ``last_distance`` after each call.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from .attacks import Attack, _std
from .base import check_number, check_positive

__all__ = ["OptimalALIE", "OptimalIPM"]


def _rule(obj: Any, what: str) -> Callable[[Any], Any]:
    """A callable rule, or one built from its config (a mapping or a name)."""
    if isinstance(obj, Mapping | str):
        from .robust import build  # the rules import nothing from here: no cycle at call time

        return build(obj)
    if not callable(obj):
        raise ConfigError(f"{what} must be a callable or a rule config; got {obj!r}")
    return obj  # type: ignore[no-any-return]


def _describe(obj: Any) -> Any:
    config = getattr(obj, "config", None)
    if callable(config):
        return config()
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


class _LineSearch(Attack):
    """The shared line search; subclasses give the attack vector at a scale."""

    needs_aggregator: ClassVar[bool] = True

    def __init__(
        self,
        aggregator: Any,
        *,
        pre: Sequence[Any] = (),
        evals: int = 20,
        start: float = 0.0,
        delta: float = 10.0,
        ratio: float = 0.8,
        jitter: float = 0.0,
    ) -> None:
        super().__init__(jitter=jitter)
        self.aggregator = _rule(aggregator, "aggregator")
        if isinstance(pre, str | bytes | Mapping) or not isinstance(pre, Sequence):
            raise ConfigError(f"pre must be a sequence of pre-aggregators; got {pre!r}")
        self.pre = tuple(_rule(p, "each of pre") for p in pre)
        self.evals = check_positive(evals, "evals", integer=True)
        self.start = check_number(start, "start")
        self.delta = check_number(delta, "delta")
        if self.delta == 0:
            raise ConfigError("delta must be non-zero; got 0")
        self.ratio = check_number(ratio, "ratio")
        if not 0.5 < self.ratio < 1:
            raise ConfigError(f"ratio must lie in (0.5, 1), both excluded; got {ratio!r}")
        self.last_scale: float | None = None
        self.last_distance: float | None = None

    def at_scale(self, mean: torch.Tensor, std: torch.Tensor | None, scale: float) -> torch.Tensor:
        """The attack vector at ``scale``."""
        raise NotImplementedError

    def vector(self, x: torch.Tensor, f: int, generator: torch.Generator | None) -> torch.Tensor:
        return self._search(x, f, None)

    def rows(self, x: torch.Tensor, f: int, generator: torch.Generator | None) -> torch.Tensor:
        noise = self.noise(x, f, generator) if self.jitter > 0 else None
        out = self._search(x, f, noise).expand(f, -1).clone()
        return out if noise is None else out + noise

    def __call__(
        self, honest: Any, f: int, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The ``f`` Byzantine vectors at the best scale found (also in ``last_scale``)."""
        self.last_scale = self.last_distance = None
        return super().__call__(honest, f, generator=generator)

    def _search(self, x: torch.Tensor, f: int, noise: torch.Tensor | None) -> torch.Tensor:
        mean = torch.mean(x, dim=0)
        std = _std(x) if self.min_honest >= 2 else None

        def damage(scale: float) -> float:
            byz = self.at_scale(mean, std, scale).expand(f, -1)
            vectors = torch.cat((x, byz if noise is None else byz + noise), dim=0)
            # probe copies: a stateful rule (CenteredClipping, Bucketing's generator) must not
            # move with the 20-odd evaluations of the search
            for p in self.pre:
                vectors = copy.deepcopy(p)(vectors)
            out = copy.deepcopy(self.aggregator)(vectors)
            agg = torch.as_tensor(getattr(out, "vector", out))
            return float(torch.linalg.vector_norm(agg - mean).item())

        # Expansion: grow the step while it pays.
        best_x, best_y = self.start, damage(self.start)
        delta, left = self.delta, self.evals - 1
        while left > 0:
            prop_x = best_x + delta
            prop_y = damage(prop_x)
            left -= 1
            if prop_y > best_y:
                best_x, best_y = prop_x, prop_y
                delta *= 2
            else:
                delta *= self.ratio
                break
        # Contraction: probe ahead with a shrinking step.
        while left > 0:
            prop_x = best_x + delta
            prop_y = damage(prop_x)
            left -= 1
            if prop_y > best_y:
                best_x, best_y = prop_x, prop_y
            delta *= self.ratio
        self.last_scale, self.last_distance = best_x, best_y
        return self.at_scale(mean, std, best_x)

    def parameters(self) -> dict[str, Any]:
        return {
            "aggregator": _describe(self.aggregator),
            "pre": [_describe(p) for p in self.pre],
            "evals": self.evals,
            "start": self.start,
            "delta": self.delta,
            "ratio": self.ratio,
            **super().parameters(),
        }


class OptimalALIE(_LineSearch):
    """ALIE with a line-searched ``z`` (ByzFL's ``Optimal_ALittleIsEnough``): ``mean + z * std``
    maximising ``||F(X) - mean_H||`` for the rule ``aggregator`` after ``pre``.

    ``aggregator`` is any callable over the stacked ``(h + f, d)`` vectors returning a tensor or
    an object with ``.vector`` (an :class:`~forseti.consensus.AggResult`), or a rule config;
    ``pre`` callables (or configs) are applied first, in order. ``f`` comes from the call, as
    ByzFL's constructor ``f``. ``last_scale`` holds the ``z`` chosen. Needs 2 honest vectors.
    """

    name = "optimal_alie"
    min_honest = 2

    def at_scale(self, mean: torch.Tensor, std: torch.Tensor | None, scale: float) -> torch.Tensor:
        assert std is not None
        return torch.add(mean, torch.mul(std, scale))


class OptimalIPM(_LineSearch):
    """IPM with a line-searched ``eps`` (ByzFL's ``Optimal_InnerProductManipulation``):
    ``-eps * mean`` maximising ``||F(X) - mean_H||``. Arguments as :class:`OptimalALIE`;
    ``last_scale`` holds the ``eps`` chosen."""

    name = "optimal_ipm"

    def at_scale(self, mean: torch.Tensor, std: torch.Tensor | None, scale: float) -> torch.Tensor:
        return torch.mul(mean, -scale)
