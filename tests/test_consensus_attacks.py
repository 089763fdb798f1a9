"""The simulated Byzantine attacks: parity with ByzFL, closed forms, jitter, configs, bad input."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from byzfl_ref import aggregators as bza
from byzfl_ref import attacks as bz
from byzfl_ref import preaggregators as bzp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.stats import norm
from torch.testing import assert_close

from forseti.consensus import Clipping, TrimmedMean
from forseti.consensus.attacks import (
    ALIE,
    ATTACKS,
    IPM,
    Attack,
    Gaussian,
    InfNaN,
    LabelFlip,
    Mimic,
    SignFlip,
    alie_z_max,
    build_attack,
    flip_labels,
)
from forseti.consensus.attacks_optimal import OptimalALIE, OptimalIPM
from forseti.errors import ConfigError, ValidationError

SHAPES = [(2, 1), (5, 7), (12, 33), (31, 100)]
SEEDS = [0, 1, 2]


def honest(seed: int, h: int, d: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    offset = torch.randn(d, generator=g) * 3
    return (offset + torch.randn(h, d, generator=g) * (1 + seed)).to(dtype)


def exact(ours: torch.Tensor, ref: Any, f: int) -> None:
    """``ours`` is ``f`` copies of ByzFL's one vector, bit for bit."""
    ref = torch.as_tensor(ref)
    assert ours.shape == (f, ref.shape[0])
    for row in ours:
        assert_close(row, ref, rtol=0, atol=0, check_dtype=False, equal_nan=True)


# ---------------------------------------------------------------- parity with ByzFL


SIMPLE = [
    (lambda: SignFlip(), lambda: bz.SignFlipping()),
    (lambda: IPM(0.1), lambda: bz.InnerProductManipulation(0.1)),
    (lambda: IPM(10), lambda: bz.InnerProductManipulation(10.0)),
    (lambda: ALIE(z=1.5), lambda: bz.ALittleIsEnough(1.5)),
    (lambda: ALIE(z=-0.7), lambda: bz.ALittleIsEnough(-0.7)),
    (lambda: Mimic(0), lambda: bz.Mimic(0)),
    (lambda: Mimic(1), lambda: bz.Mimic(1)),
    (lambda: InfNaN(), lambda: bz.Inf()),
    (lambda: LabelFlip(), lambda: bz.LabelFlipping()),
]


@pytest.mark.parametrize("pair", SIMPLE, ids=lambda p: repr(p[0]()))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_simple_attacks_match_byzfl(pair: Any, shape: tuple[int, int], seed: int) -> None:
    ours, ref = pair[0](), pair[1]()
    x = honest(seed, *shape)
    f = 1 + seed
    exact(ours(x, f), ref(x), f)
    # a list of vectors is the same input
    exact(ours(list(x), f), ref(list(x)), f)


