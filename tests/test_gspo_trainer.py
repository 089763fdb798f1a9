"""GSPOTrainer end to end: learning curves, negative controls, determinism, checkpoint → resume,
entities and provenance, events, blob integrity, bad input, and rollout alignment (GSPO.md).

Everything runs on the CPU with one thread and fixed seeds, so every number below is exact and
repeatable on one machine. Each learning curve is trained ONCE (module-scoped fixtures) and
several properties are asserted on it. Measured with the defaults (paper ε = 3e-4/4e-4, 16
prompts × 8, 4 minibatches, Adam 1e-3), seed 0 (2-core dev box):

* ``target``:  exact 0.75 at step 25, 0.90 at 30, 0.99 at 60 (mean of steps 56–60: 0.97);
* ``reverse``: reward 0.07 at step 25 (exact 0 until step ~45), exact 0.95 at 100, 0.99 at 200;
* ``count``:   reward 0.94 at step 40, a dip to ~0.72 around step 100–125, 0.97 at 300
  (mean of steps 296–300: 0.93).
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import safetensors.torch
import torch

import forseti as fs
from forseti.errors import IntegrityError, ValidationError
from forseti.gspo import (
    GSPOConfigEntity,
    GSPOStepCompleted,
    GSPOTrainer,
    GSPOTrainingCompleted,
    GSPOTrainingRunEntity,
    GSPOTrainingStarted,
    TinyCausalLM,
    TinyLMConfigEntity,
)
from forseti.gspo.step import rollout
from forseti.gspo.tasks import (
    EOS,
    PAD,
    CountTask,
    ExactMatchReward,
    PartialCreditReward,
    ReverseTask,
    TargetTask,
)

torch.set_num_threads(1)

METRIC_KEYS = (
    "reward_mean",
    "reward_std",
    "exact",
    "frac_reward_zero_std",
    "length_mean",
    "length_min",
    "length_max",
    "truncated_frac",
    "tokens",
    "loss",
    "clip_frac",
    "clip_frac_low",
    "clip_frac_high",
    "log_ratio_abs_mean",
    "ratio_min",
    "ratio_max",
    "kl",
    "adv_mean",
    "adv_std",
    "grad_norm",
    "entropy",
    "steps_per_s",
    "tokens_per_s",
)
TIMING = {"steps_per_s", "tokens_per_s"}  # wall-clock: the only metrics that may differ run to run


# -- helpers -------------------------------------------------------------------------------------


def deterministic(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """A history without its wall-clock metrics (everything else must repeat exactly)."""
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def mean(history: list[dict[str, float]], key: str, first: int, last: int) -> float:
    """Mean of ``key`` over steps ``first..last`` (1-based, inclusive)."""
    values = [h[key] for h in history[first - 1 : last]]
    assert len(values) == last - first + 1
    return sum(values) / len(values)


def header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, read by hand (independent of forseti)."""
    (size,) = struct.unpack("<Q", data[:8])
    return dict(json.loads(data[8 : 8 + size])["__metadata__"])


def flip_last_byte(path: Path) -> None:
    os.chmod(path, 0o644)  # blob files are stored read-only
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def fresh_policy(seed: int) -> TinyCausalLM:
    """The policy GSPOTrainer builds for ``seed`` (default config), built the same way."""
    torch.manual_seed(seed)
    return TinyCausalLM(TinyLMConfigEntity(vocab_size=14))


def sqlite(path: Path, **kwargs: Any) -> fs.EntityRegistry:
    return fs.open(f"sqlite:///{path / 'runs.db'}", blob_dir=path / "blobs", **kwargs)


def small(**changes: Any) -> GSPOConfigEntity:
    """A cheap config for plumbing tests (4 prompts × 4 responses, 2 minibatches)."""
    base: dict[str, Any] = {
        "task": "target",
        "seed": 5,
        "prompts_per_step": 4,
        "group_size": 4,
        "minibatches": 2,
    }
    return GSPOConfigEntity(**{**base, **changes})


def train_curve(task: str, steps: int, **config: Any) -> SimpleNamespace:
    reg = fs.open("memory://")
    trainer = GSPOTrainer(
        reg, config=GSPOConfigEntity(task=task, seed=0, **config), run_name=task, progress=False
    )
    t0 = time.perf_counter()
    run = trainer.train(steps)
    return SimpleNamespace(
        reg=reg, trainer=trainer, run=run, h=trainer.history, seconds=time.perf_counter() - t0
    )


