"""Detection, the reputation ledger and the robust step of forseti.consensus.

1. ``flag_outliers`` / ``Thresholds`` / ``detection_rates`` on hand-computed cases;
2. per-round detection targets (CONSENSUS.md, Targets 3) on synthetic rounds;
3. the ledger's sequential test, trust, recovery and validation (no registry);
4. the ledger with a registry (memory, SQLite, PostgreSQL): the detector entity, its versions,
   the operation that records them, the events, resume, reactive handlers;
5. ``RobustStep`` and ``per_worker_gradients`` against hand-written references.

Synthetic rounds follow the benchmark (B1): honest ``x_i = mu + sigma * N(0, I)`` with
``|mu| = 1`` and ``SNR = 1 / (sigma * sqrt(d))``; the Byzantine rows are what an attack sends
against the honest ones. ``d`` is kept at 1000: at a few hundred coordinates the per-round
thresholds (tuned for d = 1e4) start to flag an honest worker now and then.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from registries import memory
from torch.testing import assert_close

import forseti as fs
from forseti.consensus import (
    ALIE,
    IPM,
    AggregationCompleted,
    AggResult,
    Attack,
    ByzantineDetectorEntity,
    Detection,
    Gaussian,
    InfNaN,
    Mean,
    ReputationLedger,
    RobustStep,
    RoundReport,
    SignFlip,
    Thresholds,
    WorkerFlagged,
    WorkerTrustChanged,
    default_rule,
    detection_rates,
    flag_outliers,
    per_worker_gradients,
)
from forseti.consensus.preaggregators import NNM
from forseti.errors import ConfigError, ValidationError
from forseti.events.registry_events import EntityVersionCommitted
from forseti.operations.events import OperationCommitted

N, F, D = 16, 3, 1000
BYZ = (2, 7, 11)
HONEST = tuple(i for i in range(N) if i not in BYZ)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """These tensors are tiny: one intra-op thread is several times faster than two on a busy
    two-core machine (the threads spin against each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Synthetic:
    """Rounds of ``n`` workers: honest ``mu + sigma * N(0, I)`` (``|mu| = 1``, fixed across
    rounds; ``sigma = 1 / (snr * sqrt(d))``), the workers in ``byz`` sending ``attack(honest)``."""

    def __init__(self, seed: int, snr: float, d: int = D, n: int = N) -> None:
        self.g = torch.Generator().manual_seed(seed)
        mu = torch.randn(d, generator=self.g, dtype=torch.float64)
        self.mu, self.sigma, self.d, self.n = mu / mu.norm(), 1 / (snr * math.sqrt(d)), d, n

    def honest(self, k: int) -> torch.Tensor:
        noise = torch.randn(k, self.d, generator=self.g, dtype=torch.float64)
        return self.mu + self.sigma * noise

    def round(self, attack: Attack | None = None, byz: tuple[int, ...] = BYZ) -> torch.Tensor:
        byz = byz if attack is not None else ()
        good = [i for i in range(self.n) if i not in byz]
        x = torch.empty(self.n, self.d, dtype=torch.float64)
        h = self.honest(len(good))
        x[good] = h
        if byz:
            assert attack is not None
            x[list(byz)] = attack(h, len(byz), generator=self.g)
        return x


# ------------------------------------------------------------------ 1. flag_outliers, rates


def test_ratio_threshold_when_the_mad_is_zero() -> None:
    # median score 10 (distance sqrt(10), MAD 0): above the spread test for any z; the ratio
    # test's limit is 1.5 * 10 = 15, and flags are strict (>)
    s = torch.tensor([10.0, 10, 10, 10, 10, 14, 15, 16])
    assert flag_outliers(s) == (7,)
    assert flag_outliers(s, Thresholds(ratio=1.3)) == (5, 6, 7)  # limit 13
    assert flag_outliers(s, Thresholds(ratio=1.7)) == ()  # limit 17
    assert flag_outliers(s, Thresholds(z=1000.0)) == (7,)  # z does not matter with MAD 0


def test_robust_z_threshold_when_it_is_the_larger() -> None:
    # the z-test is on distances (square roots of the scores): 1 2 3 4 5 6 19, median 4;
    # |d - 4| sorted = 0 1 1 2 2 3 15, median 2, so 1.4826 * MAD = 2.9652
    d = torch.tensor([1.0, 2, 3, 4, 5, 6, 19])
    s = d**2  # median score 16: the ratio test's limit is 1.5 * 16 = 24
    mad = 2 * 1.4826
    assert 4 + 5 * mad < 19 < 4 + 6 * mad  # 18.826 < 19 < 21.79
    assert flag_outliers(s) == (6,)
    assert flag_outliers(s, Thresholds(z=6.0)) == ()
    assert flag_outliers(s, Thresholds(z=1.0)) == (6,)  # limit 6.9652: 6 stays in
    # z = 0.5: distance limit 5.48, so 6 is above it, and its score 36 is above 24
    assert flag_outliers(s, Thresholds(z=0.5)) == (5, 6)
    assert flag_outliers(s, Thresholds(z=0.5, ratio=2.5)) == (6,)  # 36 is not above 40


def test_non_finite_scores_are_always_flagged() -> None:
    s = torch.tensor([1.0, 1.0, math.nan, math.inf, -math.inf, 1.0])
    assert flag_outliers(s) == (2, 3, 4)
    # and they do not enter the median: the finite ones are all equal, so nothing else is
    assert flag_outliers(torch.tensor([5.0, math.inf, 5.0, 5.0])) == (1,)
    assert flag_outliers(torch.tensor([math.nan, math.inf])) == (0, 1)


@pytest.mark.parametrize("value", [0.0, 3.0, 1e12])
def test_equal_scores_flag_nobody(value: float) -> None:
    assert flag_outliers(torch.full((9,), value)) == ()
    assert flag_outliers(torch.full((9,), value), Thresholds(z=1e-9, ratio=1.0)) == ()


def test_flag_outliers_accepts_an_agg_result_lists_and_any_dtype() -> None:
    x = torch.zeros(6, 4, dtype=torch.float64)
    x[4] = 10.0
    result = Mean()(x)
    assert isinstance(result, AggResult)
    assert flag_outliers(result) == flag_outliers(result.scores) == (4,)
    assert flag_outliers([1, 1, 1, 1, 9]) == (4,)
    assert flag_outliers(torch.tensor([1, 1, 1, 1, 9], dtype=torch.int32)) == (4,)
    assert flag_outliers(torch.tensor([1.0, 1, 1, 1, 9], dtype=torch.float16)) == (4,)
    with pytest.raises(ValidationError):
        flag_outliers(torch.ones(3, 3))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"z": 0},
        {"z": -1.0},
        {"z": True},
        {"z": "5"},
        {"z": None},
        {"z": math.nan},
        {"ratio": 0},
        {"ratio": 0.99},
        {"ratio": False},
        {"ratio": math.nan},
        {"ratio": "1.5"},
    ],
)
def test_bad_thresholds_are_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Thresholds(**kwargs)


