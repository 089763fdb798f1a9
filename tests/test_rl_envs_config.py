"""forseti.rl: environments (checked before anything is stored), algorithms, configs and presets.

A broken environment fails with :class:`fs.rl.EnvCheckError` (a ``fs.ValidationError``) and a
message that says what is wrong, and the registry stays empty; an environment that breaks during
training marks the run failed. Bad algorithms, configs and arguments raise typed errors and store
nothing. The rl-baselines3-zoo presets carry the zoo's values; other SB3 algorithms (A2C, DQN, a
subclass named by "module:Class") train through :class:`SB3ConfigEntity`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
import stable_baselines3
import torch
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from stable_baselines3 import PPO

import forseti as fs
from forseti.errors import ConfigError, ValidationError

torch.set_num_threads(1)

# a PPO config that makes training a few hundred steps cheap
TINY_PPO = fs.rl.PPOConfigEntity(n_steps=64, batch_size=64, n_epochs=1)


# -- environments under test ---------------------------------------------------------------------


class GoodEnv(gym.Env):
    """A minimal well-behaved environment: 3 floats in [-1, 1], two actions, 20 steps."""

    # SB3's make_vec_env asks for rgb_array (never rendered)
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def _obs(self) -> Any:
        return np.zeros(3, np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any) -> Any:
        self.t += 1
        return self._obs(), 1.0, self.t >= 20, False, {}


class WrongShape(GoodEnv):
    def _obs(self) -> Any:
        return np.zeros(4, np.float32)


class WrongDtype(GoodEnv):
    def _obs(self) -> Any:
        return np.zeros(3, np.int64)


class OutOfBounds(GoodEnv):
    def _obs(self) -> Any:
        return np.full(3, 5.0, np.float32)


class OldStepAPI(GoodEnv):
    """gym < 0.26's step: (obs, reward, done, info)."""

    def step(self, action: Any) -> Any:
        self.t += 1
        return self._obs(), 1.0, self.t >= 20, {}


class ResetRaises(GoodEnv):
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        raise RuntimeError("simulator offline")


class ResetWithoutInfo(GoodEnv):
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        return self._obs()


class ConstructorRaises(GoodEnv):
    def __init__(self) -> None:
        raise RuntimeError("license expired")


class BreaksDuringTraining(GoodEnv):
    """Passes the checker (a few steps), then its simulator crashes on the 150th step."""

    def step(self, action: Any) -> Any:
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps >= 150:
            raise RuntimeError(f"physics exploded at step {self.steps}")
        return super().step(action)


BROKEN: dict[str, tuple[type[gym.Env], str]] = {
    "WrongShape": (WrongShape, r"shape.*Expected: \(3,\), actual shape: \(4,\)"),
    "WrongDtype": (WrongDtype, r"data type.*Expected: float32, actual dtype: int64"),
    "OutOfBounds": (OutOfBounds, r"bounds"),
    "OldStepAPI": (OldStepAPI, r"(must return five values|expected 5, got 4)"),
    "ResetRaises": (ResetRaises, r"simulator offline"),
    "ResetWithoutInfo": (ResetWithoutInfo, r"reset\(\)` must return a tuple"),
    "ConstructorRaises": (ConstructorRaises, r"cannot make environment .*license expired"),
}


def _id(name: str) -> str:
    return f"forseti-tests/{name}-v0"


@pytest.fixture(scope="module", autouse=True)
def _registered_envs() -> Iterator[None]:
    """The test environments, registered with gymnasium for this module only."""
    names = [*BROKEN, "Good", "BreaksDuringTraining"]
    classes = {
        **{n: c for n, (c, _) in BROKEN.items()},
        "Good": GoodEnv,
        "BreaksDuringTraining": BreaksDuringTraining,
    }
    for name in names:
        gym.register(id=_id(name), entry_point=classes[name])
    yield
    for name in names:
        gym.envs.registry.pop(_id(name), None)


def make_good() -> gym.Env:
    return GoodEnv()


def make_a_string() -> Any:
    return "not an environment"


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def empty(tmp_path: Path) -> Iterator[fs.EntityRegistry]:
    """An empty in-memory registry whose blobs are files (so a stray blob would show)."""
    reg = fs.open("memory://", blob_dir=tmp_path / "blobs")
    yield reg
    reg.close()