# -- 1. learning (each curve trained once) -------------------------------------------------------


@pytest.fixture(scope="module")
def target_curve() -> Iterator[SimpleNamespace]:
    out = train_curve("target", 60)
    yield out
    out.reg.close()


@pytest.fixture(scope="module")
def reverse_curve() -> Iterator[SimpleNamespace]:
    out = train_curve("reverse", 200)
    yield out
    out.reg.close()


@pytest.fixture(scope="module")
def count_curve() -> Iterator[SimpleNamespace]:
    out = train_curve("count", 300)
    yield out
    out.reg.close()


@pytest.mark.slow
def test_target_learns_exact_by_step_60(target_curve: SimpleNamespace) -> None:
    h = target_curve.h
    assert len(h) == 60 and target_curve.run.step == 60 and target_curve.run.status == "completed"
    # from scratch: nothing right at first, and a negative partial-credit reward
    assert h[0]["exact"] == 0.0 and h[0]["reward_mean"] < 0.0
    # exact >= 0.9: at step 60 itself, and on the mean of the last 5 steps (56..60: noise-robust)
    assert h[59]["exact"] >= 0.9
    assert mean(h, "exact", 56, 60) >= 0.9
    assert mean(h, "reward_mean", 56, 60) >= 0.95
    # what was learned is the right shape: 4 digits + EOS, almost never truncated
    assert abs(h[-1]["length_mean"] - 5.0) < 0.2 and h[-1]["truncated_frac"] < 0.05
    # the policy sharpened: per-token entropy (NLL of its own samples) fell a lot
    assert h[-1]["entropy"] < 0.25 * h[0]["entropy"]


@pytest.mark.slow
def test_target_curve_clip_and_ratio_metrics_are_consistent(target_curve: SimpleNamespace) -> None:
    h = target_curve.h
    # paper ε with 4 minibatches: minibatches 2..4 are off-policy, so clipping happens
    assert max(s["clip_frac"] for s in h) > 0.0
    assert max(s["log_ratio_abs_mean"] for s in h) > 0.0
    for s in h:
        assert s["clip_frac"] == pytest.approx(s["clip_frac_low"] + s["clip_frac_high"], abs=1e-6)
        assert 0.0 <= s["clip_frac"] <= 1.0
        # (averaged over the 4 minibatches: the first is on-policy, ratio ≡ 1, so min ≤ max)
        assert 0.0 < s["ratio_min"] <= s["ratio_max"]
        assert s["kl"] >= -1e-7 and s["grad_norm"] >= 0.0
        assert s["length_min"] <= s["length_mean"] <= s["length_max"]


@pytest.mark.slow
def test_reverse_learns_after_a_plateau(reverse_curve: SimpleNamespace) -> None:
    h = reverse_curve.h
    assert len(h) == 200
    # step 25: still on the plateau (partial credit only, no exact answers yet)
    assert h[24]["reward_mean"] < 0.2
    assert all(s["exact"] == 0.0 for s in h[:25])
    # by step 200: exact >= 0.9 at step 200 and on the mean of steps 196..200
    assert h[199]["exact"] >= 0.9
    assert mean(h, "exact", 196, 200) >= 0.9
    assert mean(h, "reward_mean", 196, 200) >= 0.95
    assert abs(h[-1]["length_mean"] - 5.0) < 0.2


@pytest.mark.slow
def test_count_learns_variable_lengths_by_step_300(count_curve: SimpleNamespace) -> None:
    h = count_curve.h
    assert len(h) == 300 and h[0]["reward_mean"] < 0.0
    # the count curve is noisy (a dip around step 100-125): judged on the mean of steps 296..300
    assert mean(h, "reward_mean", 296, 300) >= 0.9
    assert h[-1]["truncated_frac"] < 0.05
    # variable-length answers: n = 0 is a bare EOS (length 1), n = 9 is 10 tokens
    assert mean(h, "length_min", 296, 300) < 2.0 and mean(h, "length_max", 296, 300) > 8.0


