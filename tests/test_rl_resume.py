"""forseti.rl determinism and checkpoint → resume: a run resumed from a checkpoint continues
bit-identically to one that was never interrupted (PPO on CartPole, SAC on Pendulum, on CPU),
also from a registry re-opened on the same store.

Compared bit for bit: the final policy weights, and every tensor of the training state (the
optimizers' moments, SAC's entropy coefficient, the replay buffer, the environments' state and
the random generators), read back from the stored blobs with ``read_verified`` +
``read_safetensors``; and every logged metric after the resume point (but the wall-clock ones).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import forseti as fs
from forseti.errors import ValidationError
from forseti.export.checkpoints import read_verified
from forseti.export.tensorfile import read_safetensors

torch.set_num_threads(1)

#: metrics that differ between identical runs: wall-clock, and SB3's per-learn() iteration count
UNTIMED = {"fps", "time_elapsed", "iterations"}


# -- helpers -------------------------------------------------------------------------------------


def blob_tensors(
    reg: fs.EntityRegistry, blob: fs.BlobRef
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors, meta = read_safetensors(read_verified(reg, blob))
    return {k: v.clone() for k, v in tensors.items()}, meta


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert different == []


def assert_same_checkpoint(
    reg: fs.EntityRegistry, a: fs.CheckpointEntity, b: fs.CheckpointEntity
) -> None:
    """The same step, policy weights and training state (every tensor, and its description)."""
    assert a.step == b.step
    wa, _ = blob_tensors(reg, a.weights)
    wb, _ = blob_tensors(reg, b.weights)
    assert_same_tensors(wa, wb)
    sa, ma = blob_tensors(reg, a.optimizer_state)
    sb, mb = blob_tensors(reg, b.optimizer_state)
    assert_same_tensors(sa, sb)
    assert untimed(json.loads(ma["forseti.rl.state"])) == untimed(
        json.loads(mb["forseti.rl.state"])
    )


#: wall-clock entries of the state: Monitor's episode times ("t" of each episode's info)
CLOCK = {"t", "episode_times", "t_start"}


def untimed(tree: Any) -> Any:
    """A training state's description without its wall-clock entries."""
    if isinstance(tree, dict):
        return {k: untimed(v) for k, v in tree.items() if k not in CLOCK}
    if isinstance(tree, list):
        return [untimed(v) for v in tree]
    return tree


def metrics_after(
    events: list[fs.rl.RLStepMetrics], step: int
) -> list[tuple[int, dict[str, float]]]:
    return [
        (e.timestep, {k: v for k, v in e.metrics.items() if k not in UNTIMED})
        for e in events
        if e.timestep > step
    ]


def assert_same_metrics_after(
    a: list[fs.rl.RLStepMetrics], b: list[fs.rl.RLStepMetrics], step: int
) -> None:
    """The metrics logged after ``step`` are the same, exact float equality. The first log after
    a resume lacks the losses of the update made before the checkpoint (SB3 logs an update's
    losses with the next rollout's statistics, and its logger is new): those keys only."""
    expected, got = metrics_after(a, step), metrics_after(b, step)
    assert [t for t, _ in got] == [t for t, _ in expected]
    first_expected, first_got = expected[0][1], got[0][1]
    assert first_got.keys() <= first_expected.keys()
    assert {"ep_rew_mean", "ep_len_mean", "total_timesteps"} <= first_got.keys()
    assert first_got == {k: first_expected[k] for k in first_got}
    assert got[1:] == expected[1:]


def sqlite(path: Path) -> fs.EntityRegistry:
    return fs.open(f"sqlite:///{path / 'rl.db'}", blob_dir=path / "blobs")


def by_step(reg: fs.EntityRegistry, run: fs.rl.RLTrainingRunEntity) -> list[fs.CheckpointEntity]:
    """The checkpoints of ``run`` (any version), in the order they were made."""
    found = [
        c
        for c in reg.find(fs.CheckpointEntity)
        if c.run is not None and c.run.lineage_id == run.lineage_id
    ]
    return sorted(found, key=lambda c: (c.created_at, c.step))