def contents(reg: fs.EntityRegistry) -> tuple[int, int]:
    """(entities, blob files) in ``reg``."""
    root = Path(reg.blobs.root)  # type: ignore[attr-defined]
    blobs = [p for p in root.rglob("*") if p.is_file() and "tmp" not in p.relative_to(root).parts]
    return len(reg.find(fs.Entity)), len(blobs)


def train(
    reg: fs.EntityRegistry, env: Any = "CartPole-v1", total: int = 128, **kwargs: Any
) -> fs.rl.RLTrainingRunEntity:
    kwargs.setdefault("progress", False)
    algo = kwargs.pop("algo", "PPO")
    config = kwargs.pop("config", TINY_PPO)
    return fs.rl.train_sb3(reg, algo, env, config, total_timesteps=total, **kwargs)


# -- 1. broken environments: EnvCheckError, nothing stored ---------------------------------------


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_registered_env_fails_the_check_and_stores_nothing(
    name: str, empty: fs.EntityRegistry
) -> None:
    _, message = BROKEN[name]
    with pytest.raises(fs.rl.EnvCheckError, match=message) as info:
        train(empty, _id(name))
    assert isinstance(info.value, fs.ValidationError)
    assert _id(name) in str(info.value)  # says which environment
    assert contents(empty) == (0, 0)


@pytest.mark.parametrize("name", ["WrongShape", "OldStepAPI", "ResetRaises"])
def test_a_broken_factory_fails_the_check_and_stores_nothing(
    name: str, empty: fs.EntityRegistry
) -> None:
    cls, message = BROKEN[name]
    with pytest.raises(fs.rl.EnvCheckError, match=message) as info:
        train(empty, cls)  # a class is a factory too
    assert name in str(info.value)
    assert contents(empty) == (0, 0)


def test_an_unknown_env_id_is_an_env_check_error_with_a_suggestion(
    empty: fs.EntityRegistry,
) -> None:
    with pytest.raises(fs.rl.EnvCheckError, match=r"CartPol-v1.*Did you mean: `CartPole`"):
        train(empty, "CartPol-v1")
    assert contents(empty) == (0, 0)


@pytest.mark.parametrize("factory", [make_a_string, lambda: 42], ids=["str", "int"])
def test_a_factory_that_returns_no_env_is_an_env_check_error(
    factory: Callable[[], Any], empty: fs.EntityRegistry
) -> None:
    with pytest.raises(fs.rl.EnvCheckError, match="not a gymnasium.Env"):
        train(empty, factory)
    assert contents(empty) == (0, 0)


def test_check_environment_directly() -> None:
    env = gym.make("CartPole-v1")
    fs.rl.check_environment(env, "CartPole-v1")  # no error: a good environment passes
    env.close()
    with pytest.raises(fs.rl.EnvCheckError, match="not a gymnasium.Env"):
        fs.rl.check_environment("CartPole-v1", "x")  # type: ignore[arg-type]
    with pytest.raises(fs.rl.EnvCheckError, match=r"'mine' fails SB3's env checker: .*shape"):
        fs.rl.check_environment(WrongShape(), "mine")


@pytest.mark.parametrize(
    "env, error",
    [
        (42, ValidationError),
        (None, ValidationError),
        (CartPoleEnv(), ValidationError),  # an instance without a gymnasium spec cannot be re-made
    ],
    ids=["int", "None", "unregistered-instance"],
)
def test_what_is_not_an_environment_is_a_validation_error(
    env: Any, error: type[Exception], empty: fs.EntityRegistry
) -> None:
    with pytest.raises(error):
        train(empty, env)
    assert contents(empty) == (0, 0)


def test_env_kwargs_that_the_env_rejects_or_that_are_not_json(empty: fs.EntityRegistry) -> None:
    with pytest.raises(fs.rl.EnvCheckError, match="cannot make environment"):
        train(empty, "CartPole-v1", env_kwargs={"gravity_of_the_situation": 3})
    with pytest.raises(ValidationError):
        train(empty, "CartPole-v1", env_kwargs={"render_mode": object()})
    assert contents(empty) == (0, 0)