# -- 2. negative controls ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["reward_fn", "task_params"])
def test_exact_only_reward_from_scratch_never_moves_the_policy(how: str) -> None:
    """0/1 exact reward from scratch: every group has zero variance ⇒ A ≡ 0 ⇒ zero gradients ⇒
    Adam leaves every parameter bit-identical. Given as a Task's reward_fn, or by name in the
    stored config (task_params={"reward": "exact"})."""
    reg = fs.open("memory://")
    if how == "reward_fn":
        task = ReverseTask(reward_fn=ExactMatchReward(ReverseTask().target))
        trainer = GSPOTrainer(
            reg, config=GSPOConfigEntity(task="reverse", seed=0), task=task, progress=False
        )
    else:
        config = GSPOConfigEntity(task="reverse", seed=0, task_params={"reward": "exact"})
        trainer = GSPOTrainer(reg, config=config, progress=False)
        assert isinstance(trainer.task.reward, ExactMatchReward)
    before = weights(trainer.policy)
    trainer.train(8)
    assert len(trainer.history) == 8
    for s in trainer.history:
        assert s["frac_reward_zero_std"] == 1.0
        assert s["reward_mean"] == 0.0 and s["reward_std"] == 0.0 and s["exact"] == 0.0
        assert s["adv_mean"] == 0.0 and s["adv_std"] == 0.0
        assert s["loss"] == 0.0 and s["grad_norm"] == 0.0 and s["clip_frac"] == 0.0
    assert_same_tensors(weights(trainer.policy), before)
    # and the stored final checkpoint holds exactly the initial weights
    stored = safetensors.torch.load(reg.read_blob(trainer.checkpoints[-1].weights))
    assert_same_tensors(stored, before)
    reg.close()


@pytest.mark.slow
def test_flipped_reward_sign_lowers_the_true_reward() -> None:
    """Rewarding −partial credit: the policy learns the wrong thing, so the true (partial-credit)
    reward falls: mean of steps 1..5 vs 26..30 (true = −logged reward)."""
    reg = fs.open("memory://")
    credit = PartialCreditReward(TargetTask().target)
    task = TargetTask(reward_fn=lambda p, r: -credit(p, r))
    trainer = GSPOTrainer(
        reg, config=GSPOConfigEntity(task="target", seed=0), task=task, progress=False
    )
    trainer.train(30)
    true = [{"reward_mean": -s["reward_mean"]} for s in trainer.history]
    first, last = mean(true, "reward_mean", 1, 5), mean(true, "reward_mean", 26, 30)
    assert last < first - 0.05, (first, last)
    assert last < true[0]["reward_mean"]
    # it learned to avoid EOS (−0.5 under the true reward): every response runs to the limit
    assert trainer.history[-1]["truncated_frac"] > 0.9
    reg.close()


# -- 3. determinism ------------------------------------------------------------------------------


def test_same_seed_same_run_different_seed_different_run(tmp_path: Path) -> None:
    def run(reg: fs.EntityRegistry, seed: int) -> GSPOTrainer:
        trainer = GSPOTrainer(
            reg, config=GSPOConfigEntity(task="target", seed=seed), progress=False
        )
        trainer.train(8)
        return trainer

    # the store must not matter: one run in memory, its twin in SQLite
    with fs.open("memory://") as r1, sqlite(tmp_path) as r2, fs.open("memory://") as r3:
        a, b, c = run(r1, 0), run(r2, 0), run(r3, 1)
        assert deterministic(a.history) == deterministic(b.history)  # exact float equality
        assert_same_tensors(weights(a.policy), weights(b.policy))
        assert_same_tensors(
            safetensors.torch.load(r1.read_blob(a.checkpoints[-1].weights)),
            safetensors.torch.load(r2.read_blob(b.checkpoints[-1].weights)),
        )
        assert deterministic(a.history) != deterministic(c.history)
        assert [s["reward_mean"] for s in a.history] != [s["reward_mean"] for s in c.history]
        wa, wc = weights(a.policy), weights(c.policy)
        assert not all(torch.equal(wa[k], wc[k]) for k in wa)


# -- 4. checkpoint → resume ----------------------------------------------------------------------