def test_thresholds_defaults_and_ints() -> None:
    assert Thresholds() == Thresholds(z=5.0, ratio=1.5)
    assert Thresholds(z=3, ratio=1).ratio == 1


def test_detection_rates_conventions() -> None:
    r = detection_rates((), {1, 2}, 8)
    assert (r.precision, r.recall, r.fpr, r.flagged) == (1.0, 0.0, 0.0, 0)  # no flags
    r = detection_rates((), set(), 8)
    assert (r.precision, r.recall, r.fpr, r.flagged) == (1.0, 1.0, 0.0, 0)  # nobody attacks
    r = detection_rates({3, 5}, set(), 8)
    assert (r.precision, r.recall, r.fpr, r.flagged) == (0.0, 1.0, 2 / 8, 2)
    r = detection_rates((0, 1, 2), {1, 2, 3}, 8)
    assert r.precision == pytest.approx(2 / 3) and r.recall == pytest.approx(2 / 3)
    assert r.fpr == pytest.approx(1 / 5) and r.flagged == 3
    r = detection_rates({0, 1}, {0, 1}, 2)  # no honest worker at all
    assert (r.precision, r.recall, r.fpr) == (1.0, 1.0, 0.0)


# ------------------------------------------------------------------ 2. per-round detection

LOUD: dict[str, Callable[[], Attack]] = {
    "gaussian": lambda: Gaussian(sigma=10.0),
    "inf": lambda: InfNaN("inf"),
    "nan": lambda: InfNaN("nan"),
    "-inf": lambda: InfNaN("-inf"),
    "ipm10": lambda: IPM(10.0),
    "alie1.5": lambda: ALIE(z=1.5),
    "sign_flip": lambda: SignFlip(),
    "gaussian-jitter": lambda: Gaussian(sigma=10.0, jitter=1.0),
    "ipm10-jitter": lambda: IPM(10.0, jitter=1.0),
    "alie1.5-jitter": lambda: ALIE(z=1.5, jitter=1.0),
    "sign_flip-jitter": lambda: SignFlip(jitter=1.0),
}


@pytest.mark.parametrize("name", list(LOUD))
def test_per_round_precision_and_recall_at_snr_2(name: str) -> None:
    attack, rule = LOUD[name](), default_rule(F)
    for seed in range(3):
        data = Synthetic(seed, snr=2.0)
        for _ in range(5):
            rates = detection_rates(flag_outliers(rule(data.round(attack))), set(BYZ), N)
            assert rates.precision >= 0.95 and rates.recall >= 0.95, (seed, rates)


@pytest.mark.parametrize("snr", [2.0, 0.5])
def test_per_round_fpr_without_attacker(snr: float) -> None:
    rule, flags = default_rule(F), 0
    for seed in range(3):
        data = Synthetic(seed, snr=snr)
        for _ in range(10):
            rates = detection_rates(flag_outliers(rule(data.round())), set(), N)
            assert rates.fpr <= 0.05, (seed, rates)  # with n = 16: nobody flagged
            flags += rates.flagged
    assert flags == 0


# ------------------------------------------------------------------ 3. the sequential ledger


def run_ledger(
    ledger: ReputationLedger,
    data: Synthetic,
    rounds: int,
    attack: Callable[[int], Attack | None],
    byz: tuple[int, ...] = BYZ,
) -> list[RoundReport]:
    """``rounds`` rounds, round ``r`` (from 1) attacked by ``attack(r)`` (``None``: honest)."""
    rule = ledger.rule or default_rule(F)
    reports = []
    for r in range(1, rounds + 1):
        x = data.round(attack(r), byz)
        reports.append(ledger.update(x, rule(x)))
    return reports


QUIET: dict[str, Callable[[], Attack]] = {
    "sign_flip": lambda: SignFlip(),
    "ipm0.1": lambda: IPM(0.1),
    "sign_flip-jitter": lambda: SignFlip(jitter=1.0),
    "ipm0.1-jitter": lambda: IPM(0.1, jitter=1.0),
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(QUIET))
def test_sequential_test_catches_quiet_attacks_within_50_rounds(name: str, seed: int) -> None:
    attack, rule = QUIET[name](), default_rule(F)
    if "jitter" not in name:  # quiet indeed: one round's flags miss them
        x = Synthetic(seed, snr=0.5).round(attack)
        assert detection_rates(flag_outliers(rule(x)), set(BYZ), N).recall == 0
    ledger = ReputationLedger(N, f=F, rule=rule)
    reports = run_ledger(ledger, Synthetic(seed, snr=0.5), 50, lambda r: attack)
    rates = [detection_rates(rep.suspects, set(BYZ), N) for rep in reports]
    caught = [i for i, r in enumerate(rates, 1) if r.precision >= 0.95 and r.recall >= 0.95]
    assert caught and caught[0] <= 50
    assert set(range(41, 51)) <= set(caught)  # and it stays caught
    if "jitter" not in name:  # identical copies: caught from the first time on
        assert caught == list(range(caught[0], 51))
    # (jittered copies are round outliers now and then before the sequential test holds them)
    assert all(r.fpr == 0 for r in rates)  # no honest suspect on the way
    if name == "sign_flip":
        assert caught[0] <= 10  # the design's prototype: by round 10