def test_an_env_that_breaks_during_training_fails_the_run(empty: fs.EntityRegistry) -> None:
    seen: list[fs.Event] = []
    for topic in (fs.rl.RLTrainingStarted, fs.rl.RLTrainingCompleted, fs.rl.CheckpointCreated):
        empty.bus.subscribe(topic, seen.append)
    with pytest.raises(RuntimeError, match="physics exploded at step 150"):
        train(empty, _id("BreaksDuringTraining"), total=1024, checkpoint_every=64)
    (run,) = empty.find(fs.rl.RLTrainingRunEntity)  # the head
    assert run.status == "failed" and run.finished_at is not None
    assert run.error == "RuntimeError: physics exploded at step 150"
    assert 64 <= run.step < 150 and run.total_steps == 1024
    # the checkpoints taken before the crash are there; the run never completed
    assert [type(e) for e in seen] == [fs.rl.RLTrainingStarted] + [fs.rl.CheckpointCreated] * 2
    assert sorted(c.step for c in empty.find(fs.CheckpointEntity)) == [64, 128]


def test_a_stored_env_spec_or_a_gym_make_instance_is_an_env(empty: fs.EntityRegistry) -> None:
    first = train(empty, gym.make("CartPole-v1"))
    spec = empty.get(first.env)
    assert isinstance(spec, fs.rl.EnvSpecEntity)
    assert spec.env_id == "CartPole-v1" and spec.factory is None and spec.max_episode_steps == 500
    assert spec.observation_space.startswith("Box(") and spec.action_space == "Discrete(2)"
    again = train(empty, spec)  # the stored spec is used as it is
    assert again.env == spec.ref
    with pytest.raises(ValidationError, match="env_kwargs"):
        train(empty, spec, env_kwargs={"x": 1})


def test_a_gym_make_instance_keeps_its_keyword_arguments() -> None:
    from forseti.rl.envs import env_spec

    spec, factory = env_spec(gym.make("Pendulum-v1", g=9.81))
    assert factory is None and spec.env_id == "Pendulum-v1" and dict(spec.env_kwargs) == {"g": 9.81}


def test_a_gym_make_instance_keeps_its_time_limit(empty: fs.EntityRegistry) -> None:
    run = train(empty, gym.make("CartPole-v1", max_episode_steps=50))
    spec = empty.get(run.env)  # type: ignore[arg-type]
    assert spec.max_episode_steps == 50  # type: ignore[attr-defined]


def test_an_importable_factory_is_named_in_the_spec(empty: fs.EntityRegistry) -> None:
    run = train(empty, make_good)
    spec = empty.get(run.env)
    assert spec.factory == f"{__name__}:make_good" and spec.env_id is None  # type: ignore[attr-defined]
    assert spec.name == "make_good"  # type: ignore[attr-defined]
    # resumable without passing the factory again: it is imported by name
    ckpt = fs.rl.latest_checkpoint(empty, run)
    resumed = fs.rl.resume_sb3(empty, ckpt, 256)
    assert resumed.status == "completed" and resumed.step == 256


def test_a_toy_text_env_trains_and_checkpoints(empty: fs.EntityRegistry) -> None:
    run = train(
        empty,
        "FrozenLake-v1",
        total=64,
        config=fs.rl.PPOConfigEntity(n_steps=64, batch_size=64, n_epochs=1),
    )
    assert run.status == "completed" and run.step == 64


def test_a_discrete_observation_env_trains_and_resumes(empty: fs.EntityRegistry) -> None:
    config = fs.rl.PPOConfigEntity(n_steps=64, batch_size=64, n_epochs=1)
    run = train(empty, "CliffWalking-v1", total=128, config=config, checkpoint_every=64)
    first = min(empty.find(fs.CheckpointEntity), key=lambda c: c.step)
    assert first.step == 64 and fs.rl.resume_sb3(empty, first, 128).step == 128
    assert empty.get(run.env).observation_space == "Discrete(48)"  # type: ignore[attr-defined]


def test_an_observation_space_sb3_cannot_handle_is_a_typed_error(empty: fs.EntityRegistry) -> None:
    with pytest.raises((ConfigError, ValidationError)):
        train(empty, "Blackjack-v1")  # Tuple(Discrete(32), Discrete(11), Discrete(2))
    assert contents(empty) == (0, 0)