def small_sac() -> fs.rl.RLConfigEntity:
    """SAC with the zoo's Pendulum learning rate, a small network and buffer: fast on one thread.

    (An SB3ConfigEntity: ``SACConfigEntity(policy_kwargs={"net_arch": [32, 32]})`` is rejected,
    see test_rl_envs_config.py::test_policy_kwargs_net_arch_sets_the_network.)"""
    return fs.rl.SB3ConfigEntity(
        algorithm_path="SAC",
        hyperparameters={
            "learning_rate": 1e-3,
            "learning_starts": 200,
            "buffer_size": 5000,
            "batch_size": 64,
            "policy_kwargs": {"net_arch": [32, 32]},
        },
    )


def interrupted(
    reg: fs.EntityRegistry,
    algo: str,
    env: str,
    config: fs.rl.RLConfigEntity,
    total: int,
    every: int,
    seed: int,
) -> SimpleNamespace:
    """A run to ``total`` (checkpoint every ``every``), then a second run of the same lineage
    resumed from its first checkpoint to the same total; with each one's metrics."""
    a_metrics: list[fs.rl.RLStepMetrics] = []
    sub = reg.bus.subscribe(fs.rl.RLStepMetrics, a_metrics.append)
    a = fs.rl.train_sb3(
        reg, algo, env, config, total, seed=seed, checkpoint_every=every, progress=False
    )
    reg.bus.unsubscribe(sub)
    a_ckpts = by_step(reg, a)
    started: list[fs.rl.RLTrainingStarted] = []
    b_metrics: list[fs.rl.RLStepMetrics] = []
    subs = [
        reg.bus.subscribe(fs.rl.RLStepMetrics, b_metrics.append),
        reg.bus.subscribe(fs.rl.RLTrainingStarted, started.append),
    ]
    trainer = fs.rl.resume_trainer(reg, a_ckpts[0])
    at_resume = trainer.model.num_timesteps
    b = trainer.train(total, checkpoint_every=every)
    for s in subs:
        reg.bus.unsubscribe(s)
    return SimpleNamespace(
        reg=reg,
        a=a,
        b=b,
        a_ckpts=a_ckpts,
        b_ckpts=trainer.checkpoints[1:],
        trainer=trainer,
        a_metrics=a_metrics,
        b_metrics=b_metrics,
        started=started,
        at_resume=at_resume,
    )


# -- 1. determinism ------------------------------------------------------------------------------


def test_same_seed_same_run_different_seed_different_run(tmp_path: Path) -> None:
    def run(
        reg: fs.EntityRegistry, seed: int
    ) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
        metrics: list[fs.rl.RLStepMetrics] = []
        reg.bus.subscribe(fs.rl.RLStepMetrics, metrics.append)
        trainer = fs.rl.SB3Trainer(
            reg,
            "PPO",
            "CartPole-v1",
            fs.rl.preset("PPO", "CartPole-v1", n_epochs=4),
            seed=seed,
            progress=False,
        )
        trainer.train(1536)
        weights, _ = blob_tensors(reg, trainer.checkpoints[-1].weights)
        return [{k: v for k, v in m.metrics.items() if k not in UNTIMED} for m in metrics], weights

    # the store must not matter: one run in memory, its twin in SQLite
    with fs.open("memory://") as r1, sqlite(tmp_path) as r2, fs.open("memory://") as r3:
        (ma, wa), (mb, wb), (mc, wc) = run(r1, 3), run(r2, 3), run(r3, 4)
    assert len(ma) == 6
    assert [m["ep_rew_mean"] for m in ma] == [m["ep_rew_mean"] for m in mb]
    assert ma == mb  # every logged value, exact float equality
    assert_same_tensors(wa, wb)
    assert [m["ep_rew_mean"] for m in ma] != [m["ep_rew_mean"] for m in mc]
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


# -- 2. PPO: resume from step 2048 of 6144 --------------------------------------------------------------


@pytest.fixture(scope="module")
def ppo() -> Iterator[SimpleNamespace]:
    reg = fs.open("memory://")
    yield interrupted(
        reg, "PPO", "CartPole-v1", fs.rl.preset("PPO", "CartPole-v1"), 6144, 2048, seed=3
    )
    reg.close()