@pytest.mark.parametrize("snr", [0.5, 2.0])
def test_no_attacker_no_suspect_over_60_rounds(snr: float) -> None:
    for seed in range(2):
        ledger = ReputationLedger(N, f=F, rule=default_rule(F))
        reports = run_ledger(ledger, Synthetic(seed, snr=snr), 60, lambda r: None)
        assert all(rep.suspects == () for rep in reports)
        assert ledger.detections == [] and ledger.estimated_false_positives == 0.0
        assert max(float(rep.statistic.max()) for rep in reports) < 2.0  # far below 4
        assert float(ledger.trust.min()) > 0.9


@pytest.fixture(scope="module")
def sign_flip_run() -> SimpleNamespace:
    """50 rounds of sign flip at SNR 0.5 through a ledger without registry."""
    ledger = ReputationLedger(N, f=F, rule=default_rule(F))
    reports = run_ledger(ledger, Synthetic(0, snr=0.5), 50, lambda r: SignFlip())
    return SimpleNamespace(ledger=ledger, reports=reports)


def test_trust_of_attackers_falls_and_honest_stays_high(sign_flip_run: SimpleNamespace) -> None:
    ledger, reports = sign_flip_run.ledger, sign_flip_run.reports
    trust = ledger.trust
    assert trust.dtype == torch.float64 and trust.shape == (N,)
    assert float(trust[list(BYZ)].max()) < 0.5
    assert float(trust[list(HONEST)].min()) > 0.9
    assert torch.equal(reports[-1].trust, trust)
    for rep in reports:  # always in [0, 1]; honest workers are never in doubt
        assert float(rep.trust.min()) >= 0.0 and float(rep.trust.max()) <= 1.0
        assert float(rep.trust[list(HONEST)].min()) > 0.9
    assert reports[-1].trust is not ledger.trust  # the report holds a copy


def test_detections_are_recorded_once_with_the_crossing_statistic(
    sign_flip_run: SimpleNamespace,
) -> None:
    ledger, reports = sign_flip_run.ledger, sign_flip_run.reports
    assert sorted(d.worker for d in ledger.detections) == list(BYZ)
    for det in ledger.detections:
        assert isinstance(det, Detection) and det.reason == "sequential"
        first = next(rep for rep in reports if det.worker in rep.suspects)
        assert det.round == first.round and det in first.new_detections
        assert det.statistic == pytest.approx(float(first.statistic[det.worker]))
        assert det.statistic >= ledger.threshold
        assert det.round >= ledger.min_rounds
    assert [len(rep.new_detections) for rep in reports].count(0) == len(reports) - 1
    assert [rep.round for rep in reports] == list(range(1, 51)) and ledger.round == 50
    assert ledger.suspects == BYZ
    assert ledger.flag_counts == [sum(i in rep.flagged_round for rep in reports) for i in range(N)]
    assert all(ledger.flag_counts[i] == 0 for i in HONEST)
    # the statistic is about 1 for honest workers (median-normalised)
    assert float(ledger.statistic[list(HONEST)].max()) < 1.5


def test_estimated_false_positives_stay_near_zero(sign_flip_run: SimpleNamespace) -> None:
    assert 0.0 <= sign_flip_run.ledger.estimated_false_positives < 0.05
    # loud attackers flagged per round: the estimate stays near zero too
    ledger = ReputationLedger(N, f=F, rule=default_rule(F))
    reports = run_ledger(ledger, Synthetic(1, snr=2.0), 10, lambda r: Gaussian(sigma=10.0))
    assert reports[0].flagged_round == BYZ and reports[0].suspects == BYZ
    assert [d.reason for d in ledger.detections] == ["round"] * 3
    assert ledger.flag_counts == [10 if i in BYZ else 0 for i in range(N)]
    assert 0.0 <= ledger.estimated_false_positives < 0.05


def test_a_worker_that_stops_attacking_recovers() -> None:
    ledger = ReputationLedger(N, f=F, rule=default_rule(F))
    reports = run_ledger(
        ledger, Synthetic(0, snr=0.5), 60, lambda r: SignFlip() if r <= 15 else None, byz=(2,)
    )
    during, after = reports[14], reports[-1]
    assert during.suspects == (2,) and float(during.statistic[2]) >= ledger.threshold
    assert float(during.trust[2]) < 0.5
    assert 2 not in after.suspects and after.suspects == ()
    assert float(after.statistic[2]) < ledger.threshold
    assert float(after.trust[2]) > 0.5
    left = next(rep.round for rep in reports[15:] if 2 not in rep.suspects)
    assert all(2 not in rep.suspects for rep in reports[left - 1 :])  # it stays cleared
    stats = [float(rep.statistic[2]) for rep in reports[15:]]
    assert stats[-1] < stats[0] / 2  # the accumulated deviation decays
    assert [(d.worker, d.reason) for d in ledger.detections] == [(2, "sequential")]
    assert ledger.estimated_false_positives < 0.05


def test_identical_and_jittered_copies_are_both_suspects() -> None:
    for attack in (SignFlip(), SignFlip(jitter=0.5), IPM(0.1, jitter=0.5)):
        ledger = ReputationLedger(N, f=F, rule=default_rule(F))
        run_ledger(ledger, Synthetic(3, snr=0.5), 50, lambda r, a=attack: a)  # type: ignore[misc]
        assert ledger.suspects == BYZ, attack


def test_ledger_without_rule_works_on_any_result() -> None:
    ledger = ReputationLedger(N)  # f = 0, no rule: the ledger only reads the result
    data = Synthetic(0, snr=0.5)
    for _ in range(20):
        x = data.round(SignFlip())
        ledger.update(x, Mean()(x))
    assert set(BYZ) <= set(ledger.suspects)