@pytest.mark.parametrize("pair", SIMPLE[:5], ids=lambda p: repr(p[0]()))
def test_numpy_float64_input_matches_byzfl(pair: Any) -> None:
    """ByzFL computes numpy input in numpy (float64); ours in torch, to rounding."""
    x = honest(3, 9, 20, torch.float64).numpy()
    out = pair[0]()(x, 2)
    assert out.dtype == torch.float64
    for row in out:
        assert_close(row, torch.as_tensor(pair[1]()(x)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mu,sigma", [(0.0, 1.0), (2.5, 200.0), (-1.0, 0.0)])
def test_gaussian_matches_byzfl_with_the_same_seed(seed: int, mu: float, sigma: float) -> None:
    """ByzFL draws ``torch.randn(d)`` from the global RNG; a CPU generator seeded the same gives
    the same draws (float32)."""
    x = honest(seed, 6, 50)
    torch.manual_seed(seed)
    ref = bz.Gaussian(mu=mu, sigma=sigma)(x)
    ours = Gaussian(mu=mu, sigma=sigma)(x, 3, generator=torch.Generator().manual_seed(seed))
    exact(ours, ref, 3)
    torch.manual_seed(seed)  # no generator: the global RNG, as ByzFL
    exact(Gaussian(mu=mu, sigma=sigma)(x, 2), ref, 2)


def _byzfl_aggs(f: int) -> list[tuple[str, Any]]:
    return [("average", bza.Average()), ("trmean", bza.TrMean(f)), ("median", bza.Median())]


@pytest.mark.parametrize("kind", ["alie", "ipm"])
@pytest.mark.parametrize("agg_index", [0, 1, 2])
@pytest.mark.parametrize("with_clipping", [True, False])
@pytest.mark.parametrize("seed,h,d,f", [(0, 7, 10, 2), (1, 12, 40, 3), (2, 20, 25, 6)])
def test_optimal_attacks_match_byzfl(
    kind: str, agg_index: int, with_clipping: bool, seed: int, h: int, d: int, f: int
) -> None:
    x = honest(seed, h, d) / (4 + seed)  # norms around the clipping threshold 2.0
    name, agg = _byzfl_aggs(f)[agg_index]
    pre = [bzp.Clipping()] if with_clipping else []
    ref_cls = bz.Optimal_ALittleIsEnough if kind == "alie" else bz.Optimal_InnerProductManipulation
    ref = ref_cls(agg, pre_agg_list=pre, f=f)(x)
    ours_cls = OptimalALIE if kind == "alie" else OptimalIPM
    attack = ours_cls(agg, pre=pre)
    out = attack(x, f)
    exact(out, ref, f)
    assert attack.last_scale is not None and attack.last_distance is not None
    # the chosen scale reproduces the vector through the plain attack
    plain = bz.ALittleIsEnough(attack.last_scale) if kind == "alie" else None
    if plain is None:
        plain = bz.InnerProductManipulation(float(attack.last_scale))
    exact(out, plain(x), f)


@pytest.mark.parametrize("kind", ["alie", "ipm"])
@pytest.mark.parametrize(
    "search",
    [
        dict(evals=5),
        dict(start=1.0, delta=-2.0),
        dict(ratio=0.6, evals=40, delta=0.5),
        dict(delta=0.3, ratio=0.9, evals=30),  # improvements found while contracting
    ],
)
@pytest.mark.parametrize("median", [False, True])
@pytest.mark.parametrize("with_clipping", [True, False])
def test_optimal_search_parameters_match_byzfl(
    kind: str, search: dict[str, Any], median: bool, with_clipping: bool
) -> None:
    x, f = honest(4, 10, 30) / 5, 3
    agg = bza.Median() if median else bza.TrMean(f)
    pre = [bzp.Clipping()] if with_clipping else []
    byz = {k: float(v) if k != "evals" else v for k, v in search.items()}
    ref_cls = bz.Optimal_ALittleIsEnough if kind == "alie" else bz.Optimal_InnerProductManipulation
    ref = ref_cls(agg, pre_agg_list=pre, f=f, **byz)(x)
    ours_cls = OptimalALIE if kind == "alie" else OptimalIPM
    exact(ours_cls(agg, pre=pre, **search)(x, f), ref, f)


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize(
    "n,f,s", [(50, 12, 14), (25, 5, 8), (16, 3, 6), (10, 4, 2), (3, 1, 1), (2, 1, 1)]
)
def test_alie_z_max_by_hand(n: int, f: int, s: int) -> None:
    assert math.floor(n / 2 + 1) - f == s
    assert alie_z_max(n, f) == pytest.approx(norm.ppf((n - s) / n), abs=1e-12)


def test_alie_default_z_is_z_max_of_h_plus_f() -> None:
    x = honest(0, 38, 17, torch.float64)
    z = norm.ppf(36 / 50)  # n = 50, f = 12: s = 14
    expected = x.mean(0) + z * x.std(0)
    for row in ALIE()(x, 12):
        assert_close(row, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,f", [(10, 6), (4, 3), (1, 1), (20, 0)])
def test_alie_z_max_infeasible(n: int, f: int) -> None:
    with pytest.raises(ValidationError, match="z_max"):
        alie_z_max(n, f)


def test_alie_z_max_needs_an_honest_majority() -> None:
    with pytest.raises(ValidationError, match="z_max"):
        ALIE()(honest(0, 4, 3), 6)


def test_sign_flip_ipm_mimic_label_flip_closed_forms() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    assert SignFlip()(x, 1).tolist() == [[-4.0, -5.0, -6.0]]
    assert IPM(2.0)(x, 2).tolist() == [[-8.0, -10.0, -12.0]] * 2
    assert Mimic(2)(x, 1).tolist() == [[7.0, 8.0, 9.0]]
    assert LabelFlip()(x, 1).tolist() == [[4.0, 5.0, 6.0]]
    assert ALIE(z=1.0)(x, 1).tolist() == [[7.0, 8.0, 9.0]]  # std is 3 everywhere


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_inf_nan_values(value: str) -> None:
    out = InfNaN(value)(honest(0, 1, 4, torch.float64), 3)
    assert out.shape == (3, 4) and out.dtype == torch.float64
    expected = torch.full((3, 4), float(value), dtype=torch.float64)
    assert_close(out, expected, equal_nan=True)


def test_flip_labels() -> None:
    y = torch.tensor([0, 1, 2, 9, 5])
    assert flip_labels(y, 10).tolist() == [9, 8, 7, 0, 4]
    assert flip_labels(flip_labels(y, 10), 10).tolist() == y.tolist()
    assert LabelFlip(num_classes=3).flip(torch.tensor([0, 1, 2])).tolist() == [2, 1, 0]
    assert flip_labels(torch.tensor([], dtype=torch.long), 4).shape == (0,)


# ---------------------------------------------------------------- copies, jitter, f = 0


def _every_attack(jitter: float = 0.0) -> list[Attack]:
    rule = TrimmedMean(2)
    return [
        SignFlip(jitter=jitter),
        IPM(0.5, jitter=jitter),
        ALIE(jitter=jitter),
        ALIE(z=1.5, jitter=jitter),
        Gaussian(sigma=3.0, jitter=jitter),
        Mimic(1, jitter=jitter),
        LabelFlip(jitter=jitter),
        OptimalALIE(rule, jitter=jitter),
        OptimalIPM(rule, pre=[Clipping()], jitter=jitter),
    ]


@pytest.mark.parametrize("attack", _every_attack(), ids=repr)
def test_identical_copies_by_default(attack: Attack) -> None:
    out = attack(honest(1, 8, 12, torch.float64), 4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 12) and out.dtype == torch.float64
    assert all(torch.equal(row, out[0]) for row in out)


@pytest.mark.parametrize("attack", _every_attack() + [InfNaN()], ids=repr)
def test_f_zero_is_empty(attack: Attack) -> None:
    out = attack(honest(0, 5, 7, torch.float64), 0)
    assert out.shape == (0, 7) and out.dtype == torch.float64


@pytest.mark.parametrize("attack", _every_attack(jitter=0.5), ids=repr)
def test_jittered_copies_are_distinct_and_reproducible(attack: Attack) -> None:
    x = honest(2, 9, 15)
    out = attack(x, 4, generator=torch.Generator().manual_seed(7))
    assert len({tuple(r.tolist()) for r in out}) == 4
    assert torch.equal(out, attack(x, 4, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(out, attack(x, 4, generator=torch.Generator().manual_seed(8)))


@pytest.mark.parametrize("jitter", [0.1, 2.0])
def test_jitter_spread_is_jitter_times_honest_std(jitter: float) -> None:
    x = honest(3, 10, 40, torch.float64) * torch.linspace(0.1, 10, 40, dtype=torch.float64)
    f = 500
    out = IPM(1.0, jitter=jitter)(x, f, generator=torch.Generator().manual_seed(1))
    z = (out - (-x.mean(0))) / (jitter * x.std(0))  # standard normal if the spread is right
    assert abs(float(z.mean())) < 0.02
    assert float(z.std()) == pytest.approx(1.0, abs=0.02)
    per_coord = z.std(dim=0)
    assert float(per_coord.min()) > 0.85 and float(per_coord.max()) < 1.15


def test_inf_nan_ignores_jitter() -> None:
    out = InfNaN("nan", jitter=1.0)(honest(0, 1, 3), 2)
    assert bool(out.isnan().all())


def test_optimal_attack_jitter_searches_against_the_noise() -> None:
    x, f = honest(5, 10, 20, torch.float64) / 5, 3
    attack = OptimalIPM(TrimmedMean(f), jitter=0.3)
    out = attack(x, f, generator=torch.Generator().manual_seed(3))
    assert attack.last_scale is not None
    noise = out - (-attack.last_scale * x.mean(0))
    assert float(noise.std()) > 0
    # the damage reported is that of the jittered vectors sent
    damage = torch.linalg.vector_norm(TrimmedMean(f)(torch.cat([x, out])).vector - x.mean(0))
    assert float(damage) == pytest.approx(attack.last_distance, rel=1e-9)


def test_optimal_attack_takes_forseti_results_and_is_no_worse_than_start() -> None:
    x, f = honest(6, 12, 30) / 6, 3
    for cls in (OptimalALIE, OptimalIPM):
        attack = cls(TrimmedMean(f), pre=[Clipping()], start=0.5)
        attack(x, f)
        at_start = cls(TrimmedMean(f), pre=[Clipping()], start=0.5, evals=1)
        at_start(x, f)
        assert at_start.last_scale == 0.5
        assert attack.last_distance is not None and at_start.last_distance is not None
        assert attack.last_distance >= at_start.last_distance
        attack(x, 0)
        assert attack.last_scale is None


def test_inputs_layouts_and_dtypes() -> None:
    x = honest(0, 4, 6, torch.float64)
    layers = [x[:, :2].reshape(4, 2, 1), x[:, 2:].reshape(4, 2, 2)]
    assert torch.equal(SignFlip()(layers, 2), SignFlip()(x, 2))
    ints = SignFlip()(torch.arange(12).reshape(3, 4), 1)
    assert ints.dtype == torch.float32
    assert Gaussian()(x.float(), 2).dtype == torch.float32


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("attack", _every_attack(0.25) + [InfNaN("-inf"), LabelFlip(10)], ids=repr)
def test_config_round_trip(attack: Attack) -> None:
    config = attack.config()
    assert config["name"] in ATTACKS and set(config) == {"name", "parameters"}
    rebuilt = build_attack(config)  # the optimised attacks' rules rebuild from their configs
    assert type(rebuilt) is type(attack) and rebuilt.config() == config
    assert build_attack({**config, "name": type(attack).__name__}).config() == config


def test_build_attack_names_and_aggregator_argument() -> None:
    assert set(ATTACKS) == {
        "sign_flip", "ipm", "alie", "gaussian", "inf_nan", "mimic", "label_flip",
        "optimal_alie", "optimal_ipm",
    }  # fmt: skip
    assert isinstance(build_attack("sign_flip"), SignFlip)
    assert isinstance(build_attack({"name": "IPM", "parameters": {"eps": 10}}), IPM)
    agg = bza.TrMean(2)
    built = build_attack({"name": "optimal_alie", "parameters": {"evals": 5}}, aggregator=agg)
    assert isinstance(built, OptimalALIE) and built.aggregator is agg and built.evals == 5
    # aggregator= is ignored by the attacks that need none
    assert isinstance(build_attack("mimic", aggregator=agg, pre=[]), Mimic)
    built = build_attack("optimal_ipm", aggregator="mean", pre=[{"name": "clipping"}])
    assert built.config()["parameters"]["pre"] == [Clipping().config()]
    # a foreign aggregator without config() is described, not rebuildable
    described = OptimalIPM(agg).config()["parameters"]["aggregator"]
    assert isinstance(described, str) and "TrMean" in described


@pytest.mark.parametrize(
    "config,match",
    [
        ("nope", "unknown attack 'nope'; known: alie, gaussian"),
        ({"name": 3}, "unknown attack"),
        ({}, "unknown attack"),
        (42, "mapping or a name"),
        ({"name": "ipm", "extra": 1}, "unexpected keys"),
        ({"name": "ipm", "parameters": [1]}, "'parameters' must be a mapping"),
        ({"name": "ipm", "parameters": {"tau": 1.0}}, "bad parameters for attack 'ipm'"),
        ({"name": "ipm", "parameters": {"eps": -1}}, "eps must be a positive number"),
        ("optimal_alie", "needs the rule it attacks"),
        ({"name": "optimal_ipm", "parameters": {"aggregator": "nope"}}, "unknown rule"),
    ],
)
def test_build_attack_errors(config: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_attack(config)


# ---------------------------------------------------------------- bad parameters and inputs


BAD_PARAMETERS = [
    (lambda: SignFlip(jitter=-0.1), "jitter must be >= 0"),
    (lambda: SignFlip(jitter=float("nan")), "jitter must be a finite number"),
    (lambda: SignFlip(jitter=True), "jitter must be a finite number"),
    (lambda: SignFlip(jitter="0.1"), "jitter must be a finite number"),  # type: ignore[arg-type]
    (lambda: IPM(0), "eps must be a positive number"),
    (lambda: IPM(True), "eps must be a positive number"),
    (lambda: IPM(float("inf")), "eps must be finite"),
    (lambda: ALIE(z=float("nan")), "z must be a finite number"),
    (lambda: ALIE(z=True), "z must be a finite number"),
    (lambda: ALIE(z="1.5"), "z must be a finite number"),  # type: ignore[arg-type]
    (lambda: Gaussian(sigma=-1.0), "sigma must be >= 0"),
    (lambda: Gaussian(sigma=True), "sigma must be a finite number"),
    (lambda: Gaussian(mu=float("inf")), "mu must be a finite number"),
    (lambda: InfNaN("foo"), "value must be one of"),
    (lambda: InfNaN(math.inf), "value must be one of"),  # type: ignore[arg-type]
    (lambda: Mimic(-1), "target must be a non-negative integer"),
    (lambda: Mimic(True), "target must be a non-negative integer"),
    (lambda: Mimic(1.0), "target must be a non-negative integer"),  # type: ignore[arg-type]
    (lambda: LabelFlip(num_classes=0), "num_classes must be a positive integer"),
    (lambda: LabelFlip(num_classes=True), "num_classes must be a positive integer"),
    (lambda: LabelFlip().flip(torch.tensor([0])), "needs num_classes"),
    (lambda: flip_labels(torch.tensor([0]), 2.0), "num_classes must be a positive integer"),  # type: ignore[arg-type]
    (lambda: OptimalALIE(3), "aggregator must be a callable"),
    (lambda: OptimalALIE(bza.Average(), pre="clipping"), "pre must be a sequence"),
    (lambda: OptimalALIE(bza.Average(), pre=[3]), "each of pre must be a callable"),
    (lambda: OptimalALIE(bza.Average(), evals=0), "evals must be a positive integer"),
    (lambda: OptimalALIE(bza.Average(), evals=2.0), "evals must be a positive integer"),  # type: ignore[arg-type]
    (lambda: OptimalALIE(bza.Average(), evals=True), "evals must be a positive integer"),
    (lambda: OptimalIPM(bza.Average(), start=math.nan), "start must be a finite number"),
    (lambda: OptimalIPM(bza.Average(), delta=0.0), "delta must be non-zero"),
    (lambda: OptimalIPM(bza.Average(), delta=True), "delta must be a finite number"),
    (lambda: OptimalIPM(bza.Average(), ratio=0.5), r"ratio must lie in \(0.5, 1\)"),
    (lambda: OptimalIPM(bza.Average(), ratio=1), r"ratio must lie in \(0.5, 1\)"),
    (lambda: SignFlip()(honest(0, 3, 2), -1), "f must be a non-negative integer"),
    (lambda: SignFlip()(honest(0, 3, 2), True), "f must be a non-negative integer"),
    (lambda: SignFlip()(honest(0, 3, 2), 1.0), "f must be a non-negative integer"),  # type: ignore[arg-type]
    (lambda: alie_z_max(True, 1), "n must be a non-negative integer"),
]


@pytest.mark.parametrize("make,match", BAD_PARAMETERS)
def test_bad_parameters_raise_config_error(make: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()


BAD_INPUTS = [
    (lambda: ALIE(z=1.0)(honest(0, 1, 3), 1), "ALIE .* needs at least 2 honest vectors"),
    (lambda: OptimalALIE(bza.Average())(honest(0, 1, 3), 1), "needs at least 2 honest"),
    (lambda: SignFlip(jitter=0.1)(honest(0, 1, 3), 1), "needs at least 2 honest"),
    (lambda: SignFlip()(torch.tensor([[1.0, math.nan]]), 1), "must be finite"),
    (lambda: Mimic()(torch.tensor([[1.0], [math.inf]]), 1), "must be finite"),
    (lambda: Mimic(3)(honest(0, 3, 2), 1), "target=3 is not an honest worker"),
    (lambda: SignFlip()(torch.zeros(0, 3), 1), "empty"),
    (lambda: SignFlip()(torch.zeros(2, 3, 4), 1), r"shape \(n, d\)"),
    (lambda: SignFlip()("abc", 1), "must be an"),
    (lambda: SignFlip()(torch.zeros(2, 2, dtype=torch.complex64), 1), "must be real"),
    (lambda: flip_labels(torch.tensor([0, 3]), 3), r"labels must lie in \[0, 3\)"),
    (lambda: flip_labels(torch.tensor([-1]), 3), r"labels must lie in \[0, 3\)"),
    (lambda: flip_labels(torch.tensor([0.0]), 3), "integer tensor"),
    (lambda: flip_labels(torch.tensor([True]), 3), "integer tensor"),
    (lambda: flip_labels([0, 1], 3), "integer tensor"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("make,match", BAD_INPUTS)
def test_bad_inputs_raise_validation_error(make: Any, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        make()


def test_optimal_attack_surfaces_infeasible_rules() -> None:
    with pytest.raises(ConfigError, match="needs n >= "):
        OptimalIPM(TrimmedMean(5))(honest(0, 4, 3), 2)


# ---------------------------------------------------------------- properties


MATRICES = hnp.arrays(
    np.float64,
    st.tuples(st.integers(2, 8), st.integers(1, 6)),
    elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=60, deadline=None)
@given(MATRICES, st.floats(0.01, 100), st.floats(-10, 10), st.integers(1, 4))
def test_sign_flip_and_ipm_are_linear_in_the_honest_mean(
    x: np.ndarray, eps: float, c: float, f: int
) -> None:
    t = torch.as_tensor(x)
    mean = t.mean(0)
    atol = 1e-9 * (1 + float(t.abs().max())) * (1 + abs(c)) * (1 + eps)
    assert_close(SignFlip()(t, f), (-mean).expand(f, -1), rtol=1e-9, atol=atol)
    assert_close(IPM(eps)(t, f), (-eps * mean).expand(f, -1), rtol=1e-9, atol=atol)
    assert_close(IPM(eps)(t * c, f), c * IPM(eps)(t, f), rtol=1e-9, atol=atol)
    # only the mean matters: a zero-mean perturbation of the rows changes nothing
    shuffle = t.flip(0) - t.flip(0).mean(0)
    assert_close(IPM(eps)(t + shuffle, f), IPM(eps)(t, f), rtol=1e-9, atol=atol)


@settings(max_examples=60, deadline=None)
@given(MATRICES, st.one_of(st.none(), st.floats(-5, 5)), st.integers(1, 4))
def test_alie_lies_within_z_std_of_the_mean(x: np.ndarray, z: float | None, f: int) -> None:
    t = torch.as_tensor(x)
    h = t.shape[0]
    if z is None and f >= (h + f) // 2 + 1:
        return  # no honest majority: z_max undefined (tested above)
    bound = abs(alie_z_max(h + f, f) if z is None else z)
    out = ALIE(z=z)(t, f)
    dev = (out - t.mean(0)).abs()
    slack = 1e-9 * (1 + float(t.abs().max()))
    assert bool((dev <= bound * t.std(0) + slack).all())
    assert all(torch.equal(row, out[0]) for row in out)