@pytest.mark.parametrize("where", ["same-registry", "new-registry-same-sqlite-file"])
def test_resume_from_step_10_continues_bit_exactly(where: str, tmp_path: Path) -> None:
    reg = fs.open("memory://") if where == "same-registry" else sqlite(tmp_path)
    a = GSPOTrainer(
        reg,
        config=GSPOConfigEntity(task="reverse", seed=2, checkpoint_every=10),
        run_name="a",
        progress=False,
    )
    a.train(20)
    assert [c.step for c in a.checkpoints] == [10, 20]
    at10 = a.checkpoints[0].ref
    expected = deterministic(a.history[10:])
    final_weights = weights(a.policy)
    final_adam = a.state.optimizer.state_dict()["state"]
    run_lineage = a.checkpoints[-1].run.lineage_id
    if where != "same-registry":  # the realistic case: a new process opens the same file
        reg.close()
        reg = sqlite(tmp_path)

    b = GSPOTrainer.resume(reg, at10)  # a ref: resolved in this registry
    assert b.state.step == 10 and b.history == []
    assert b.config.ref == a.config.ref and b.model.ref == a.model.ref
    run = b.train(20)

    assert len(b.history) == 10
    assert deterministic(b.history) == expected  # steps 11..20, exact float equality
    assert_same_tensors(weights(b.policy), final_weights)
    adam = b.state.optimizer.state_dict()["state"]
    assert adam.keys() == final_adam.keys()
    for index, values in adam.items():
        for key, value in values.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(final_adam[index][key]))
    # the same run lineage goes on, and its new final checkpoint holds the same weights
    assert run.lineage_id == run_lineage and run.status == "completed" and run.step == 20
    assert [c.step for c in b.checkpoints] == [20]
    assert_same_tensors(
        safetensors.torch.load(reg.read_blob(b.checkpoints[-1].weights)), final_weights
    )
    reg.close()


def test_resume_from_an_earlier_checkpoint_to_a_smaller_total() -> None:
    with fs.open("memory://") as reg:
        a = GSPOTrainer(reg, config=small(checkpoint_every=2), progress=False)
        a.train(6)
        b = GSPOTrainer.resume(reg, a.checkpoints[0])  # step 2
        run = b.train(4)
        assert run.step == 4 and run.status == "completed"


# -- 5. entities and provenance ------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """One 12-step run (checkpoint every 4) in SQLite, with its bus events and per-step weights."""
    path = tmp_path_factory.mktemp("gspo-recorded")
    reg = sqlite(path)
    trainer = GSPOTrainer(
        reg,
        config=GSPOConfigEntity(task="target", seed=0, checkpoint_every=4),
        run_name="recorded",
        progress=False,
    )
    events: list[Any] = []
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def on_step(e: GSPOStepCompleted) -> None:
        events.append(e)
        snapshots[e.step] = weights(trainer.policy)

    reg.bus.subscribe(GSPOTrainingStarted, events.append)
    reg.bus.subscribe(GSPOStepCompleted, on_step)
    reg.bus.subscribe(GSPOTrainingCompleted, events.append)
    run = trainer.train(12)
    yield SimpleNamespace(reg=reg, trainer=trainer, run=run, events=events, snapshots=snapshots)
    reg.close()


def test_run_entity_names_its_model_and_config(recorded: SimpleNamespace) -> None:
    reg, trainer, run = recorded.reg, recorded.trainer, recorded.run
    assert isinstance(run, GSPOTrainingRunEntity) and reg.get(run.lineage_id) == run  # the head
    assert run.status == "completed" and run.step == run.total_steps == 12
    assert run.algorithm == "gspo" and run.task == "target" and run.name == "recorded"
    assert run.metrics == trainer.history[-1]
    assert run.started_at is not None and run.finished_at is not None
    assert run.finished_at >= run.started_at
    config, model = reg.get(run.config), reg.get(run.model)
    assert (
        isinstance(config, GSPOConfigEntity) and config.seed == 0 and config.checkpoint_every == 4
    )
    assert isinstance(model, fs.ModelEntity) and model.ref == trainer.model.ref
    assert model.architecture == "TinyCausalLM" and model.vocab_size == 14
    assert model.num_parameters == sum(p.numel() for p in trainer.policy.parameters())
    assert trainer.model_config.ref in model.derived_from
    assert isinstance(reg.get(trainer.model_config.ref), TinyLMConfigEntity)