# -- validation


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_workers": 0},
        {"n_workers": -3},
        {"n_workers": True},
        {"n_workers": 2.5},
        {"f": -1},
        {"f": True},
        {"f": 1.0},
        {"decay": 0},
        {"decay": 1.01},
        {"decay": True},
        {"decay": "0.9"},
        {"threshold": 1},
        {"threshold": 0.5},
        {"threshold": True},
        {"min_rounds": 0},
        {"min_rounds": 1.5},
        {"min_rounds": True},
        {"trust_rate": 0},
        {"trust_rate": 1.5},
        {"trust_step": 0.0},
        {"trust_step": False},
        {"sync_every": -1},
        {"sync_every": 2.0},
        {"sync_every": True},
    ],
)
def test_bad_ledger_parameters_are_config_errors(kwargs: dict[str, Any]) -> None:
    n = kwargs.pop("n_workers", N)
    with pytest.raises(ConfigError):
        ReputationLedger(n, **kwargs)


def test_sync_needs_a_registry() -> None:
    with pytest.raises(ConfigError):
        ReputationLedger(N).sync()


def _snapshot(ledger: ReputationLedger) -> tuple[Any, ...]:
    return (
        ledger.round,
        ledger.trust.clone(),
        ledger.statistic.clone(),
        ledger.suspects,
        list(ledger.flag_counts),
        list(ledger.detections),
        ledger.estimated_false_positives,
    )


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return all(
        torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v
        for u, v in zip(a, b, strict=True)
    )


def test_rejected_updates_change_nothing() -> None:
    rule = default_rule(F)
    ledger, twin = ReputationLedger(N, f=F, rule=rule), ReputationLedger(N, f=F, rule=rule)
    data = Synthetic(0, snr=0.5)
    for _ in range(8):  # both are in the middle of catching the sign flip
        x = data.round(SignFlip())
        ledger.update(x, rule(x))
        twin.update(x, rule(x))
    before = _snapshot(ledger)
    x = data.round(SignFlip())
    result = rule(x)
    other_n = Mean()(x[:-1])
    other_d = Mean()(x[:, :-1])
    bad = [
        (x[:-1], result),  # 15 vectors for a ledger of 16
        (torch.cat([x, x[:1]]), result),  # 17 vectors
        (x, other_n),  # a result over 15 workers
        (x[:-1], other_n),  # both consistent with each other, not with the ledger
        (x, other_d),  # the result's vector has d - 1 coordinates
        (x[:, :-1], result),
        (x[0], result),  # not (n, d)
        ("vectors", result),
    ]
    for vectors, res in bad:
        with pytest.raises(ValidationError):
            ledger.update(vectors, res)
        assert _same(_snapshot(ledger), before)
    # the accumulated sums are untouched too: the next round matches the twin's exactly
    a, b = ledger.update(x, result), twin.update(x, result)
    assert a.round == b.round == 9 and a.suspects == b.suspects
    assert torch.equal(a.statistic, b.statistic) and torch.equal(a.trust, b.trust)


# ------------------------------------------------------------------ 4. with a registry


def _rounds_of(reg: fs.EntityRegistry, topic: type[Any], lineage: Any) -> list[Any]:
    return [s.event for s in reg.events(topic=topic, subject=lineage)]


@pytest.fixture
def recorded(reg: fs.EntityRegistry) -> SimpleNamespace:
    """12 rounds with sync_every=5: workers 2 and 7 sign-flip at SNR 0.5 (caught by the
    sequential test), worker 11 sends NaN from round 3 on (caught per round); a handler
    subscribed to WorkerFlagged notes what it sees while the ledger is updating."""
    rule = default_rule(F)
    ledger = ReputationLedger(N, f=F, rule=rule, registry=reg, sync_every=5)
    first = ledger.entity
    seen: list[tuple[int, int, int, bool]] = []

    def on_flag(e: WorkerFlagged) -> None:
        seen.append((e.worker, e.round, ledger.round, e.worker in ledger.suspects))

    reg.bus.subscribe(WorkerFlagged, on_flag)
    data = Synthetic(0, snr=0.5)
    reports, results, entities = [], [], []
    for r in range(1, 13):
        x = data.round(SignFlip(), byz=BYZ)
        if r >= 3:
            x[11] = math.nan
        result = rule(x)
        reports.append(ledger.update(x, result))
        results.append(result)
        entities.append(ledger.entity)
    reg.flush_events()
    return SimpleNamespace(
        reg=reg, rule=rule, ledger=ledger, first=first, reports=reports, results=results,
        entities=entities, seen=seen, data=data,
    )  # fmt: skip


def test_the_ledger_registers_its_detector_at_construction(reg: fs.EntityRegistry) -> None:
    rule = default_rule(F)
    ledger = ReputationLedger(N, f=F, rule=rule, registry=reg, name="byz", threshold=5.0)
    entity = ledger.entity
    assert isinstance(entity, ByzantineDetectorEntity) and entity.version == 1
    assert reg.get(entity.lineage_id) == entity
    assert [e.lineage_id for e in reg.find(ByzantineDetectorEntity)] == [entity.lineage_id]
    assert entity.name == "byz" and entity.n_workers == N and entity.f == F
    assert entity.rule == rule.config()
    assert entity.settings == ledger.settings() and entity.settings["threshold"] == 5.0
    assert entity.round == 0 and entity.trust == (1.0,) * N
    assert entity.suspects == () and entity.detections == () and entity.flag_counts == (0,) * N
    assert entity.estimated_false_positives == 0.0
    assert type(entity).entity_type == "forseti.consensus.ByzantineDetector"