def test_ppo_resumed_run_ends_with_the_same_weights_and_optimizer_state(
    ppo: SimpleNamespace,
) -> None:
    assert [c.step for c in ppo.a_ckpts] == [2048, 4096, 6144]
    assert [c.step for c in ppo.b_ckpts] == [4096, 6144]
    for a, b in zip(ppo.a_ckpts[1:], ppo.b_ckpts, strict=True):
        assert_same_checkpoint(ppo.reg, a, b)  # at 4096 and at 6144
    # Adam's moments in particular (named by the policy's optimizer)
    sa, _ = blob_tensors(ppo.reg, ppo.a_ckpts[-1].optimizer_state)
    adam = [k for k in sa if k.startswith("sd.policy.optimizer.state.")]
    assert {k.rsplit(".", 1)[1] for k in adam} == {"exp_avg", "exp_avg_sq", "step"}
    # and the live model agrees with what was stored
    stored, _ = blob_tensors(ppo.reg, ppo.b_ckpts[-1].weights)
    assert_same_tensors(stored, dict(ppo.trainer.model.policy.state_dict()))


def test_ppo_resumed_run_logs_the_same_metrics(ppo: SimpleNamespace) -> None:
    assert len(metrics_after(ppo.a_metrics, 2048)) == 16
    assert_same_metrics_after(ppo.a_metrics, ppo.b_metrics, 2048)


def test_ppo_resume_restores_the_counters_and_continues_the_lineage(ppo: SimpleNamespace) -> None:
    reg, a, b = ppo.reg, ppo.a, ppo.b
    assert ppo.at_resume == 2048
    (started,) = ppo.started
    assert started.timestep == 2048 and started.total_timesteps == 6144 and started.seed == 3
    assert b.lineage_id == a.lineage_id and b.version > a.version
    assert b.status == "completed" and b.step == 6144 and b.stop_reason is None
    assert (b.config, b.env, b.model) == (a.config, a.env, a.model)  # the same stored entities
    history = reg.history(a.lineage_id)
    assert [(v.status, v.step) for v in history] == [
        ("running", 0),
        ("running", 2048),
        ("running", 4096),
        ("completed", 6144),  # a
        ("running", 2048),
        ("running", 4096),
        ("completed", 6144),  # b, resumed at 2048
    ]
    assert fs.rl.latest_checkpoint(reg, a).step == 6144


def test_resume_from_a_run_uses_its_latest_checkpoint_and_a_smaller_total_is_rejected(
    ppo: SimpleNamespace,
) -> None:
    trainer = fs.rl.resume_trainer(ppo.reg, ppo.b)  # a run: its latest checkpoint
    assert trainer.model.num_timesteps == 6144 and trainer.checkpoints[-1].step == 6144
    with pytest.raises(ValidationError, match="leaves nothing to do"):
        trainer.train(6144)
    trainer = fs.rl.resume_trainer(ppo.reg, str(ppo.a_ckpts[1].ref))  # an address string
    assert trainer.model.num_timesteps == 4096


def test_resume_rejects_what_is_not_a_resumable_checkpoint(ppo: SimpleNamespace) -> None:
    reg, ckpt = ppo.reg, ppo.a_ckpts[0]
    bare = reg.add(
        fs.CheckpointEntity(run=ckpt.run, model=ckpt.model, step=2048, weights=ckpt.weights)
    )
    with pytest.raises(ValidationError, match="no training state"):
        fs.rl.resume_sb3(reg, bare, 4096)
    plain = reg.add(fs.TrainingRunEntity(name="sft", model=ckpt.model))
    other = reg.add(
        fs.CheckpointEntity(
            run=plain.ref,
            model=ckpt.model,
            step=1,
            weights=ckpt.weights,
            optimizer_state=ckpt.optimizer_state,
        )
    )
    with pytest.raises(ValidationError, match="not a checkpoint of a forseti.rl run"):
        fs.rl.resume_sb3(reg, other, 4096)
    with pytest.raises(ValidationError):
        fs.rl.resume_sb3(reg, ppo.a.model, 4096)  # a model, not a checkpoint or a run
    # a policy blob where the training state should be
    swapped = reg.add(
        fs.CheckpointEntity(
            run=ckpt.run,
            model=ckpt.model,
            step=2048,
            weights=ckpt.weights,
            optimizer_state=ckpt.weights,
        )
    )
    with pytest.raises(fs.IntegrityError, match="not an RL training state"):
        fs.rl.resume_sb3(reg, swapped, 4096)