def test_checkpoint_every_n_steps(recorded: SimpleNamespace) -> None:
    reg, trainer, run = recorded.reg, recorded.trainer, recorded.run
    ckpts = trainer.checkpoints
    assert [c.step for c in ckpts] == [4, 8, 12]  # total/N checkpoints, the last at the end
    assert len(reg.find(fs.CheckpointEntity)) == 3
    assert ckpts[-1].run == run.ref  # the final checkpoint names the completed run version
    for c in ckpts:
        assert isinstance(c, fs.CheckpointEntity)
        assert c.weights.format == "safetensors" and c.optimizer_state is not None
        assert c.optimizer_state.format == "safetensors"
        assert c.model == trainer.model.ref
        assert c.metrics == trainer.history[c.step - 1]
        owner = reg.get(c.run)  # the run version committed with it says the same step
        assert isinstance(owner, GSPOTrainingRunEntity) and owner.lineage_id == run.lineage_id
        assert owner.step == c.step and owner.metrics == c.metrics


def test_checkpoint_every_n_with_a_remainder_ends_with_the_last_step() -> None:
    with fs.open("memory://") as reg:
        trainer = GSPOTrainer(reg, config=small(checkpoint_every=3), progress=False)
        trainer.train(7)
        assert [c.step for c in trainer.checkpoints] == [3, 6, 7]


def test_weights_blob_is_plain_safetensors_with_named_metadata(recorded: SimpleNamespace) -> None:
    reg, trainer = recorded.reg, recorded.trainer
    for c in trainer.checkpoints:
        data = reg.read_blob(c.weights)
        tensors = safetensors.torch.load(data)
        assert_same_tensors(tensors, recorded.snapshots[c.step])  # the weights after that step
        meta = header_metadata(data)
        assert meta["format"] == "forseti.gspo/1" and meta["architecture"] == "TinyCausalLM"
        assert meta["step"] == str(c.step)
        assert meta["model"] == str(trainer.model.ref)
        assert meta["config"] == str(trainer.config.ref)
        assert meta["run"].split("@")[0] == str(c.run.lineage_id)
    assert_same_tensors(
        safetensors.torch.load(reg.read_blob(trainer.checkpoints[-1].weights)),
        weights(trainer.policy),
    )


def test_weights_blob_header_names_the_checkpoints_run_version(recorded: SimpleNamespace) -> None:
    for c in recorded.trainer.checkpoints:
        assert header_metadata(recorded.reg.read_blob(c.weights))["run"] == str(c.run)


def test_training_state_blob_holds_optimizer_and_generators(recorded: SimpleNamespace) -> None:
    reg, trainer = recorded.reg, recorded.trainer
    data = reg.read_blob(trainer.checkpoints[-1].optimizer_state)
    tensors = safetensors.torch.load(data)
    assert {"rng.prompts", "rng.sample", "rng.shuffle"} <= tensors.keys()
    n_params = len(list(trainer.policy.parameters()))
    for i in range(n_params):
        assert f"optimizer.state.{i}.exp_avg" in tensors
        assert f"optimizer.state.{i}.exp_avg_sq" in tensors
    opt = json.loads(header_metadata(data)["optimizer"])
    assert opt["param_groups"][0]["lr"] == 1e-3
    live = trainer.state.optimizer.state_dict()["state"]
    assert torch.equal(tensors["optimizer.state.0.exp_avg"], live[0]["exp_avg"])


def test_checkpoint_ancestors_and_model_lineage(recorded: SimpleNamespace) -> None:
    reg, trainer, run = recorded.reg, recorded.trainer, recorded.run
    for c in trainer.checkpoints:
        ancestors = set(reg.ancestors(c))
        assert c.run in ancestors
        assert trainer.config.ref in ancestors
        assert trainer.model.ref in ancestors
        assert trainer.model_config.ref in ancestors
    tree = fs.trees.model_lineage(reg, trainer.model)
    assert tree.root.ref == trainer.model.ref
    assert run.ref in tree
    for c in trainer.checkpoints:
        assert c.ref in tree


# -- 6. events -----------------------------------------------------------------------------------