def test_sync_every_commits_versions_through_the_operation(recorded: SimpleNamespace) -> None:
    reg, ledger, reports = recorded.reg, recorded.ledger, recorded.reports
    lineage = ledger.entity.lineage_id
    assert recorded.first.version == 1
    assert [e.version for e in recorded.entities] == [1] * 4 + [2] * 5 + [3] * 3
    history = reg.history(lineage)
    assert [(e.version, e.round) for e in history] == [(1, 0), (2, 5), (3, 10)]
    assert reg.get(lineage) == ledger.entity == history[-1]
    for entity in history[1:]:
        rep = reports[entity.round - 1]
        assert entity.trust == tuple(float(t) for t in rep.trust)
        assert entity.suspects == rep.suspects
        detections = [d for rep in reports[: entity.round] for d in rep.new_detections]
        assert list(entity.detections) == detections
        assert entity.flag_counts == tuple(
            sum(i in r.flagged_round for r in reports[: entity.round]) for i in range(N)
        )
        # what does not belong to the ledger's state is kept
        assert entity.rule == recorded.rule.config() and entity.n_workers == N
    # by round 10: worker 11 (NaN, per round) and the two sign flippers (sequential)
    assert history[2].suspects == (2, 7, 11)
    assert {(d.worker, d.reason) for d in history[2].detections} == {
        (11, "round"),
        (2, "sequential"),
        (7, "sequential"),
    }
    assert history[1].suspects == (11,)


def test_commits_are_audited_as_record_detector_state(recorded: SimpleNamespace) -> None:
    reg, ledger = recorded.reg, recorded.ledger
    lineage = ledger.entity.lineage_id
    committed = [
        s.event for s in reg.events(topic=OperationCommitted) if lineage in s.event.targets
    ]
    assert [e.kind for e in committed] == ["forseti.consensus.entities.RecordDetectorState"] * 2
    assert [e.reason for e in committed] == ["round 5", "round 10"]
    assert all(e.targets == (lineage,) and e.attempts == 1 for e in committed)
    versions = {e.subject.version: e for e in _rounds_of(reg, EntityVersionCommitted, lineage)}
    assert sorted(versions) == [2, 3]
    assert [versions[v].op_id for v in (2, 3)] == [e.op_id for e in committed]


def test_aggregation_completed_every_round(recorded: SimpleNamespace) -> None:
    reg, ledger = recorded.reg, recorded.ledger
    events = _rounds_of(reg, AggregationCompleted, ledger.entity.lineage_id)
    assert [e.round for e in events] == list(range(1, 13))
    for e, rep, res in zip(events, recorded.reports, recorded.results, strict=True):
        assert e.rule == "nnm+trimmed_mean"
        assert e.selected == list(res.selected)
        assert e.flagged == list(rep.flagged_round)
        expected = [v if math.isfinite(v) else None for v in res.scores.tolist()]
        assert [s is None for s in e.scores] == [s is None for s in expected]
        for got, want in zip(e.scores, expected, strict=True):
            assert got == (None if want is None else pytest.approx(want, rel=1e-15))
        assert e.nonfinite == ([11] if e.round >= 3 else [])
        if e.round >= 3:
            assert e.scores[11] is None and e.flagged == [11] and 11 not in e.selected


def test_worker_flagged_once_per_new_suspect(recorded: SimpleNamespace) -> None:
    reg, ledger = recorded.reg, recorded.ledger
    events = _rounds_of(reg, WorkerFlagged, ledger.entity.lineage_id)
    assert sorted(e.worker for e in events) == [2, 7, 11]
    assert [(e.worker, e.round, e.reason, e.statistic) for e in events] == [
        (d.worker, d.round, d.reason, d.statistic) for d in ledger.detections
    ]
    nan = next(e for e in events if e.worker == 11)
    assert nan.round == 3 and nan.reason == "round" and nan.statistic is None
    for e in events:
        if e.worker != 11:
            assert e.reason == "sequential" and e.statistic >= ledger.threshold


def test_worker_trust_changed_on_moves_of_a_trust_step(recorded: SimpleNamespace) -> None:
    reg, ledger, reports = recorded.reg, recorded.ledger, recorded.reports
    events = _rounds_of(reg, WorkerTrustChanged, ledger.entity.lineage_id)
    assert {e.worker for e in events} == {2, 7, 11}  # the honest workers never moved that far
    last = [1.0] * N
    for e in events:
        rep = reports[e.round - 1]
        assert e.previous == last[e.worker]
        assert abs(e.trust - e.previous) >= ledger.trust_step
        assert e.trust == float(rep.trust[e.worker])
        assert e.flagged == (e.worker in rep.suspects)
        last[e.worker] = e.trust
    # every move of at least trust_step since the last report was reported
    last = [1.0] * N
    for rep in reports:
        for i in range(N):
            moved = abs(float(rep.trust[i]) - last[i]) >= ledger.trust_step
            reported = any(e.worker == i and e.round == rep.round for e in events)
            assert moved == reported, (rep.round, i)
            if moved:
                last[i] = float(rep.trust[i])


def test_events_are_in_order_with_the_detector_as_subject(recorded: SimpleNamespace) -> None:
    reg, ledger = recorded.reg, recorded.ledger
    lineage = ledger.entity.lineage_id
    kinds = {AggregationCompleted.topic: 0, WorkerFlagged.topic: 1, WorkerTrustChanged.topic: 2}
    stored = [s for s in reg.events(subject=lineage) if s.event.topic in kinds]
    assert [s.seq for s in stored] == sorted(s.seq for s in stored)
    keys = [(s.event.round, kinds[s.event.topic]) for s in stored]
    assert keys == sorted(keys)  # per round: aggregation, then flags, then trust changes
    assert len(stored) == len(reg.events(subject=lineage)) - 1 - 2  # + registered + 2 commits
    for s in stored:
        subject = s.event.subject
        assert subject is not None and subject.lineage_id == lineage
        # events name the detector version current when they happened (the sync of round
        # 5 comes after round 5's events)
        assert subject.version == 1 + (s.event.round - 1) // 5
    # the log holds what the bus delivered, in the same order
    on_bus = [e for e in reg.bus.history() if e.topic in kinds and e.subject.lineage_id == lineage]
    assert [e.id for e in on_bus] == [s.event.id for s in stored]


def test_a_handler_reacts_during_the_update(recorded: SimpleNamespace) -> None:
    # the handler saw each flag while update() ran: the ledger was at that round, and the
    # worker was already among its suspects
    assert sorted(recorded.seen) == sorted(
        (d.worker, d.round, d.round, True) for d in recorded.ledger.detections
    )