def test_an_error_in_the_final_checkpoint_marks_the_run_failed(
    empty: fs.EntityRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import forseti.rl.trainer

    def disk_full(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no space left on device")

    monkeypatch.setattr(forseti.rl.trainer, "write_state", disk_full)
    with pytest.raises(OSError, match="no space left"):
        train(empty, total=128)  # checkpoint_every=0: only the final checkpoint
    (run,) = empty.find(fs.rl.RLTrainingRunEntity)
    assert run.status == "failed", (run.status, run.step)
    assert "no space left on device" in (run.error or "")


# -- 2. algorithms and configs: typed errors, nothing stored -------------------------------------


@pytest.mark.parametrize(
    "algo, error",
    [
        ("PPOO", ConfigError),
        ("HerReplayBuffer", ConfigError),  # in stable_baselines3, but not an algorithm
        ("get_system_info", ConfigError),
        ("no_such_module:PPO", ConfigError),
        ("stable_baselines3:NoSuchAlgo", ConfigError),
        ("", ValidationError),
        (42, ValidationError),
        (int, ValidationError),
        (None, ValidationError),
    ],
)
def test_a_bad_algorithm_is_a_typed_error(
    algo: Any, error: type[Exception], empty: fs.EntityRegistry
) -> None:
    with pytest.raises(error):
        fs.rl.train_sb3(empty, algo, "CartPole-v1", total_timesteps=64, progress=False)
    assert contents(empty) == (0, 0)


def test_algorithm_names_are_case_insensitive_and_classes_work() -> None:
    assert fs.rl.algorithm_class("ppo") is PPO
    assert fs.rl.algorithm_class(PPO) is PPO
    assert fs.rl.algorithm_class("stable_baselines3:DQN") is stable_baselines3.DQN
    with pytest.raises(ConfigError, match="no algorithm 'PPOO'.*A2C.*SAC"):
        fs.rl.algorithm_class("PPOO")  # the message lists what exists


@pytest.mark.parametrize(
    "algo, env, config",
    [
        ("SAC", "Pendulum-v1", fs.rl.PPOConfigEntity()),
        ("PPO", "CartPole-v1", fs.rl.SACConfigEntity()),
        ("PPO", "CartPole-v1", fs.rl.SB3ConfigEntity(algorithm_path="A2C")),
        ("A2C", "CartPole-v1", fs.rl.PPOConfigEntity()),
        ("PPO", "CartPole-v1", fs.ModelEntity(name="not-a-config")),
        ("PPO", "CartPole-v1", {"n_steps": 64}),
    ],
    ids=[
        "ppo-config-for-sac",
        "sac-config-for-ppo",
        "a2c-config-for-ppo",
        "ppo-config-for-a2c",
        "model",
        "dict",
    ],
)
def test_a_config_for_another_algorithm_is_rejected(
    algo: str, env: str, config: Any, empty: fs.EntityRegistry
) -> None:
    with pytest.raises(ValidationError):
        fs.rl.train_sb3(empty, algo, env, config, total_timesteps=64, progress=False)
    assert contents(empty) == (0, 0)


@pytest.mark.parametrize(
    "cls, changes",
    [
        (fs.rl.PPOConfigEntity, {"gamma": 2}),
        (fs.rl.PPOConfigEntity, {"gamma": float("nan")}),
        (fs.rl.PPOConfigEntity, {"gae_lambda": -0.1}),
        (fs.rl.PPOConfigEntity, {"learning_rate": "lin_x"}),
        (fs.rl.PPOConfigEntity, {"learning_rate": "exp_1"}),
        (fs.rl.PPOConfigEntity, {"learning_rate": "lin_0"}),
        (fs.rl.PPOConfigEntity, {"learning_rate": "lin_-1e-3"}),
        (fs.rl.PPOConfigEntity, {"learning_rate": "lin_nan"}),
        (fs.rl.PPOConfigEntity, {"learning_rate": 0}),
        (fs.rl.PPOConfigEntity, {"learning_rate": -3e-4}),
        (fs.rl.PPOConfigEntity, {"clip_range": "linear_0.2"}),
        (fs.rl.PPOConfigEntity, {"clip_range": 0.0}),
        (fs.rl.PPOConfigEntity, {"n_steps": 1}),
        (fs.rl.PPOConfigEntity, {"batch_size": 0}),
        (fs.rl.PPOConfigEntity, {"n_epochs": 0}),
        (fs.rl.PPOConfigEntity, {"n_envs": 0}),
        (fs.rl.PPOConfigEntity, {"ent_coef": -0.01}),
        (fs.rl.PPOConfigEntity, {"sde_sample_freq": -2}),
        (fs.rl.PPOConfigEntity, {"policy_kwargs": {"act": object()}}),
        (fs.rl.PPOConfigEntity, {"no_such_setting": 1}),
        (fs.rl.SACConfigEntity, {"tau": 0.0}),
        (fs.rl.SACConfigEntity, {"tau": 1.5}),
        (fs.rl.SACConfigEntity, {"ent_coef": "autox"}),
        (fs.rl.SACConfigEntity, {"ent_coef": "auto_"}),
        (fs.rl.SACConfigEntity, {"target_entropy": "minus-one"}),
        (fs.rl.SACConfigEntity, {"gradient_steps": -2}),
        (fs.rl.SACConfigEntity, {"learning_starts": -1}),
        (fs.rl.SACConfigEntity, {"buffer_size": 0}),
        (fs.rl.SACConfigEntity, {"train_freq": 0}),
        (fs.rl.SB3ConfigEntity, {}),  # algorithm_path is required
        (fs.rl.SB3ConfigEntity, {"algorithm_path": "A2C", "hyperparameters": {"x": {1, 2}}}),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else repr(v)[:40],
)
def test_invalid_config_values_are_validation_errors(
    cls: type[fs.Entity], changes: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError):
        cls(**changes)


def test_valid_schedules_and_entropy_settings_are_accepted() -> None:
    assert (
        fs.rl.PPOConfigEntity(learning_rate="lin_3e-4", clip_range="lin_.1").clip_range == "lin_.1"
    )
    assert fs.rl.PPOConfigEntity(learning_rate=1e-3).learning_rate == 1e-3
    sac = fs.rl.SACConfigEntity(ent_coef="auto_0.1", target_entropy=-2.0)
    assert sac.ent_coef == "auto_0.1" and sac.target_entropy == -2.0
    assert fs.rl.SACConfigEntity(ent_coef=0.2).ent_coef == 0.2


@pytest.mark.parametrize(
    "config, match",
    [
        (
            fs.rl.SB3ConfigEntity(algorithm_path="A2C", hyperparameters={"no_such_arg": 1}),
            "A2C rejects this config",
        ),
        (fs.rl.PPOConfigEntity(policy="NoSuchPolicy"), "PPO rejects this config"),
        (
            fs.rl.PPOConfigEntity(policy_kwargs={"activation_fn": "NoSuchActivation"}),
            "NoSuchActivation",
        ),
        (
            fs.rl.PPOConfigEntity(policy_kwargs={"optimizer_class": "NoSuchOptimizer"}),
            "NoSuchOptimizer",
        ),
    ],
    ids=["unknown-kwarg", "unknown-policy", "unknown-activation", "unknown-optimizer"],
)
def test_a_config_sb3_rejects_is_a_config_error(
    config: fs.rl.RLConfigEntity, match: str, empty: fs.EntityRegistry
) -> None:
    algo = config.algorithm_name()
    with pytest.raises(ConfigError, match=match):
        fs.rl.train_sb3(empty, algo, "CartPole-v1", config, total_timesteps=64, progress=False)
    assert contents(empty) == (0, 0)


def test_policy_kwargs_name_torch_classes(empty: fs.EntityRegistry) -> None:
    config = fs.rl.PPOConfigEntity(
        n_steps=64,
        batch_size=64,
        n_epochs=1,
        policy_kwargs={"activation_fn": "ReLU", "optimizer_class": "RMSprop", "ortho_init": False},
    )
    trainer = fs.rl.SB3Trainer(empty, "PPO", "CartPole-v1", config, progress=False)
    policy = trainer.model.policy
    assert isinstance(policy.optimizer, torch.optim.RMSprop)
    assert any(isinstance(m, torch.nn.ReLU) for m in policy.modules())
    assert not any(isinstance(m, torch.nn.Tanh) for m in policy.modules())
    # the model entity records the policy's settings as given (names, not classes)
    assert trainer.model_entity.hyperparameters["policy_kwargs"]["activation_fn"] == "ReLU"


@pytest.mark.parametrize(
    "algo, env, net_arch",
    [
        ("PPO", "CartPole-v1", [32, 32]),  # PPO's MlpExtractor takes any sequence
        pytest.param("PPO", "CartPole-v1", {"pi": [32], "vf": [16]}),
        pytest.param("SAC", "Pendulum-v1", [32, 32]),
        pytest.param("SAC", "Pendulum-v1", {"pi": [32], "qf": [16]}),
    ],
    ids=["ppo-list", "ppo-dict", "sac-list", "sac-dict"],
)
def test_policy_kwargs_net_arch_sets_the_network(
    algo: str, env: str, net_arch: Any, empty: fs.EntityRegistry
) -> None:
    config = fs.rl.PPOConfigEntity if algo == "PPO" else fs.rl.SACConfigEntity
    trainer = fs.rl.SB3Trainer(
        empty, algo, env, config(policy_kwargs={"net_arch": net_arch}), progress=False
    )
    widths = {
        m.out_features for m in trainer.model.policy.modules() if isinstance(m, torch.nn.Linear)
    }
    assert 32 in widths and 256 not in widths and 64 not in widths


# -- 3. bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [True, False, -1, 2**31, 1.5, "3", None])
def test_a_bad_seed_is_rejected_before_anything_is_stored(
    seed: Any, empty: fs.EntityRegistry
) -> None:
    with pytest.raises(ValidationError, match="seed"):
        train(empty, seed=seed)
    assert contents(empty) == (0, 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"total": 0},
        {"total": -5},
        {"total": True},
        {"total": 1.5},
        {"total": "100"},
        {"total": None},
        {"checkpoint_every": -1},
        {"checkpoint_every": 1.0},
        {"eval_every": -64},
        {"eval_episodes": 0},
        {"eval_episodes": True},
        {"log_interval": 0},
    ],
    ids=repr,
)
def test_bad_training_arguments_are_validation_errors_and_start_no_run(
    kwargs: dict[str, Any], empty: fs.EntityRegistry
) -> None:
    with pytest.raises(ValidationError):
        train(empty, **kwargs)
    assert empty.find(fs.rl.RLTrainingRunEntity) == []
    assert empty.find(fs.CheckpointEntity) == []


@pytest.mark.parametrize("kwargs", [{"total": 0}, {"total": -5}, {"eval_episodes": 0}], ids=repr)
def test_bad_training_arguments_store_nothing_at_all(
    kwargs: dict[str, Any], empty: fs.EntityRegistry
) -> None:
    with pytest.raises(ValidationError):
        train(empty, **kwargs)
    assert contents(empty) == (0, 0)


def test_training_to_a_total_already_reached_is_rejected(empty: fs.EntityRegistry) -> None:
    trainer = fs.rl.SB3Trainer(empty, "PPO", "CartPole-v1", TINY_PPO, progress=False)
    run = trainer.train(128)
    with pytest.raises(ValidationError, match="leaves nothing to do"):
        trainer.train(128)
    assert empty.get(run.lineage_id) == run  # no new version


# -- 4. presets ------------------------------------------------------------------------------------


def test_ppo_cartpole_preset_has_the_zoo_values() -> None:
    cfg = fs.rl.preset("PPO", "CartPole-v1")
    assert isinstance(cfg, fs.rl.PPOConfigEntity)
    assert (cfg.n_envs, cfg.n_steps, cfg.batch_size, cfg.n_epochs) == (8, 32, 256, 20)
    assert (cfg.gae_lambda, cfg.gamma, cfg.ent_coef) == (0.8, 0.98, 0.0)
    assert (cfg.learning_rate, cfg.clip_range) == ("lin_1e-3", "lin_0.2")
    assert (
        cfg.policy == "MlpPolicy"
        and cfg.preset == "rl-zoo:CartPole-v1"
        and cfg.name == "ppo-CartPole-v1"
    )
    # everything else is SB3's default
    assert (cfg.vf_coef, cfg.max_grad_norm, cfg.clip_range_vf, cfg.stats_window_size) == (
        0.5,
        0.5,
        None,
        100,
    )
    assert fs.rl.preset_timesteps("PPO", "CartPole-v1") == 100_000


def test_sac_pendulum_preset_has_the_zoo_values() -> None:
    cfg = fs.rl.preset("SAC", "Pendulum-v1")
    assert isinstance(cfg, fs.rl.SACConfigEntity)
    assert cfg.learning_rate == 1e-3 and cfg.preset == "rl-zoo:Pendulum-v1"
    assert (cfg.buffer_size, cfg.batch_size, cfg.ent_coef, cfg.n_envs) == (
        1_000_000,
        256,
        "auto",
        1,
    )
    assert fs.rl.preset_timesteps("sac", "Pendulum-v1") == 20_000


def test_preset_names_are_case_insensitive_for_the_algorithm_only() -> None:
    assert fs.rl.preset("ppo", "CartPole-v1").n_steps == 32
    with pytest.raises(ConfigError):
        fs.rl.preset("PPO", "cartpole-v1")


@pytest.mark.parametrize(
    "algo, env",
    [("PPO", "Pendulum-v1"), ("SAC", "CartPole-v1"), ("TD3", "Pendulum-v1"), ("PPO", "CartPol-v1")],
)
def test_an_unknown_preset_is_a_config_error_that_lists_the_known_ones(algo: str, env: str) -> None:
    with pytest.raises(ConfigError, match="PPO CartPole-v1, SAC Pendulum-v1"):
        fs.rl.preset(algo, env)
    with pytest.raises(ConfigError):
        fs.rl.preset_timesteps(algo, env)


def test_preset_overrides_replace_fields_and_are_validated() -> None:
    cfg = fs.rl.preset("PPO", "CartPole-v1", n_envs=2, stats_window_size=20, name="mine")
    assert (cfg.n_envs, cfg.stats_window_size, cfg.name, cfg.n_steps) == (2, 20, "mine", 32)
    with pytest.raises(ValidationError):
        fs.rl.preset("PPO", "CartPole-v1", gamma=1.5)
    with pytest.raises(ValidationError):
        fs.rl.preset("SAC", "Pendulum-v1", no_such_field=1)
    # the table itself is not changed by overrides
    assert fs.rl.PRESETS[("PPO", "CartPole-v1")][1]["n_envs"] == 8


def test_linear_schedules_reach_the_sb3_model(empty: fs.EntityRegistry) -> None:
    trainer = fs.rl.SB3Trainer(
        empty, "PPO", "CartPole-v1", fs.rl.preset("PPO", "CartPole-v1"), progress=False
    )
    model = trainer.model
    assert (
        model.n_envs == 8
        and model.n_steps == 32
        and model.batch_size == 256
        and model.n_epochs == 20
    )
    assert (model.gamma, model.gae_lambda, model.ent_coef) == (0.98, 0.8, 0.0)
    # SB3's progress_remaining goes 1 → 0 over the run: linear decay from the start value
    assert model.lr_schedule(1.0) == pytest.approx(1e-3) and model.lr_schedule(
        0.5
    ) == pytest.approx(5e-4)
    assert model.clip_range(1.0) == pytest.approx(0.2) and model.clip_range(0.25) == pytest.approx(
        0.05
    )
    assert model.lr_schedule(0.0) == 0.0
    # and the stored config, env spec and model are there, linked
    assert empty.get(trainer.config.ref) == trainer.config
    assert trainer.model_entity.derived_from == (trainer.config.ref, trainer.env_spec.ref)


# -- 5. any SB3 algorithm --------------------------------------------------------------------------


class TinyPPO(PPO):
    """An SB3 algorithm that is not one of stable_baselines3's own (named "module:Class")."""


def test_a2c_trains_through_sb3_config_entity(empty: fs.EntityRegistry) -> None:
    metrics: list[fs.rl.RLStepMetrics] = []
    empty.bus.subscribe(fs.rl.RLStepMetrics, metrics.append)
    config = fs.rl.SB3ConfigEntity(
        algorithm_path="A2C", hyperparameters={"n_steps": 8, "learning_rate": 7e-4}
    )
    run = fs.rl.train_sb3(
        empty,
        "A2C",
        "CartPole-v1",
        config,
        total_timesteps=320,
        checkpoint_every=160,
        progress=False,
    )
    assert run.status == "completed" and run.algorithm == "A2C" and run.step == 320
    assert [c.step for c in sorted(empty.find(fs.CheckpointEntity), key=lambda c: c.step)] == [
        160,
        320,
    ]
    assert empty.get(run.config) == config  # stored as given
    assert dict(config.hyperparameters) == {"n_steps": 8, "learning_rate": 7e-4}
    assert metrics and {"policy_loss", "value_loss", "entropy"} <= metrics[-1].metrics.keys()
    assert [m.timestep for m in metrics] == sorted({m.timestep for m in metrics})
    evaluation = fs.rl.evaluate(empty, fs.rl.latest_checkpoint(empty, run), 2)
    assert len(evaluation.returns) == 2


def test_dqn_trains_with_its_replay_buffer_in_the_checkpoint(empty: fs.EntityRegistry) -> None:
    config = fs.rl.SB3ConfigEntity(
        algorithm_path="DQN",
        hyperparameters={
            "learning_starts": 100,
            "buffer_size": 1000,
            "train_freq": 4,
            "batch_size": 32,
        },
    )
    run = fs.rl.train_sb3(
        empty, stable_baselines3.DQN, "CartPole-v1", config, total_timesteps=300, progress=False
    )
    assert run.status == "completed" and run.algorithm == "DQN" and run.step == 300
    ckpt = fs.rl.latest_checkpoint(empty, run)
    state = safetensors_keys(empty, ckpt.optimizer_state)
    assert {"rb.observations", "rb.actions", "rb.rewards"} <= state
    assert safetensors_shape(empty, ckpt.optimizer_state, "rb.observations") == (
        300,
        1,
        4,
    )  # filled rows only


def test_the_default_config_of_an_algorithm_class(empty: fs.EntityRegistry) -> None:
    trainer = fs.rl.SB3Trainer(empty, stable_baselines3.A2C, "CartPole-v1", progress=False)
    assert (
        isinstance(trainer.config, fs.rl.SB3ConfigEntity) and trainer.config.algorithm_path == "A2C"
    )
    trainer = fs.rl.SB3Trainer(empty, "PPO", "CartPole-v1", progress=False)
    assert isinstance(trainer.config, fs.rl.PPOConfigEntity) and trainer.config.n_steps == 2048


def test_an_algorithm_named_module_colon_class_trains_and_resumes(empty: fs.EntityRegistry) -> None:
    path = f"{__name__}:TinyPPO"
    config = fs.rl.SB3ConfigEntity(
        algorithm_path=path, hyperparameters={"n_steps": 64, "batch_size": 64, "n_epochs": 1}
    )
    run = fs.rl.train_sb3(
        empty, path, "CartPole-v1", config, total_timesteps=128, checkpoint_every=64, progress=False
    )
    assert run.algorithm == path and run.status == "completed"
    first = min(empty.find(fs.CheckpointEntity), key=lambda c: c.step)
    trainer = fs.rl.resume_trainer(empty, first)
    assert type(trainer.model) is TinyPPO and trainer.model.num_timesteps == 64
    assert trainer.train(128).step == 128


# -- helpers reading blobs ---------------------------------------------------------------------------


def safetensors_keys(reg: fs.EntityRegistry, blob: fs.BlobRef) -> set[str]:
    from forseti.export.checkpoints import read_verified
    from forseti.export.tensorfile import read_safetensors

    tensors, _ = read_safetensors(read_verified(reg, blob))
    return set(tensors)


def safetensors_shape(reg: fs.EntityRegistry, blob: fs.BlobRef, name: str) -> tuple[int, ...]:
    from forseti.export.checkpoints import read_verified
    from forseti.export.tensorfile import read_safetensors

    tensors, _ = read_safetensors(read_verified(reg, blob))
    return tuple(tensors[name].shape)
