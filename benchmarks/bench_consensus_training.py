"""B2 of CONSENSUS.md: training under attack on scikit-learn's bundled digits data.

Setup (everything seeded, one CPU thread):

* ``sklearn.datasets.load_digits`` (1797 8x8 images, no download), pixels / 16; a fixed
  split of 1437 training and 360 test images;
* n = 16 workers, of which f are Byzantine; the n - f honest workers share the training set
  IID (γ = 1) or with ByzFL's γ-similarity split (a fraction γ of the data dealt at random, the
  rest sorted by label and cut in contiguous blocks, so each honest worker also holds a block of
  one or two digits);
* an MLP 64-32-10 trained for 200 steps with SGD (lr 0.5) on the aggregate of the workers'
  momentum vectors (worker momentum 0.9, batch 32 per worker), each step's 16 gradients from one
  ``torch.func.vmap(grad(...))`` (``forseti.consensus.per_worker_gradients``) and applied by
  ``forseti.consensus.RobustStep``;
* attacks on the momentum vectors the Byzantine workers send: sign flip, IPM (ε = 0.1 and 10),
  ALIE (z_max), Gaussian (σ = 1), mimic, and label flip (data level: the Byzantine workers
  compute honest-looking gradients on flipped labels ``y -> 9 - y``); the full run adds the
  line-searched ALIE and IPM against the two stacks compared (each costs 20 aggregations a
  step). Inf/NaN and jittered copies are B1's business (every rule drops non-finite vectors);
* the full run spreads the runs over the machine's cores (one thread each).

The table gives the final test accuracy per rule and attack (0 when the weights overflowed), and
the worst case over attacks;
the baseline is Mean with no attacker (f = 0, all 16 workers honest). Targets: IID f = 3/16 —
the default stack's worst case within 2 points of that baseline; non-IID γ = 0.5, f = 5/16 —
worst case >= 0.80.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from common import Result

GROUP = "consensus B2: training under attack (digits)"
MISSING = ""
try:
    import torch
    from sklearn.datasets import load_digits

    import forseti as fs
    import forseti.consensus as C
except ImportError as exc:  # pragma: no cover - the dev extra has both
    MISSING = f"needs torch and scikit-learn ({exc})"

N, STEPS, BATCH, LR, MOMENTUM = 16, 200, 32, 0.5, 0.9


@dataclass(frozen=True)
class Setting:
    label: str
    gamma: float
    f: int


SETTINGS = (Setting("IID, f=3/16", 1.0, 3), Setting("non-IID γ=0.5, f=5/16", 0.5, 5))


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = perm[:360], perm[360:]
    return x[train], y[train], x[test], y[test]


def gamma_split(labels: torch.Tensor, workers: int, gamma: float, g: torch.Generator) -> list:
    """ByzFL's γ-similarity split: γ of the data IID, the rest sorted by label, in blocks."""
    idx = torch.randperm(len(labels), generator=g)
    k = int(gamma * len(labels))
    iid, rest = idx[:k], idx[k:]
    rest = rest[torch.argsort(labels[rest], stable=True)]
    a, b = iid.tensor_split(workers), rest.tensor_split(workers)
    return [torch.cat([a[i], b[i]]) for i in range(workers)]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def train(
    data: tuple[torch.Tensor, ...],
    rule: C.Aggregator,
    attack: Any,
    setting: Setting,
    *,
    steps: int = STEPS,
) -> float:
    """Final test accuracy of one run (``attack`` None: f = 0, every worker honest)."""
    xtr, ytr, xte, yte = data
    g = torch.Generator().manual_seed(1)
    f = setting.f if attack is not None else 0
    honest = N - f
    parts = gamma_split(ytr, honest, setting.gamma, g)
    # every worker's batch indices for every step, drawn up front
    picks = [p[torch.randint(len(p), (steps, BATCH), generator=g)] for p in parts]
    picks += [torch.randint(len(ytr), (steps, BATCH), generator=g) for _ in range(f)]
    index = torch.stack(picks, dim=1)  # (steps, N, BATCH)
    label_flip = isinstance(attack, C.LabelFlip)

    def byzantine(vectors: torch.Tensor) -> torch.Tensor:
        if attack is None or label_flip:
            return vectors
        return torch.cat([vectors[:honest], attack(vectors[:honest], f, generator=g)])

    def diverged() -> bool:
        return not all(bool(torch.isfinite(p).all()) for p in model.parameters())

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    step = C.RobustStep(model, opt, rule, momentum=MOMENTUM, transform=byzantine)
    loss = torch.nn.functional.cross_entropy
    for t in range(steps):
        if diverged():  # the attack won: the weights overflowed (Mean under IPM 10, ...)
            return 0.0
        xs, ys = xtr[index[t]], ytr[index[t]]
        if label_flip:
            ys[honest:] = C.flip_labels(ys[honest:], 10)
        try:
            step(C.per_worker_gradients(model, loss, xs, ys))
        except fs.ValidationError:  # the gradients overflowed: nothing finite left to send
            return 0.0
    if diverged():
        return 0.0
    with torch.no_grad():
        return float((model(xte).argmax(dim=1) == yte).float().mean())