def test_a_reactive_handler_can_exclude_a_flagged_worker(reg: fs.EntityRegistry) -> None:
    rule = default_rule(F)
    ledger = ReputationLedger(N, f=F, rule=rule, registry=reg)
    excluded: set[int] = set()
    reg.bus.subscribe(WorkerFlagged, lambda e: excluded.add(e.worker))
    data = Synthetic(0, snr=2.0)
    for r in range(1, 6):
        x = data.round(Gaussian(sigma=10.0), byz=(4,))
        if r == 1:
            assert excluded == set()
        for i in excluded:  # the caller drops excluded workers' vectors from now on
            x[i] = math.nan
        ledger.update(x, rule(x))
        assert excluded == {4}  # known right after the round that flagged it
    assert [(d.worker, d.round) for d in ledger.detections] == [(4, 1)]


def test_resume_restores_the_state_and_continues(recorded: SimpleNamespace) -> None:
    reg, ledger, rule, data = recorded.reg, recorded.ledger, recorded.rule, recorded.data
    head = ledger.sync()
    assert head.version == 4 and head.round == 12
    lineage = head.lineage_id
    resumed = ReputationLedger.resume(reg, lineage, rule=rule)
    assert resumed.entity == head and resumed.registry is reg
    assert resumed.round == 12
    assert torch.equal(resumed.trust, ledger.trust)
    assert resumed.suspects == ledger.suspects == (2, 7, 11)
    assert resumed.detections == ledger.detections
    assert resumed.flag_counts == ledger.flag_counts
    assert resumed.estimated_false_positives == ledger.estimated_false_positives
    assert resumed.settings() == ledger.settings()
    assert resumed.n == N and resumed.f == F
    # also from a ref, or the lineage id as a string
    assert ReputationLedger.resume(reg, head.ref).round == 12
    assert ReputationLedger.resume(reg, str(lineage)).round == 12
    for r in range(13, 16):
        x = data.round(SignFlip())
        x[11] = math.nan
        assert resumed.update(x, rule(x)).round == r
    entity = resumed.sync()
    assert (entity.version, entity.round) == (5, 15)
    assert entity.detections[: len(ledger.detections)] == tuple(ledger.detections)
    assert [e.round for e in _rounds_of(reg, AggregationCompleted, lineage)] == list(range(1, 16))
    assert len(reg.find(ByzantineDetectorEntity)) == 1  # resuming registers nothing new


def test_resume_accepts_the_detector_entity_itself() -> None:
    reg = memory()
    ledger = ReputationLedger(N, f=F, registry=reg)
    assert ReputationLedger.resume(reg, ledger.sync()).round == 0


def test_resume_refuses_other_entities(reg: fs.EntityRegistry) -> None:
    other = reg.add(fs.ModelEntity(name="m", architecture="x"))
    with pytest.raises(ValidationError):
        ReputationLedger.resume(reg, other.lineage_id)


def test_a_resumed_ledger_keeps_its_suspects_while_the_attack_goes_on() -> None:
    reg, rule = memory(), default_rule(F)
    ledger = ReputationLedger(N, f=F, rule=rule, registry=reg)
    data = Synthetic(0, snr=0.5)
    run_ledger(ledger, data, 12, lambda r: SignFlip())
    assert ledger.suspects == BYZ
    resumed = ReputationLedger.resume(reg, ledger.sync().lineage_id, rule=rule)
    reports = run_ledger(resumed, data, 10, lambda r: SignFlip())
    assert all(rep.suspects == BYZ for rep in reports)
    assert all(rep.new_detections == () for rep in reports)


def test_leaving_the_suspects_publishes_a_trust_change() -> None:
    reg = memory()
    ledger = ReputationLedger(N, f=F, rule=default_rule(F), registry=reg)
    changes: list[WorkerTrustChanged] = []
    reg.bus.subscribe(WorkerTrustChanged, changes.append)
    reports = run_ledger(
        ledger, Synthetic(0, snr=0.5), 40, lambda r: SignFlip() if r <= 15 else None, byz=(2,)
    )
    cleared = next(rep.round for rep in reports[15:] if 2 not in rep.suspects)
    assert any(e.worker == 2 and e.round == cleared and not e.flagged for e in changes)


def test_the_detector_type_and_events_load_lazily_in_a_fresh_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with fs.open(url, blob_dir=tmp_path / "blobs") as reg:
        ledger = ReputationLedger(N, f=F, rule=default_rule(F), registry=reg, sync_every=4)
        run_ledger(ledger, Synthetic(1, snr=2.0), 4, lambda r: Gaussian(sigma=10.0))
        lineage = ledger.entity.lineage_id
    script = f"""
import sys
import forseti as fs
assert "forseti.consensus" not in sys.modules
with fs.open({url!r}, blob_dir={str(tmp_path / "blobs")!r}) as reg:
    e = reg.get({str(lineage)!r})
    print(type(e).__name__, e.version, e.round, list(e.suspects))
    print(len(reg.events(topic="forseti.consensus.WorkerFlagged")))
assert "forseti.consensus" in sys.modules
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["ByzantineDetectorEntity 2 4 [2, 7, 11]", "3"]


# ------------------------------------------------------------------ 5. RobustStep


class Scaled(torch.nn.Module):
    """A tiny MLP with a frozen parameter and a buffer (both must stay out of the gradients)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(3, 5)
        self.fc2 = torch.nn.Linear(5, 2)
        self.frozen = torch.nn.Parameter(torch.tensor([0.5, -0.5]), requires_grad=False)
        self.register_buffer("scale", torch.tensor(1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x) * self.scale)) + self.frozen


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return Scaled().double()


def worker_batches(seed: int, n: int = 4, batch: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, batch, 3, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 2, (n, batch), generator=g)
    return inputs, targets


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    n = next(iter(grads.values())).shape[0]
    return torch.cat([g.reshape(n, -1) for g in grads.values()], dim=1)