def test_bus_events_in_order_with_every_metric(recorded: SimpleNamespace) -> None:
    events, trainer, run = recorded.events, recorded.trainer, recorded.run
    assert [type(e) for e in events] == (
        [GSPOTrainingStarted] + [GSPOStepCompleted] * 12 + [GSPOTrainingCompleted]
    )
    started, steps, done = events[0], events[1:-1], events[-1]
    assert started.step == 0 and started.total_steps == 12 and started.task == "target"
    assert started.run_name == "recorded" and started.subject.lineage_id == run.lineage_id
    assert [e.step for e in steps] == list(range(1, 13))
    for e, h in zip(steps, trainer.history, strict=True):
        assert set(METRIC_KEYS) <= e.metrics.keys()
        assert all(isinstance(v, float) and math.isfinite(v) for v in e.metrics.values())
        assert e.metrics == h
        assert e.subject.lineage_id == run.lineage_id
    assert done.step == 12 and done.metrics == trainer.history[-1] and done.duration_s > 0
    assert done.subject.lineage_id == run.lineage_id


def test_events_are_persisted_in_the_log(recorded: SimpleNamespace) -> None:
    reg, trainer, run = recorded.reg, recorded.trainer, recorded.run
    reg.flush_events()
    stored = reg.events(topic=GSPOStepCompleted)
    assert sorted(s.event.step for s in stored) == list(range(1, 13))  # each exactly once
    by_step = {s.event.step: s.event for s in stored}
    for step, h in enumerate(trainer.history, 1):
        assert by_step[step].metrics == h  # floats round-trip exactly
        assert by_step[step].subject.lineage_id == run.lineage_id
    of_run = reg.events(subject=run.lineage_id)
    topics = [s.event.topic for s in of_run]
    assert topics.count(GSPOTrainingStarted.topic) == 1
    assert topics.count(GSPOTrainingCompleted.topic) == 1
    assert topics.count(GSPOStepCompleted.topic) == 12


def test_log_keeps_started_steps_completed_order(tmp_path: Path) -> None:
    # a long writer interval takes the background thread's timing out of the picture
    with sqlite(tmp_path, event_interval=3600.0) as reg:
        trainer = GSPOTrainer(reg, config=small(checkpoint_every=2), progress=False)
        run = trainer.train(5)
        reg.flush_events()
        gspo: list[Any] = [
            s.event
            for s in reg.events(subject=run.lineage_id)
            if s.event.topic.startswith("forseti.gspo.")
        ]
        assert [type(e) for e in gspo] == (
            [GSPOTrainingStarted] + [GSPOStepCompleted] * 5 + [GSPOTrainingCompleted]
        )
        assert [e.step for e in gspo[1:-1]] == [1, 2, 3, 4, 5]


def test_completed_event_names_the_final_checkpoint(recorded: SimpleNamespace) -> None:
    done = recorded.events[-1]
    assert done.checkpoint == recorded.trainer.checkpoints[-1].ref


# -- 7. integrity --------------------------------------------------------------------------------


@pytest.fixture
def stored_run(tmp_path: Path) -> Iterator[SimpleNamespace]:
    reg = sqlite(tmp_path)
    trainer = GSPOTrainer(reg, config=small(seed=5), progress=False)
    trainer.train(2)
    yield SimpleNamespace(reg=reg, trainer=trainer, ckpt=trainer.checkpoints[-1])
    reg.close()


def test_tampered_weights_blob_is_rejected_before_loading(stored_run: SimpleNamespace) -> None:
    reg, ckpt = stored_run.reg, stored_run.ckpt
    flip_last_byte(reg.blob_path(ckpt.weights))  # a tensor byte; the header still parses
    with pytest.raises(IntegrityError):
        GSPOTrainer.resume(reg, ckpt)
    policy = fresh_policy(5)
    with pytest.raises(IntegrityError):
        GSPOTrainer.resume(reg, ckpt, policy=policy)
    assert_same_tensors(weights(policy), weights(fresh_policy(5)))  # nothing reached the model


def test_tampered_training_state_is_rejected_before_loading(stored_run: SimpleNamespace) -> None:
    reg, ckpt = stored_run.reg, stored_run.ckpt
    flip_last_byte(reg.blob_path(ckpt.optimizer_state))
    policy = fresh_policy(5)
    with pytest.raises(IntegrityError):
        GSPOTrainer.resume(reg, ckpt, policy=policy)
    assert_same_tensors(weights(policy), weights(fresh_policy(5)))


