"""forseti.consensus properties over random inputs (hypothesis).

* The coordinate-wise median and trimmed mean equal references built from ``torch.sort`` on
  inputs full of ties, duplicates and signed zeros, across column chunks; the sorting network
  equals ``torch.sort`` exactly.
* Inf/NaN never propagate: for every rule, pre-aggregator and stack, workers holding Inf or NaN
  are scored ``inf``, listed in ``meta["nonfinite"]``, given no weight, and the result equals the
  same rule built with ``f`` reduced by their number applied to the finite workers alone.
* Permuting the workers permutes the scores and leaves the aggregate alone; adding a vector to
  every input adds it to the aggregate of the translation-equivariant rules.
* No rule or pre-aggregator writes to its input, nor returns a view of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from consensus_cases import ALL_MAKERS, PRE_MAKERS, RANDOMISED, min_workers, sample
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import forseti
import forseti.consensus as C
from forseti.consensus import _sortnet

F64 = torch.float64
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# numerical comparisons under tolerances: the same examples every run
STABLE = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

ELEMENTS = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 1e6]),  # ties and duplicates
    st.floats(-1e6, 1e6, width=32),
)


@st.composite
def columns(draw: Any, max_n: int = 40, max_d: int = 50) -> np.ndarray:
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, max_d))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return draw(hnp.arrays(dtype, (n, d), elements=ELEMENTS))


# -- order statistics ------------------------------------------------------------------------------


@PROPS
@given(x=columns(), f_share=st.floats(0, 1), chunk=st.sampled_from([None, 1, 3, 7]))
def test_median_and_trimmed_mean_equal_sort_references(
    x: np.ndarray, f_share: float, chunk: int | None
) -> None:
    t = torch.from_numpy(x)
    n = t.shape[0]
    f = int(f_share * ((n - 1) // 2))  # feasible: 2f + 1 <= n
    s = torch.sort(t, dim=0).values
    lo, hi = (n - 1) // 2, n // 2
    want_median = s[lo] if lo == hi else (s[lo] + s[hi]) * 0.5
    want_trimmed = s[f : n - f].to(F64).mean(dim=0)
    with pytest.MonkeyPatch.context() as mp:
        if chunk is not None:
            mp.setattr(_sortnet, "NETWORK_CHUNK", chunk * n)
        median = C.CoordinateMedian(f)(t).vector
        trimmed = C.TrimmedMean(f)(t).vector
    assert median.dtype == t.dtype and trimmed.dtype == t.dtype
    assert torch.equal(median, want_median)  # a selection (or a midpoint): exact
    eps = torch.finfo(t.dtype).eps
    atol = 4 * eps * n * float(s[f : n - f].abs().max())
    torch.testing.assert_close(trimmed.to(F64), want_trimmed, rtol=0, atol=atol)
    # the median and the trimmed mean lie within the kept order statistics
    assert (trimmed.to(F64) >= s[f].to(F64) - atol).all()
    assert (trimmed.to(F64) <= s[n - f - 1].to(F64) + atol).all()


@PROPS
@given(x=columns(max_n=72, max_d=20), special=st.booleans())
def test_sorted_rows_equals_torch_sort(x: np.ndarray, special: bool) -> None:
    t = torch.from_numpy(x).clone()
    if special:  # infinities sort too (the rules never pass them, the network must not care)
        t[0, 0] = float("inf")
        t[-1, -1] = -float("inf")
    rows = _sortnet.sorted_rows(t)
    assert len(rows) == t.shape[0]
    assert torch.equal(torch.stack(rows), torch.sort(t, dim=0).values)


# -- Inf/NaN isolation ----------------------------------------------------------------------------

BAD_KINDS = ["nan", "inf", "-inf", "inf-inf", "one nan", "one inf"]


def poison(x: torch.Tensor, rows: list[int], kinds: list[str]) -> torch.Tensor:
    x = x.clone()
    for row, kind in zip(rows, kinds, strict=True):
        if kind == "nan":
            x[row] = float("nan")
        elif kind == "inf":
            x[row] = float("inf")
        elif kind == "-inf":
            x[row] = -float("inf")
        elif kind == "inf-inf":  # sums to NaN
            x[row, 0] = float("inf")
            x[row, -1] = -float("inf")
        elif kind == "one nan":
            x[row, x.shape[1] // 2] = float("nan")
        else:
            x[row, -1] = float("inf")
    return x


@st.composite
def poisoned(draw: Any, makers: dict[str, Any]) -> tuple[str, int, torch.Tensor, list[int]]:
    name = draw(st.sampled_from(sorted(makers)))
    f = draw(st.integers(0, 3))
    n = max(min_workers(makers[name], f) + draw(st.integers(0, 4)), 2)
    d = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**20))
    # at least one finite worker; two for bucketing (see test_one_finite_worker_left)
    most = n - 2 if "bucketing" in name else n - 1
    if most < 1:
        n, most = n + 1, 1
    bad = sorted(draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=most)))
    kinds = draw(st.lists(st.sampled_from(BAD_KINDS), min_size=len(bad), max_size=len(bad)))
    dtype = draw(st.sampled_from([torch.float32, F64]))
    x = sample(seed, n, d, shift=draw(st.sampled_from([0.0, 3.0])), outliers=min(f, n), dtype=dtype)
    return name, f, poison(x, bad, kinds), bad


@PROPS
@given(case=poisoned(ALL_MAKERS))
def test_inf_and_nan_never_propagate(case: tuple[str, int, torch.Tensor, list[int]]) -> None:
    name, f, x, bad = case
    n = x.shape[0]
    keep = [i for i in range(n) if i not in bad]
    result = ALL_MAKERS[name](f)(x)

    assert torch.isfinite(result.vector).all()
    assert result.meta["nonfinite"] == tuple(bad)
    f_eff = max(0, f - len(bad))
    assert result.meta["f_effective"] == f_eff
    assert torch.isinf(result.scores[bad]).all() and (result.scores[bad] > 0).all()
    assert torch.isfinite(result.scores[keep]).all()
    assert (result.weights[bad] == 0).all()
    assert float(result.weights.sum()) == pytest.approx(1.0)
    assert set(result.selected) <= set(keep) and result.selected

    # the same rule with f reduced by the number dropped, on the finite workers alone
    reference = ALL_MAKERS[name](f_eff)
    try:
        reference.check(len(keep))
    except forseti.ConfigError:
        # only possible when more workers than f sent Inf/NaN: the rule still answers
        assert len(bad) > f
        return
    want = reference(x[keep])
    torch.testing.assert_close(result.vector, want.vector, rtol=1e-6, atol=1e-6)
    assert result.selected == tuple(keep[i] for i in want.selected)
    torch.testing.assert_close(result.scores[keep], want.scores, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(result.weights[keep], want.weights)


@PROPS
@given(case=poisoned(PRE_MAKERS))
def test_pre_aggregators_drop_inf_and_nan(case: tuple[str, int, torch.Tensor, list[int]]) -> None:
    name, f, x, bad = case
    keep = [i for i in range(x.shape[0]) if i not in bad]
    out = PRE_MAKERS[name](f)(x)
    assert torch.isfinite(out).all()
    reference = PRE_MAKERS[name](max(0, f - len(bad)))
    torch.testing.assert_close(out, reference(x[keep]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(ALL_MAKERS))
def test_more_non_finite_workers_than_f(name: str) -> None:
    """f = 1 declared, 3 workers send NaN/Inf: the rest are aggregated with f = 0."""
    make = ALL_MAKERS[name]
    n = max(min_workers(make, 1), 7)
    x = poison(sample(1, n, 4), [0, 2, n - 1], ["nan", "inf", "inf-inf"])
    result = make(1)(x)
    assert torch.isfinite(result.vector).all()
    assert result.meta["nonfinite"] == (0, 2, n - 1) and result.meta["f_effective"] == 0
    assert torch.isinf(result.scores[[0, 2, n - 1]]).all()


@pytest.mark.parametrize(
    "name",
    sorted(ALL_MAKERS),
)
def test_one_finite_worker_left(name: str) -> None:
    make = ALL_MAKERS[name]
    n = max(min_workers(make, 0), 3)
    x = sample(2, n, 3)
    x[1:] = float("nan")
    result = make(0)(x)
    assert result.meta["nonfinite"] == tuple(range(1, n))
    assert result.selected == (0,)
    if "centered_clipping" not in name and not name.startswith("clipping+"):
        torch.testing.assert_close(result.vector, x[0])  # the only vector there is
    assert torch.isfinite(result.vector).all()


# -- equivariance -----------------------------------------------------------------------------------

DETERMINISTIC = sorted(set(ALL_MAKERS) - RANDOMISED)
TRANSLATION_EQUIVARIANT = [
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "multi_krum_m2",
    "bulyan",
    "default_rule",
    "nnm+krum",
    "nnm+median",
    "nnm+bulyan",
    "geometric_median",
    "geometric_median_mean",
    "no_pre+median",
]


def generic_tie(name: str, n: int, f: int) -> bool:
    """Whether the rule's selection meets a tie on almost every input, so that it depends on
    the workers' order: Krum with one neighbour (n = 3, f = 0), whose two mutually nearest
    vectors score the same; Bulyan with f = 1 or 2, whose last Krum round (2f + 1 vectors left)
    uses one neighbour (see test_bulyan_is_permutation_invariant); and the same tie between
    groups of identical vectors that NNM makes."""
    selects = "krum" in name or "bulyan" in name
    return (
        ("krum" in name and n - f - 2 <= 1)
        or ("bulyan" in name and f in (1, 2))
        # NNM turns workers with the same neighbours into identical copies: two mutually
        # nearest groups of copies then tie the same way
        or (selects and name.startswith("nnm+") and f > 0)
    )


@STABLE
@given(
    name=st.sampled_from(DETERMINISTIC),
    f=st.integers(0, 2),
    extra=st.integers(0, 4),
    d=st.integers(1, 8),
    seed=st.integers(0, 2**20),
    data=st.data(),
)
def test_permuting_workers_permutes_scores_only(
    name: str, f: int, extra: int, d: int, seed: int, data: Any
) -> None:
    make = ALL_MAKERS[name]
    n = min_workers(make, f) + extra
    assume(not generic_tie(name, n, f))
    x = sample(seed, n, d, shift=1.0, outliers=f)
    perm = data.draw(st.permutations(range(n)))
    first, second = make(f)(x), make(f)(x[list(perm)])
    torch.testing.assert_close(second.vector, first.vector, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second.scores, first.scores[list(perm)], rtol=1e-4, atol=1e-5)
    assert {perm[i] for i in second.selected} == set(first.selected)
    torch.testing.assert_close(second.weights, first.weights[list(perm)])


@STABLE
@given(
    name=st.sampled_from(TRANSLATION_EQUIVARIANT),
    f=st.integers(0, 2),
    extra=st.integers(0, 4),
    d=st.integers(1, 8),
    seed=st.integers(0, 2**20),
    size=st.sampled_from([0.1, 3.0, 20.0]),
)
def test_translating_inputs_translates_the_aggregate(
    name: str, f: int, extra: int, d: int, seed: int, size: float
) -> None:
    make = ALL_MAKERS[name]
    n = min_workers(make, f) + extra
    x = sample(seed, n, d, outliers=f, dtype=F64)
    shift = size * torch.randn(d, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    first, second = make(f)(x), make(f)(x + shift)
    tol = 1e-6 * (1 + size) * (1 + float(x.abs().max()))
    torch.testing.assert_close(second.vector, first.vector + shift, rtol=0, atol=tol)
    assert second.selected == first.selected
    torch.testing.assert_close(second.scores, first.scores, rtol=1e-5, atol=tol)


@pytest.mark.parametrize("f", [1, 2])
def test_bulyan_is_permutation_invariant(f: int) -> None:
    """Bulyan with f = 1 or 2: the last round sees 2f + 1 vectors and scores with
    max(1, 2f + 1 - f - 2) = 1 neighbour; the reversed order changes the output for about
    19 inputs in 20."""
    x = sample(0, 4 * f + 3, 5, dtype=F64)
    torch.testing.assert_close(C.Bulyan(f)(x.flip(0)).vector, C.Bulyan(f)(x).vector)


def test_krum_with_one_neighbour_is_permutation_invariant() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]], dtype=F64)
    assert torch.equal(C.Krum(0)(x.flip(0)).vector, C.Krum(0)(x).vector)


@pytest.mark.parametrize("name", sorted(RANDOMISED))
def test_randomised_stacks_are_reproducible_by_seed(name: str) -> None:
    make = ALL_MAKERS[name]
    n = max(min_workers(make, 1), 9)
    x = sample(3, n, 4, outliers=1)
    assert torch.equal(make(1)(x).vector, make(1)(x).vector)


# -- inputs are never written to ---------------------------------------------------------------------


def as_form(x: torch.Tensor, form: str) -> Any:
    if form == "tensor":
        return x
    if form == "numpy":
        return x.numpy()  # shares memory with x
    if form == "rows":
        return list(x.unbind(0))  # views of x
    return [x[:, :3].reshape(x.shape[0], 3, 1), x[:, 3:]]  # per-layer views


@pytest.mark.parametrize("form", ["tensor", "numpy", "rows", "layers"])
@pytest.mark.parametrize("poisoned_row", [False, True], ids=["finite", "nan-row"])
@pytest.mark.parametrize("name", sorted(ALL_MAKERS) + [f"pre:{p}" for p in sorted(PRE_MAKERS)])
def test_inputs_are_not_mutated(name: str, poisoned_row: bool, form: str) -> None:
    f = 1
    if name.startswith("pre:"):
        make: Any = PRE_MAKERS[name[4:]]
    else:
        make = ALL_MAKERS[name]
    n = max(min_workers(make, f), 6)
    x = sample(11, n, 5, shift=2.0, outliers=f)
    if poisoned_row:
        x[1, 2] = float("nan")
    before = x.clone()
    rule = make(f)
    out = rule(as_form(x, form))
    torch.testing.assert_close(x, before, rtol=0, atol=0, equal_nan=True)
    produced = out if isinstance(out, torch.Tensor) else out.vector
    center = getattr(rule, "center", None)
    center_before = None if center is None else center.clone()
    produced.add_(1000.0)  # the result is no view of the input (nor of the rule's state)
    torch.testing.assert_close(x, before, rtol=0, atol=0, equal_nan=True)
    if center is not None:
        assert torch.equal(rule.center, center_before)