def params_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_per_worker_gradients_equal_a_loop_of_autograd() -> None:
    model, loss = tiny_model(), torch.nn.functional.cross_entropy
    inputs, targets = worker_batches(0)
    grads = per_worker_gradients(model, loss, inputs, targets)
    trainable = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    assert list(grads) == [k for k, _ in trainable]  # the model's order, frozen one left out
    for i in range(inputs.shape[0]):
        ref = torch.autograd.grad(loss(model(inputs[i]), targets[i]), [p for _, p in trainable])
        for (k, p), r in zip(trainable, ref, strict=True):
            assert grads[k].shape == (inputs.shape[0], *p.shape)
            assert_close(grads[k][i], r, rtol=1e-12, atol=1e-14)
    assert all(p.grad is None for p in model.parameters())  # the model is left alone


def test_per_worker_gradients_refuses_mismatched_workers() -> None:
    model, loss = tiny_model(), torch.nn.functional.cross_entropy
    inputs, targets = worker_batches(0)
    with pytest.raises(ValidationError):
        per_worker_gradients(model, loss, inputs, targets[:-1])


def test_robust_step_with_mean_is_a_plain_sgd_step() -> None:
    model, loss = tiny_model(), torch.nn.functional.cross_entropy
    inputs, targets = worker_batches(1)
    before = params_of(model)  # the frozen parameter first (the module's own), then fc1, fc2
    frozen = model.frozen.detach().clone()
    grads = per_worker_gradients(model, loss, inputs, targets)
    step = RobustStep(model, torch.optim.SGD(model.parameters(), lr=0.3), Mean())
    outcome = step(grads)
    assert outcome.report is None and outcome.result.n == inputs.shape[0]
    mean = flat(grads).mean(dim=0)
    assert torch.equal(outcome.result.vector, mean)
    offset = 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p, p0 in zip(trainable, before[1:], strict=True):
        g = mean[offset : offset + p.numel()].reshape(p.shape)
        offset += p.numel()
        assert torch.equal(p.grad, g)
        assert torch.equal(p.detach(), p0.clone().add_(g, alpha=-0.3))  # exactly SGD's update
    assert torch.equal(model.frozen.detach(), frozen) and torch.equal(frozen, before[0])
    # the mean of the per-worker gradients is the gradient of the mean of the losses
    ref_model = tiny_model()
    total = sum(loss(ref_model(inputs[i]), targets[i]) for i in range(inputs.shape[0]))
    ref = torch.autograd.grad(total / inputs.shape[0], list(ref_model.fc1.parameters()))
    assert_close(grads["fc1.weight"].mean(0), ref[0], rtol=1e-12, atol=1e-14)


def test_step_accepts_a_flat_matrix_and_per_layer_lists_alike() -> None:
    model = tiny_model()
    grads = per_worker_gradients(model, torch.nn.functional.cross_entropy, *worker_batches(2))
    outs = []
    for form in (grads, list(grads.values()), flat(grads)):
        m = tiny_model()
        RobustStep(m, torch.optim.SGD(m.parameters(), lr=0.1), Mean())(form)
        outs.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_worker_momentum_buffers() -> None:
    model, beta = tiny_model(), 0.9
    seen: list[torch.Tensor] = []

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return x

    step = RobustStep(
        model, torch.optim.SGD(model.parameters(), lr=0.1), Mean(), momentum=beta, transform=spy
    )
    sent = []
    for k in range(3):
        g = flat(per_worker_gradients(model, torch.nn.functional.cross_entropy, *worker_batches(k)))
        sent.append(g)
        step(g)
    # m_1 = g_1 (no bias towards zero), then m <- beta m + (1 - beta) g
    m = sent[0].clone()
    expected = [m.clone()]
    for g in sent[1:]:
        m = beta * m + (1 - beta) * g
        expected.append(m.clone())
    for got, want in zip(seen, expected, strict=True):
        assert_close(got, want, rtol=1e-14, atol=1e-16)


def test_transform_output_is_what_gets_aggregated() -> None:
    model = tiny_model()
    grads = per_worker_gradients(model, torch.nn.functional.cross_entropy, *worker_batches(3))
    stacked = flat(grads)
    seen: list[torch.Tensor] = []
    replacement = torch.full_like(stacked, 2.0)

    def transform(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return replacement

    ledger = ReputationLedger(stacked.shape[0])
    step = RobustStep(
        model, torch.optim.SGD(model.parameters(), lr=0.1), Mean(), transform=transform,
        ledger=ledger,
    )  # fmt: skip
    outcome = step(grads)
    assert len(seen) == 1 and torch.equal(seen[0], stacked)
    assert torch.equal(outcome.result.vector, torch.full((stacked.shape[1],), 2.0))
    assert all(torch.equal(p.grad, torch.full_like(p, 2.0)) for p in step.params)
    assert isinstance(outcome.report, RoundReport) and outcome.report.round == 1
    assert ledger.round == 1


def test_step_returns_the_ledger_report_and_catches_attackers() -> None:
    acc, outcomes = train(default_rule(F), SignFlip(), steps=40, seed=1, with_ledger=True)
    reports = [o.report for o in outcomes]
    assert all(isinstance(r, RoundReport) for r in reports)
    assert [r.round for r in reports] == list(range(1, 41))
    assert set(reports[-1].suspects) == {13, 14, 15}
    caught = sum({13, 14, 15} <= set(r.flagged_round) for r in reports)
    assert caught >= 0.95 * len(reports)  # loud on real gradients: flagged round after round
    assert not any(set(r.flagged_round) - {13, 14, 15} for r in reports)  # and nobody else
    assert acc >= 0.95


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda m: RobustStep(m, _sgd(m), NNM(1)), id="pre-aggregator"),
        pytest.param(lambda m: RobustStep(m, _sgd(m), lambda x: x), id="callable"),  # type: ignore[arg-type]
        pytest.param(lambda m: RobustStep(m, _sgd(m), Mean, momentum=0.5), id="class"),  # type: ignore[arg-type]
        pytest.param(lambda m: RobustStep(m, _sgd(m), Mean(), momentum=1.0), id="momentum-1"),
        pytest.param(lambda m: RobustStep(m, _sgd(m), Mean(), momentum=-0.1), id="momentum<0"),
        pytest.param(lambda m: RobustStep(m, _sgd(m), Mean(), momentum=True), id="momentum-bool"),
        pytest.param(lambda m: RobustStep(m, _sgd(m), Mean(), momentum="0.9"), id="momentum-str"),  # type: ignore[arg-type]
        pytest.param(
            lambda m: RobustStep([m.frozen], _sgd(m), Mean()), id="no-trainable-parameter"
        ),
        pytest.param(lambda m: RobustStep([], _sgd(m), Mean()), id="no-parameter"),
    ],
)
def test_bad_step_configuration_is_a_config_error(make: Callable[[Any], Any]) -> None:
    with pytest.raises(ConfigError):
        make(tiny_model())