def test_a_run_stopped_mid_rollout_resumes_to_its_total() -> None:
    with fs.open("memory://") as reg:
        sub = fs.rl.stop_when(reg, "ep_rew_mean", 0)
        stopped = fs.rl.train_sb3(
            reg,
            "PPO",
            "CartPole-v1",
            fs.rl.preset("PPO", "CartPole-v1", n_epochs=2),
            1024,
            progress=False,
        )
        reg.bus.unsubscribe(sub)
        assert stopped.stop_reason is not None and stopped.step == 264
        run = fs.rl.resume_sb3(reg, stopped, 1024)
        # whole rollouts of 256 from step 264: SB3 finishes the one that crosses 1024
        assert run.status == "completed" and run.stop_reason is None and run.step == 1032
        assert run.total_steps == 1032 and fs.rl.latest_checkpoint(reg, run).step == 1032


# -- 3. SAC: resume from step 400 of 1200 (learning starts at 200) ---------------------------------------


@pytest.fixture(scope="module")
def sac() -> Iterator[SimpleNamespace]:
    reg = fs.open("memory://")
    yield interrupted(reg, "SAC", "Pendulum-v1", small_sac(), 1200, 400, seed=5)
    reg.close()


def test_sac_resumed_run_ends_with_the_same_weights_buffer_and_optimizers(
    sac: SimpleNamespace,
) -> None:
    assert [c.step for c in sac.a_ckpts] == [400, 800, 1200]
    assert [c.step for c in sac.b_ckpts] == [800, 1200]
    for a, b in zip(sac.a_ckpts[1:], sac.b_ckpts, strict=True):
        assert_same_checkpoint(sac.reg, a, b)
    state, meta = blob_tensors(sac.reg, sac.a_ckpts[-1].optimizer_state)
    tree = json.loads(meta["forseti.rl.state"])
    # what SAC adds to PPO's state: both optimizers, the entropy coefficient, the replay buffer
    assert {"actor.optimizer", "critic.optimizer", "ent_coef_optimizer"} <= set(tree["state_dicts"])
    weights, _ = blob_tensors(sac.reg, sac.a_ckpts[-1].weights)
    assert any(k.startswith("critic_target.") for k in weights)  # the target network: in the policy
    assert "var.log_ent_coef" in state and tree["replay_buffer"]["type"] == "ReplayBuffer"
    assert state["rb.observations"].shape == (1200, 1, 3)  # the filled rows only


def test_sac_resumed_run_logs_the_same_metrics(sac: SimpleNamespace) -> None:
    expected = metrics_after(sac.a_metrics, 400)
    assert [t for t, _ in expected] == [800]  # every 4 episodes of 200 steps
    got = metrics_after(sac.b_metrics, 400)
    # off-policy: the update just before the log is made in the same learn() call, so even the
    # first log after the resume has every value
    assert got == expected


def test_sac_metrics_name_the_losses_and_the_entropy_coefficient(sac: SimpleNamespace) -> None:
    (m,) = [e for e in sac.a_metrics if e.timestep == 800]
    assert {
        "actor_loss",
        "critic_loss",
        "ent_coef",
        "ent_coef_loss",
        "ep_rew_mean",
        "ep_len_mean",
        "fps",
        "learning_rate",
        "n_updates",
    } <= m.metrics.keys()
    assert (
        m.metrics["ent_coef"] > 0
        and m.metrics["critic_loss"] >= 0
        and m.metrics["learning_rate"] == 1e-3
    )
    assert m.metrics["n_updates"] == 800 - 201 and m.metrics["ep_len_mean"] == 200
    assert sac.a.algorithm == "SAC"


def test_sac_config_entity_resumes_bit_identically() -> None:
    """The typed SACConfigEntity (the zoo preset, SB3's network) through a store round trip."""
    with fs.open("memory://") as reg:
        config = fs.rl.preset(
            "SAC", "Pendulum-v1", learning_starts=100, buffer_size=1000, batch_size=32
        )
        out = interrupted(reg, "SAC", "Pendulum-v1", config, 300, 200, seed=1)
        assert isinstance(reg.get(out.a.config), fs.rl.SACConfigEntity)
        assert [c.step for c in out.a_ckpts] == [200, 300] and [c.step for c in out.b_ckpts] == [
            300
        ]
        assert_same_checkpoint(reg, out.a_ckpts[-1], out.b_ckpts[-1])