def rules(f: int) -> dict[str, Callable[[], C.Aggregator]]:
    out: dict[str, Callable[[], C.Aggregator]] = {
        "mean": C.Mean,
        "median": lambda: C.CoordinateMedian(f),
        "trimmed mean": lambda: C.TrimmedMean(f),
        "krum": lambda: C.Krum(f),
        "geometric median": lambda: C.GeometricMedian(f),
        "centered clipping": lambda: C.CenteredClipping(f),
        "nnm + trimmed mean (default)": lambda: C.default_rule(f),
        "filter + mean": lambda: C.Robust(pre=[C.OutlierFilter(f)], agg=C.Mean()),
    }
    if N >= 4 * f + 3:
        out["bulyan"] = lambda: C.Bulyan(f)
    return out


ATTACKS = ("sign flip", "IPM 0.1", "IPM 10", "ALIE", "Gaussian", "mimic", "label flip")
OPTIMAL = ("optimal ALIE", "optimal IPM")
# the line-searched attacks cost 20 aggregations a step: run against the two stacks compared
OPTIMAL_AGAINST = ("nnm + trimmed mean (default)", "filter + mean")


def make_attack(name: str, rule: Callable[[], C.Aggregator]) -> Any:
    """The attack called ``name`` (the line-searched ones aim at a fresh ``rule()``)."""
    return {
        "sign flip": lambda: C.SignFlip(),
        "IPM 0.1": lambda: C.IPM(eps=0.1),
        "IPM 10": lambda: C.IPM(eps=10.0),
        "ALIE": lambda: C.ALIE(),
        "Gaussian": lambda: C.Gaussian(sigma=1.0),
        "mimic": lambda: C.Mimic(),
        "label flip": lambda: C.LabelFlip(),
        "optimal ALIE": lambda: C.OptimalALIE(rule()),
        "optimal IPM": lambda: C.OptimalIPM(rule()),
        "none": lambda: None,
    }[name]()


_DATA: tuple[torch.Tensor, ...] | None = None


def cell(task: tuple[int, str, str, int]) -> float:
    """One run, by names (so that it can run in a worker process)."""
    global _DATA
    torch.set_num_threads(1)
    if _DATA is None:
        _DATA = _data()
    index, rule_name, attack_name, steps = task
    setting = SETTINGS[index]
    make = rules(setting.f)[rule_name]
    return train(_DATA, make(), make_attack(attack_name, make), setting, steps=steps)


def _table(title: str, rows: dict[str, dict[str, float]]) -> None:
    names = [a for a in ATTACKS + OPTIMAL if any(a in accs for accs in rows.values())]
    width = max(len(r) for r in rows) + 2
    print(f"\n{title}")
    print(" " * width + "  ".join(f"{a[:10]:>10}" for a in names) + "       worst")
    for rule, accs in rows.items():
        cells = "  ".join(f"{accs[a]:10.3f}" if a in accs else f"{'-':>10}" for a in names)
        print(f"{rule:<{width}}{cells}  {min(accs.values()):10.3f}")


def run(quick: bool) -> list[Result]:
    if MISSING:
        return [Result("consensus B2", skipped=MISSING, group=GROUP)]
    torch.set_num_threads(1)
    steps = 30 if quick else STEPS
    tasks: list[tuple[int, str, str, int]] = [(0, "mean", "none", steps)]
    for index, setting in enumerate(SETTINGS):
        for name in rules(setting.f):
            if quick and name not in ("mean", "nnm + trimmed mean (default)"):
                continue
            names = ("sign flip", "IPM 10") if quick else ATTACKS
            if not quick and name in OPTIMAL_AGAINST:
                names += OPTIMAL
            tasks += [(index, name, a, steps) for a in names]
    start = time.perf_counter()
    if quick:
        accuracies = [cell(t) for t in tasks]
    else:  # one run per process at a time, on every core (each run uses one thread)
        workers = max(1, min(len(tasks), os.cpu_count() or 1))
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            accuracies = list(pool.map(cell, tasks))
    elapsed = time.perf_counter() - start
    done = dict(zip(tasks, accuracies, strict=True))
    baseline = done[tasks[0]]
    print(f"\nB2 baseline: Mean, no attacker, {steps} steps: accuracy {baseline:.3f}")
    results: list[Result] = []
    for index, setting in enumerate(SETTINGS):
        table: dict[str, dict[str, float]] = {}
        for (i, rule_name, attack_name, _), acc in done.items():
            if i == index and attack_name != "none":
                table.setdefault(rule_name, {})[attack_name] = acc
        _table(f"B2 {setting.label}: final test accuracy ({steps} steps)", table)
        target = baseline - 0.02 if setting.gamma == 1.0 else 0.80
        for name in ("nnm + trimmed mean (default)", "filter + mean", "mean"):
            if name not in table:
                continue
            worst = min(table[name].values())
            results.append(
                Result(
                    f"B2 {setting.label}: worst-case accuracy, {name}",
                    worst,
                    baseline,
                    baseline_name="Mean, no attacker",
                    target_s=None if (quick or name == "mean") else target,
                    lower_is_better=False,
                    unit="acc",
                    group=GROUP,
                    samples=len(table[name]),
                    extra={"accuracy": table[name]},
                )
            )
    print(f"B2: {len(tasks)} runs of {steps} steps in {elapsed:.1f} s")
    return results