def test_resume_rejects_what_is_not_a_gspo_checkpoint(stored_run: SimpleNamespace) -> None:
    reg, ckpt, trainer = stored_run.reg, stored_run.ckpt, stored_run.trainer
    # a checkpoint without a training state
    bare = reg.add(
        fs.CheckpointEntity(run=ckpt.run, model=ckpt.model, step=2, weights=ckpt.weights)
    )
    with pytest.raises(ValidationError):
        GSPOTrainer.resume(reg, bare)
    # a checkpoint of a plain (non-GSPO) training run
    plain = reg.add(fs.TrainingRunEntity(name="sft", model=trainer.model.ref))
    other = reg.add(
        fs.CheckpointEntity(
            run=plain.ref,
            model=ckpt.model,
            step=2,
            weights=ckpt.weights,
            optimizer_state=ckpt.optimizer_state,
        )
    )
    with pytest.raises(ValidationError):
        GSPOTrainer.resume(reg, other)
    # not a checkpoint at all
    with pytest.raises(ValidationError):
        GSPOTrainer.resume(reg, trainer.model.ref)


# -- 8. bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("total", [0, -3, True, False, 2.0, "5", None])
def test_train_rejects_bad_total_steps(total: Any) -> None:
    with fs.open("memory://") as reg:
        trainer = GSPOTrainer(reg, config=small(), progress=False)
        with pytest.raises(ValidationError):
            trainer.train(total)
        assert trainer.run is None and trainer.state.step == 0 and trainer.history == []
        assert reg.find(GSPOTrainingRunEntity) == []


def test_train_rejects_a_total_below_the_current_step() -> None:
    with fs.open("memory://") as reg:
        trainer = GSPOTrainer(reg, config=small(), progress=False)
        run = trainer.train(3)
        with pytest.raises(ValidationError):
            trainer.train(2)
        assert trainer.state.step == 3 and len(trainer.history) == 3
        assert reg.get(run.lineage_id) == run  # no new version


