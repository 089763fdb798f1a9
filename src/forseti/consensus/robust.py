"""Composition (pre-aggregators then a rule) and construction from configs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import ConfigError
from ._tensors import as_matrix
from .base import Aggregator, Partial, PreAggregator, assemble, finite_split, parse_config
from .coordinate import CoordinateMedian, Mean, TrimmedMean
from .iterative import CenteredClipping, GeometricMedian
from .krum import Bulyan, Krum, MultiKrum
from .preaggregators import NNM, Bucketing, Clipping, OutlierFilter
from .result import AggResult

__all__ = ["Robust", "build", "default_rule", "RULES", "PRE_AGGREGATORS"]


class Robust(Aggregator):
    """Pre-aggregators applied in order, then a rule: ``Robust(pre=[NNM(f)], agg=TrimmedMean(f))``.

    Each part keeps its own ``f``; the stack's ``f`` is the rule's. Workers sending Inf/NaN are
    dropped before the first pre-aggregator and counted against every part's ``f``. ``scores``
    are the squared distances of the *original* vectors to the final aggregate; the rule's own
    selection (over the transformed vectors) is in ``meta["rule_selected"]``.
    """

    name = "robust"

    def __init__(self, pre: Sequence[PreAggregator] = (), agg: Aggregator | None = None) -> None:
        if agg is None or not isinstance(agg, Aggregator) or isinstance(agg, Robust):
            raise ConfigError(f"agg must be an aggregation rule (not a stack); got {agg!r}")
        pre = tuple(pre)
        for p in pre:
            if not isinstance(p, PreAggregator):
                raise ConfigError(f"pre must hold pre-aggregators (NNM, Clipping, ...); got {p!r}")
        super().__init__(agg.f)
        self.pre = pre
        self.agg = agg
        # the default stack's shape: its mixing is applied per chunk inside the sorting network
        self._fused_nnm = (
            len(pre) == 1
            and type(pre[0]) is NNM
            and type(agg) in (CoordinateMedian, TrimmedMean)
        )

    def parameters(self) -> dict[str, Any]:
        return {"pre": [p.config() for p in self.pre], "agg": self.agg.config()}

    @property
    def label(self) -> str:
        return "+".join([p.name for p in self.pre] + [self.agg.name])

    def __repr__(self) -> str:
        return f"Robust(pre={list(self.pre)!r}, agg={self.agg!r})"

    def check(self, n: int, f: int | None = None) -> None:
        m = n
        for p in self.pre:
            p.check(m)
            m = p.buckets(m) if isinstance(p, Bucketing) else m
        try:
            self.agg.check(m)
        except ConfigError as exc:
            if m == n:
                raise
            raise ConfigError(
                f"{self!r} is infeasible with n={n} workers: bucketing leaves {m} vectors for "
                f"the rule, and {exc}"
            ) from None

    def min_workers(self, f: int) -> int:
        """The fewest workers the stack accepts, each part at its own ``f`` (``f`` is ignored)."""
        for n in range(1, 100_000):
            try:
                self.check(n)
            except ConfigError:
                continue
            return n
        return 100_000  # pragma: no cover - no realistic stack needs more

    def __call__(self, vectors: Any) -> AggResult:
        x, layout = as_matrix(vectors)
        n = x.shape[0]
        self.check(n)
        finite, bad = finite_split(x)
        scores = None  # the original vectors' squared distances to the result (assemble's default)
        if self._fused_nnm:  # NNM then a coordinate-wise rule: mix chunk by chunk, no copy
            nnm = self.pre[0]
            assert isinstance(nnm, NNM) and isinstance(self.agg, CoordinateMedian | TrimmedMean)
            mix = nnm.mixing(finite, max(0, nnm.f - len(bad)))
            inner = self.agg._aggregate(finite, max(0, self.agg.f - len(bad)), mix)
            scores = inner.scores  # computed against the original rows, in the same pass
        else:
            y, dropped = self._pre(finite, len(bad))
            inner = self.agg._aggregate(y, max(0, self.agg.f - dropped))
        meta: dict[str, Any] = {"rule": self.agg.name, "rule_meta": inner.meta}
        if inner.selected is not None:
            meta["rule_selected"] = inner.selected
        part = Partial(inner.vector, scores=scores, meta=meta)
        return assemble(part, finite, n, bad, layout.split(inner.vector), max(0, self.f - len(bad)))

    def transform(self, x: torch.Tensor, dropped: int = 0) -> torch.Tensor:
        """The pre-aggregators applied to finite ``x`` (``dropped``: workers already removed)."""
        return self._pre(x, dropped)[0]

    def _pre(self, x: torch.Tensor, dropped: int) -> tuple[torch.Tensor, int]:
        for p in self.pre:
            before = x.shape[0]
            x = p.transform(x, max(0, p.f - dropped))
            if p.removes_rows:
                dropped += before - x.shape[0]
        return x, dropped

    def _aggregate(self, x: torch.Tensor, f: int) -> Partial:  # pragma: no cover - see __call__
        return self.agg._aggregate(self.transform(x), f)


RULES: dict[str, type[Aggregator]] = {
    cls.name: cls
    for cls in (
        Mean,
        CoordinateMedian,
        TrimmedMean,
        Krum,
        MultiKrum,
        GeometricMedian,
        Bulyan,
        CenteredClipping,
        Robust,
    )
}
PRE_AGGREGATORS: dict[str, type[PreAggregator]] = {
    cls.name: cls for cls in (NNM, Clipping, Bucketing, OutlierFilter)
}


def build(config: Mapping[str, Any] | str) -> Aggregator | PreAggregator:
    """A rule or pre-aggregator from ``{"name": ..., "parameters": {...}}`` (or just a name).

    Stacks nest: ``{"name": "robust", "parameters": {"pre": [{"name": "nnm", "parameters":
    {"f": 3}}], "agg": {"name": "trimmed_mean", "parameters": {"f": 3}}}}``. Every object's
    ``config()`` is accepted back. Unknown names and bad parameters raise ``ConfigError``.
    """

    cls, params = parse_config(config, "rule", {**RULES, **PRE_AGGREGATORS})
    if cls is Robust:
        pre = [build(p) for p in params.pop("pre", [])]
        agg = build(params.pop("agg", None) or {})
        if params:
            raise ConfigError(f"unexpected parameters for robust: {sorted(params)}")
        return Robust(pre=pre, agg=agg)  # type: ignore[arg-type]
    try:
        rule: Aggregator | PreAggregator = cls(**params)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for {cls.name!r}: {exc}") from None
    return rule


def default_rule(f: int) -> Robust:
    """The recommended stack: nearest-neighbour mixing then the trimmed mean, both at ``f``."""
    return Robust(pre=[NNM(f)], agg=TrimmedMean(f))

