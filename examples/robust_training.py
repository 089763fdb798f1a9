"""Robust data-parallel training: 16 workers, 6 of them Byzantine, in a few seconds on a CPU.

A small MLP learns a synthetic 10-class problem from 16 workers' gradients. Five workers send the
opposite of the honest workers' momentum (sign flip) and one sends Inf. Every step computes the
16 gradients with one ``vmap`` (``per_worker_gradients``) and applies them with ``RobustStep``
(worker momentum 0.9), first with ``Mean`` and no attacker (the baseline), then with ``Mean``
under the attack, then with the recommended ``default_rule(f)`` (nearest-neighbour mixing, then
the trimmed mean) under the attack, watched by a ``ReputationLedger`` on a SQLite store. Then it
reopens the store and reads back the ledger's ``ByzantineDetectorEntity`` and the
``WorkerFlagged`` events from the log.

    python examples/robust_training.py              # 80 steps per run
    python examples/robust_training.py --steps 200

Everything it writes lives in a temporary directory and is gone when it exits.
"""

import argparse
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

import forseti as fs
from forseti.consensus import (
    Aggregator,
    ByzantineDetectorEntity,
    Mean,
    ReputationLedger,
    RobustStep,
    SignFlip,
    WorkerFlagged,
    build,
    default_rule,
    per_worker_gradients,
)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=80, help="training steps per run (default 80)")
args = parser.parse_args()

torch.set_num_threads(1)  # tiny tensors: one thread is fastest

N, BATCH, CLASSES, FEATURES = 16, 32, 10, 20
FLIPPERS, INF = (1, 3, 8, 10, 13), 6
BYZANTINE = (*FLIPPERS, INF)
F = len(BYZANTINE)  # the rule tolerates as many Byzantine workers as there are
HONEST = [i for i in range(N) if i not in BYZANTINE]

# Ten Gaussian classes that overlap: a problem the MLP learns to about 80 % in 80 steps.
g = torch.Generator().manual_seed(0)
centers = torch.randn(CLASSES, FEATURES, generator=g)


def draw(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, CLASSES, (k,), generator=g)
    return centers[y] + 1.5 * torch.randn(k, FEATURES, generator=g), y


train_x, train_y = draw(4000)
test_x, test_y = draw(2000)


def attack(vectors: torch.Tensor) -> torch.Tensor:
    """What the Byzantine workers send instead of their momentum (RobustStep's ``transform``)."""
    vectors[list(FLIPPERS)] = SignFlip()(vectors[HONEST], len(FLIPPERS))
    vectors[INF] = math.inf
    return vectors


def train(
    rule: Aggregator,
    *,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ledger: ReputationLedger | None = None,
) -> float:
    """``args.steps`` robust steps from the same initial weights and batches; test accuracy."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 32), torch.nn.ReLU(), torch.nn.Linear(32, CLASSES)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    step = RobustStep(model, optimizer, rule, momentum=0.9, ledger=ledger, transform=transform)
    batches = torch.Generator().manual_seed(1)
    for _ in range(args.steps):
        idx = torch.randint(0, len(train_x), (N, BATCH), generator=batches)  # a batch per worker
        grads = per_worker_gradients(
            model, torch.nn.functional.cross_entropy, train_x[idx], train_y[idx]
        )  # {parameter name: (16, *shape)}
        step(grads)
    with torch.no_grad():
        return (model(test_x).argmax(dim=1) == test_y).float().mean().item()


print(f"{N} workers: {list(FLIPPERS)} flip the sign, {INF} sends Inf; f = {F}, {args.steps} steps")
print()
baseline = train(Mean())
attacked_mean = train(Mean(), transform=attack)

with tempfile.TemporaryDirectory() as tmp:
    url = f"sqlite:///{Path(tmp) / 'robust.db'}"
    with fs.open(url) as reg:
        rule = default_rule(F)
        ledger = ReputationLedger(N, f=F, rule=rule, registry=reg, sync_every=25)
        robust = train(rule, transform=attack, ledger=ledger)
        ledger.sync()  # the final state (sync_every committed rounds 25, 50, 75)
        detector_id = ledger.entity.lineage_id

        print("test accuracy")
        print(f"  {'Mean, no attacker (the baseline)':36s} {baseline:.3f}")
        print(f"  {'Mean, under attack':36s} {attacked_mean:.3f}")
        print(f"  {rule.label + ', under attack':36s} {robust:.3f}")
        print("  (every rule drops the Inf worker; the sign flippers only slow the mean down here)")
        print()
        print(f"suspects after {ledger.round} rounds: {list(ledger.suspects)}")
        print("trust:", " ".join(f"{i}:{t:.2f}" for i, t in enumerate(ledger.trust.tolist())))
        cleared = sorted({d.worker for d in ledger.detections} - set(ledger.suspects))
        print(
            f"flagged, then cleared: {cleared}; estimated false positives: "
            f"{ledger.estimated_false_positives:g}"
        )

    # A fresh registry on the same file: the detector's versions and the event log are stored.
    with fs.open(url) as reg:
        detector = reg.get(detector_id)
        assert isinstance(detector, ByzantineDetectorEntity)
        print()
        print(
            f"{type(detector).__name__} '{detector.name}' v{detector.version}: round "
            f"{detector.round}, suspects {list(detector.suspects)}, rule {build(detector.rule).label}"
        )
        for version in reg.history(detector_id):
            print(
                f"  v{version.version}: round {version.round:3d}, suspects {list(version.suspects)}"
            )
        print("WorkerFlagged events in the log:")
        for stored in reg.events(topic=WorkerFlagged, subject=detector_id):
            e = stored.event
            statistic = "" if e.statistic is None else f" (statistic {e.statistic:.3g})"
            print(f"  round {e.round:3d}: worker {e.worker:2d} flagged, {e.reason}{statistic}")