@pytest.mark.parametrize(
    "changes",
    [
        {"group_size": 1},  # G = 1: the std of one sample (GSPO.md trap 10)
        {"group_size": 0},
        {
            "prompts_per_step": 2,
            "group_size": 2,
            "minibatches": 5,
        },  # more minibatches than responses
        {"prompts_per_step": 0},
        {"minibatches": 0},
        {"eps_low": 1.0},
        {"lr": 0.0},
        {"level": "tokens"},
    ],
)
def test_config_rejects_bad_settings(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        GSPOConfigEntity(**changes)


def test_unknown_task_or_task_params_are_rejected() -> None:
    with fs.open("memory://") as reg:
        with pytest.raises(ValidationError, match="unknown task"):
            GSPOTrainer(reg, config=GSPOConfigEntity(task="sorting"), progress=False)
        with pytest.raises(ValidationError):
            GSPOTrainer(
                reg,
                config=GSPOConfigEntity(task="reverse", task_params={"digits": 3}),
                progress=False,
            )
        assert reg.find(GSPOTrainingRunEntity) == [] and reg.find(fs.ModelEntity) == []


def test_rejected_task_stores_nothing() -> None:
    with fs.open("memory://") as reg:
        with pytest.raises(ValidationError):
            GSPOTrainer(reg, config=GSPOConfigEntity(task="sorting"), progress=False)
        assert reg.find(GSPOConfigEntity) == []


# -- 9. alignment end to end ---------------------------------------------------------------------


def test_rollout_response_mask_covers_exactly_the_sampled_tokens() -> None:
    seen: list[tuple[list[list[int]], list[list[int]]]] = []
    credit: Callable[..., torch.Tensor] = PartialCreditReward(CountTask().target)

    def recording(prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        seen.append((prompts, responses))
        return credit(prompts, responses)

    with fs.open("memory://") as reg:
        trainer = GSPOTrainer(
            reg,
            config=GSPOConfigEntity(task="count", seed=3),
            task=CountTask(reward_fn=recording),
            progress=False,
        )
        trainer.train(2)  # a partly trained policy: a mix of EOS positions and truncations
        seen.clear()
        ro = rollout(trainer.state)
    gen, P = ro.gen, ro.gen.prompt_len
    N, R = gen.response.shape
    assert N == 16 * 8 and R <= CountTask().max_new_tokens
    mask, resp = gen.response_mask, gen.response
    has_eos = (resp == EOS) & mask
    assert bool(has_eos.any(dim=1).any()) and bool(gen.truncated.any())  # both kinds present
    assert gen.lengths.min() < gen.lengths.max()
    assert bool(mask[:, 0].all())  # the first response token is always a sampled token
    assert torch.equal(gen.attention_mask[:, P:].bool(), mask)
    ((prompts, responses),) = seen
    for i in range(N):
        n = int(gen.lengths[i])
        assert mask[i].tolist() == [j < n for j in range(R)]  # a prefix
        row = resp[i].tolist()
        eos_at = row.index(EOS) if EOS in row[:n] else None
        if eos_at is not None:  # ends at the first EOS, nothing after it
            assert n == eos_at + 1 and not bool(gen.truncated[i])
            assert all(t == PAD for t in row[n:])
        else:  # no EOS: truncated at the limit
            assert n == R == CountTask().max_new_tokens and bool(gen.truncated[i])
        assert EOS not in row[: n - 1]
        assert responses[i] == row[:n]  # the reward saw exactly the masked tokens
        assert prompts[i] == [
            t
            for t, m in zip(
                gen.tokens[i, :P].tolist(), gen.attention_mask[i, :P].tolist(), strict=True
            )
            if m
        ]
    assert torch.equal(ro.rewards, credit(prompts, responses))
    # the teacher-forced log-probs the update uses score the same tokens the sampler drew:
    # position P-1 scores the first response token (no off-by-one), masked tokens only
    assert torch.allclose(ro.old_logp[mask], gen.logprobs[mask], atol=1e-5, rtol=0)
    assert bool((gen.logprobs[~mask] == 0).all())
    # the trainer's own step sees the same alignment: tokens == sum of the lengths
    assert trainer.history[-1]["tokens"] == pytest.approx(trainer.history[-1]["length_mean"] * N)


# -- a failing run is marked failed; training to the current step adds nothing -------------------


class _Boom(RuntimeError):
    pass


def test_an_error_during_training_marks_the_run_failed_and_propagates() -> None:
    reg = fs.open("memory://")
    calls = {"n": 0}

    def reward(prompts: list[list[int]], responses: list[list[int]]) -> list[float]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Boom("reward service down")
        return [0.0] * len(prompts)

    trainer = GSPOTrainer(reg, config=small(), task=ReverseTask(reward_fn=reward), progress=False)
    with pytest.raises(_Boom):
        trainer.train(5)
    run = reg.get(trainer.run.lineage_id)  # type: ignore[union-attr]
    assert run.status == "failed" and run.step == 2
    assert "reward service down" in (run.error or "") and run.finished_at is not None


def test_training_to_the_step_already_reached_adds_no_checkpoint() -> None:
    reg = fs.open("memory://")
    trainer = GSPOTrainer(reg, config=small(), progress=False)
    trainer.train(2)
    blobs_before = len(trainer.checkpoints)
    again = trainer.train(2)
    assert len(trainer.checkpoints) == blobs_before == 1
    assert again.status == "completed" and again.step == 2
    assert reg.get(again.lineage_id).version == again.version


def test_beta_adds_a_kl_term_to_a_frozen_reference_that_resumes_exactly() -> None:
    reg = fs.open("memory://")
    full = GSPOTrainer(reg, config=small(beta=0.5, checkpoint_every=2), progress=False)
    full.train(4)
    kls = [h["kl"] for h in full.history]
    assert all(k > 0 for k in kls)  # every step but the very first minibatch has moved away
    assert kls[0] < kls[-1]  # and it drifts further over the run
    reference = full.state.reference
    assert reference is not None and all(not p.requires_grad for p in reference.parameters())
    assert_same_tensors(weights(reference), weights(fresh_policy(5)))  # the starting policy
    resumed = GSPOTrainer.resume(reg, full.checkpoints[0], progress=False)  # step 2
    resumed.train(4)
    assert deterministic(resumed.history) == deterministic(full.history[2:])
    assert_same_tensors(weights(resumed.policy), weights(full.policy))


def test_ratio_extremes_are_over_the_whole_step() -> None:
    from forseti.gspo.step import rollout, update

    trainer = GSPOTrainer(fs.open("memory://"), config=small(eps_low=0.2, eps_high=0.2), progress=False)
    trainer.train(1)
    metrics = update(trainer.state, rollout(trainer.state))
    assert float(metrics["ratio_min"]) <= 1.0 <= float(metrics["ratio_max"])
    assert float(metrics["policy_kl"]) >= 0.0