# -- 4. resume in a re-opened registry ----------------------------------------------------------------


def test_resume_after_reopening_the_registry(persistent_url: str, tmp_path: Path) -> None:
    blobs = tmp_path / "rl-blobs"
    config = fs.rl.preset("PPO", "CartPole-v1", n_epochs=4)
    with fs.open(persistent_url, blob_dir=blobs) as reg:
        run = fs.rl.train_sb3(
            reg, "PPO", "CartPole-v1", config, 1024, seed=7, checkpoint_every=512, progress=False
        )
        first, final = by_step(reg, run)
        expected, _ = blob_tensors(reg, final.weights)
        expected_state, _ = blob_tensors(reg, final.optimizer_state)

    # the realistic case: a new process opens the same store and blob directory
    with fs.open(persistent_url, blob_dir=blobs) as reg:
        resumed = fs.rl.resume_sb3(reg, first.ref, 1024)  # a ref: resolved in this registry
        assert (
            resumed.lineage_id == run.lineage_id
            and resumed.status == "completed"
            and resumed.step == 1024
        )
        again = fs.rl.latest_checkpoint(reg, resumed)
        assert again.ref != final.ref and again.step == 1024
        weights, _ = blob_tensors(reg, again.weights)
        state, _ = blob_tensors(reg, again.optimizer_state)
        assert_same_tensors(weights, expected)
        assert_same_tensors(state, expected_state)


class _Sim:
    """Episode state that is not plain data (as a physics engine's is)."""

    def __init__(self, x: float) -> None:
        self.x = x


class _ObjectStateEnv(gym.Env[Any, Any]):
    observation_space = gym.spaces.Box(-10.0, 10.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self) -> None:
        self.sim: _Sim | None = None
        self.t = 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.sim = _Sim(float(self.np_random.uniform(-1, 1)))
        self.t = 0
        return np.array([self.sim.x], dtype=np.float32), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        assert self.sim is not None, "stepped before reset"
        self.sim.x += 0.1 if action else -0.1
        self.t += 1
        obs = np.array([self.sim.x], dtype=np.float32)
        return obs, 1.0, bool(abs(self.sim.x) > 2), self.t >= 50, {}


def _make_object_state_env() -> gym.Env[Any, Any]:
    return _ObjectStateEnv()


def test_an_environment_with_state_that_is_not_data_restarts_on_resume(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its state cannot be stored: a resumed run resets the environments (SB3's own resume)
    instead of stepping fresh environments that were never reset."""
    reg = fs.open("memory://")
    cfg = fs.rl.PPOConfigEntity(n_steps=64, batch_size=64, n_envs=2, n_epochs=1)
    fs.rl.train_sb3(reg, "PPO", _make_object_state_env, cfg, 256, checkpoint_every=128)
    first = min(reg.find(fs.CheckpointEntity), key=lambda c: c.step)
    assert first.step == 128
    with caplog.at_level("WARNING", logger="forseti.rl.state"):
        resumed = fs.rl.resume_sb3(reg, first, 512, env=_make_object_state_env)
    assert resumed.status == "completed" and resumed.step == 512
    assert "_ObjectStateEnv.sim" in caplog.text
    reg.close()


def test_a_plain_data_environment_is_restored_without_a_reset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = fs.open("memory://")
    cfg = fs.rl.PPOConfigEntity(n_steps=64, batch_size=64, n_envs=2, n_epochs=1)
    fs.rl.train_sb3(reg, "PPO", "CartPole-v1", cfg, 256, checkpoint_every=128)
    first = min(reg.find(fs.CheckpointEntity), key=lambda c: c.step)
    trainer = fs.rl.resume_trainer(reg, first)
    with caplog.at_level("WARNING", logger="forseti.rl.state"):
        assert trainer.model._last_obs is not None  # learn() will not reset the environments
    assert "restart" not in caplog.text
    reg.close()