def _sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)


def test_bad_gradients_raise_and_leave_the_parameters_alone() -> None:
    model = tiny_model()
    dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
    step = RobustStep(model, _sgd(model), default_rule(1), momentum=0.5)
    before = params_of(model)
    bad = [
        torch.zeros(4, dim + 1, dtype=torch.float64),
        torch.zeros(4, dim - 1, dtype=torch.float64),
        torch.zeros(dim, dtype=torch.float64),
        [torch.zeros(4, 2, 3), torch.zeros(5, 2)],  # layers with different worker counts
        "gradients",
    ]
    for g in bad:
        with pytest.raises(ValidationError):
            step(g)
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(ConfigError):  # too few workers for the rule's f: nothing stepped
        step(torch.zeros(2, dim, dtype=torch.float64))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_ledger_of_another_size_is_refused_before_stepping() -> None:
    model = tiny_model()
    dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
    step = RobustStep(model, _sgd(model), Mean(), ledger=ReputationLedger(8))
    before = params_of(model)
    with pytest.raises(ValidationError):
        step(torch.randn(4, dim, dtype=torch.float64))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_an_in_place_transform_does_not_touch_the_momentum_buffers() -> None:
    def final(transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        model = tiny_model()
        step = RobustStep(model, _sgd(model), Mean(), momentum=0.9, transform=transform)
        for k in range(3):
            step(per_worker_gradients(model, torch.nn.functional.cross_entropy, *worker_batches(k)))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(final(lambda x: x.mul_(2.0)), final(lambda x: x * 2.0))


@pytest.mark.parametrize(
    "factor",
    [0.5, 2.0],
)
def test_a_transform_of_the_wrong_shape_is_a_validation_error(factor: float) -> None:
    model = tiny_model()
    dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cut = int(dim * factor)

    def transform(x: torch.Tensor) -> torch.Tensor:
        return x[:, :cut] if factor < 1 else torch.cat([x, x], dim=1)[:, :cut]

    step = RobustStep(model, _sgd(model), Mean(), transform=transform)
    with pytest.raises(ValidationError):
        step(torch.randn(4, dim, dtype=torch.float64))


# -- learning under attack


def separable(g: torch.Generator, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points of a linearly separable problem with a margin of 0.3."""
    x = torch.randn(m, 2, generator=g) * 1.5
    margin = x @ torch.tensor([1.0, -2.0]) + 0.5
    keep = margin.abs() > 0.3
    return x[keep], (margin[keep] > 0).long()


def train(
    rule: Any, attack: Attack, *, steps: int = 60, seed: int = 0, with_ledger: bool = False
) -> tuple[float, list[Any]]:
    """Test accuracy after ``steps`` robust steps of 16 workers, the last 3 Byzantine."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    byz = [13, 14, 15]

    def attacked(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[byz] = attack(x[:13], len(byz))
        return x

    ledger = ReputationLedger(N, f=F, rule=rule) if with_ledger else None
    step = RobustStep(
        model, torch.optim.SGD(model.parameters(), lr=0.3), rule, momentum=0.9,
        transform=attacked, ledger=ledger,
    )  # fmt: skip
    x, y = separable(g, 4000)
    x_test, y_test = separable(g, 1000)
    outcomes = []
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (N, 16), generator=g)
        outcomes.append(
            step(per_worker_gradients(model, torch.nn.functional.cross_entropy, x[idx], y[idx]))
        )
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    return accuracy, outcomes


def test_robust_step_learns_under_sign_flip_where_mean_fails_under_ipm() -> None:
    robust, _ = train(default_rule(F), SignFlip())
    broken, outcomes = train(Mean(), IPM(10.0))
    assert robust >= 0.95
    assert broken <= 0.5  # Mean follows IPM(10) uphill
    assert all(math.isfinite(float(o.result.vector.abs().max())) for o in outcomes)


@pytest.fixture(scope="module")
def honest_training() -> SimpleNamespace:
    """60 steps of the separable problem with worker momentum 0.9 and no attacker at all."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    rule = default_rule(F)
    ledger = ReputationLedger(N, f=F, rule=rule)
    step = RobustStep(model, _sgd(model), rule, momentum=0.9, ledger=ledger)
    x, y = separable(g, 4000)
    reports = []
    for _ in range(60):
        idx = torch.randint(0, x.shape[0], (N, 16), generator=g)
        grads = per_worker_gradients(model, torch.nn.functional.cross_entropy, x[idx], y[idx])
        reports.append(step(grads).report)
    return SimpleNamespace(ledger=ledger, reports=reports)


def test_per_round_fpr_on_real_gradients_without_attacker(
    honest_training: SimpleNamespace,
) -> None:
    fpr = [detection_rates(r.flagged_round, set(), N).fpr for r in honest_training.reports]
    assert sum(fpr) / len(fpr) <= 0.05


def test_estimated_false_positives_track_false_detections_on_real_gradients(
    honest_training: SimpleNamespace,
) -> None:
    ledger = honest_training.ledger
    assert ledger.detections  # every one of them false: nobody attacks
    assert ledger.estimated_false_positives >= len(ledger.detections) / 2
