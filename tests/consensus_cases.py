"""Shared material of the forseti.consensus tests: sample data and the catalogue of every rule,
pre-aggregator and stack, each built from the number ``f`` it tolerates (so that a test can build
the same object with a smaller ``f``, which is what dropping Inf/NaN workers must amount to)."""

from __future__ import annotations

from collections.abc import Callable

import torch

import forseti.consensus as C

Maker = Callable[[int], C.Aggregator]
PreMaker = Callable[[int], C.PreAggregator]


def sample(
    seed: int,
    n: int,
    d: int,
    *,
    shift: float = 0.0,
    scale: float = 1.0,
    outliers: int = 0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` vectors ``shift + scale * N(0, I_d)`` (float64 draws, then cast); the first
    ``outliers`` rows are ten times as spread out."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:outliers] *= 10.0
    return (shift + scale * x).to(dtype)


# Every rule, each as a function of f. Mean takes f and ignores it.
RULE_MAKERS: dict[str, Maker] = {
    "mean": lambda f: C.Mean(f),
    "median": lambda f: C.CoordinateMedian(f),
    "trimmed_mean": lambda f: C.TrimmedMean(f),
    "krum": lambda f: C.Krum(f),
    "multi_krum": lambda f: C.MultiKrum(f),
    "multi_krum_m2": lambda f: C.MultiKrum(f, m=2),
    "bulyan": lambda f: C.Bulyan(f),
    "geometric_median": lambda f: C.GeometricMedian(f),
    "geometric_median_zeros": lambda f: C.GeometricMedian(
        f, nu=0.1, max_iter=5, tol=0.0, init="zeros"
    ),
    "geometric_median_mean": lambda f: C.GeometricMedian(f, init="mean", max_iter=20),
    "centered_clipping": lambda f: C.CenteredClipping(f, tau=1.0, iterations=3),
    "centered_clipping_adaptive": lambda f: C.CenteredClipping(f),
    "default_rule": lambda f: C.default_rule(f),
}

PRE_MAKERS: dict[str, PreMaker] = {
    "nnm": lambda f: C.NNM(f),
    "clipping": lambda f: C.Clipping(1.5),
    "arc": lambda f: C.Clipping("adaptive", f=f),
    "bucketing": lambda f: C.Bucketing(2, seed=7),
    "outlier_filter": lambda f: C.OutlierFilter(f),
}

# The rules a stack ends with (every rule but the stack itself and the iterative ones' variants).
STACK_AGGS = [
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "bulyan",
    "geometric_median",
    "centered_clipping",
]


def _stack(pres: tuple[str, ...], agg: str) -> Maker:
    return lambda f: C.Robust(pre=[PRE_MAKERS[p](f) for p in pres], agg=RULE_MAKERS[agg](f))


STACK_MAKERS: dict[str, Maker] = {
    f"{p}+{a}": _stack((p,), a) for p in PRE_MAKERS for a in STACK_AGGS
}
STACK_MAKERS["arc+nnm+trimmed_mean"] = _stack(("arc", "nnm"), "trimmed_mean")
STACK_MAKERS["bucketing+nnm+krum"] = _stack(("bucketing", "nnm"), "krum")
STACK_MAKERS["no_pre+median"] = lambda f: C.Robust(pre=[], agg=C.CoordinateMedian(f))

ALL_MAKERS: dict[str, Maker] = {**RULE_MAKERS, **STACK_MAKERS}

# Rules whose output is a deterministic function of the multiset of vectors.
RANDOMISED = {name for name in ALL_MAKERS if "bucketing" in name}


def min_workers(make: Maker | PreMaker, f: int) -> int:
    """The fewest workers ``make(f)`` accepts."""
    rule = make(f)
    return rule.min_workers(f)
