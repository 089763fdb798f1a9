"""Reinforcement learning as entities: algorithm settings, environments, runs and evaluations.

Every setting a stable-baselines3 run depends on is a field of a versioned config entity, so a run
can be repeated exactly and compared: :class:`PPOConfigEntity` and :class:`SACConfigEntity` name
SB3's hyper-parameters with SB3's defaults (and carry the rl-baselines3-zoo presets, see
:mod:`forseti.rl.presets`); :class:`SB3ConfigEntity` holds the keyword arguments of any other SB3
algorithm class. A learning rate or clip range may be a number or a zoo schedule string,
``"lin_1e-3"`` (linear decay from 1e-3 to 0 over the run).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)

from ..entities import Entity, EntityRef, FloatMap, JSONMap, Name, TrainingRunEntity
from ..entities.frozen import thaw

__all__ = [
    "Schedule",
    "RLConfigEntity",
    "PPOConfigEntity",
    "SACConfigEntity",
    "SB3ConfigEntity",
    "EnvSpecEntity",
    "RLTrainingRunEntity",
    "EvaluationEntity",
]

_LINEAR = re.compile(r"^lin_([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


def _schedule(value: float | str) -> float | str:
    if isinstance(value, str) and not _LINEAR.match(value):
        raise ValueError(
            f"a schedule is a number or 'lin_<start>' (e.g. 'lin_1e-3'), not {value!r}"
        )
    if isinstance(value, str) and float(value[4:]) <= 0:
        raise ValueError(f"a linear schedule starts above 0, not at {value[4:]}")
    return value


Schedule = Annotated[PositiveFloat | str, AfterValidator(_schedule)]
"""A positive number, or ``"lin_<start>"``: linear decay from ``start`` to 0 over the run (as in
rl-baselines3-zoo)."""

Gamma = Annotated[float, Field(ge=0.0, le=1.0)]


def _auto(value: float | str) -> float | str:
    if isinstance(value, str) and not (value == "auto" or re.match(r"^auto_[0-9.eE+-]+$", value)):
        raise ValueError(f"expected a number, 'auto' or 'auto_<init>', not {value!r}")
    return value


Auto = Annotated[NonNegativeFloat | str, AfterValidator(_auto)]


def linear_start(value: float | str) -> float:
    """The initial value of a :data:`Schedule` (the number itself when it is constant)."""
    return float(value[4:]) if isinstance(value, str) else float(value)


class RLConfigEntity(Entity):
    """What every stable-baselines3 run's config says: the algorithm, the policy class and its
    keyword arguments (``net_arch``, ``activation_fn`` by name …), how many environments step in
    parallel, and the preset it came from (if any)."""

    model_config = ConfigDict(allow_inf_nan=False)  # merged with Entity's
    entity_type: ClassVar[str] = "forseti.rl.RLConfig"
    #: the SB3 algorithm (a name of ``stable_baselines3`` or ``"package.module:Class"``)
    algorithm: ClassVar[str] = ""
    #: fields that are Forseti's, not keyword arguments of the SB3 algorithm
    _not_kwargs: ClassVar[frozenset[str]] = frozenset(
        {"name", "policy", "policy_kwargs", "n_envs", "preset", "hyperparameters", "algorithm_path"}
    )

    name: Name = "sb3"
    policy: Name = Field(default="MlpPolicy", description="an SB3 policy name")
    policy_kwargs: JSONMap = Field(
        default_factory=dict, description="keyword arguments of the policy (JSON values)"
    )
    n_envs: PositiveInt = Field(default=1, description="environments stepped in parallel")
    preset: str | None = Field(default=None, description="e.g. 'rl-zoo:CartPole-v1'")

    def algorithm_name(self) -> str:
        """The SB3 algorithm this config is for."""
        return type(self).algorithm

    def algorithm_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the SB3 algorithm's constructor (schedules as strings)."""
        return {
            name: thaw(getattr(self, name))
            for name in self.user_fields()
            if name not in self._not_kwargs
        }


class PPOConfigEntity(RLConfigEntity):
    """Every hyper-parameter of SB3's ``PPO`` (its defaults; see SB3's documentation)."""

    entity_type: ClassVar[str] = "forseti.rl.PPOConfig"
    algorithm: ClassVar[str] = "PPO"

    name: Name = "ppo"
    learning_rate: Schedule = 3e-4
    n_steps: int = Field(default=2048, gt=1, description="steps per environment per rollout")
    batch_size: PositiveInt = Field(default=64, description="minibatch size")
    n_epochs: PositiveInt = Field(default=10, description="passes over each rollout")
    gamma: Gamma = 0.99
    gae_lambda: Gamma = 0.95
    clip_range: Schedule = 0.2
    clip_range_vf: PositiveFloat | None = None
    normalize_advantage: bool = True
    ent_coef: NonNegativeFloat = 0.0
    vf_coef: NonNegativeFloat = 0.5
    max_grad_norm: PositiveFloat = 0.5
    use_sde: bool = False
    sde_sample_freq: int = Field(default=-1, ge=-1)
    target_kl: PositiveFloat | None = None
    stats_window_size: PositiveInt = 100


class SACConfigEntity(RLConfigEntity):
    """Every hyper-parameter of SB3's ``SAC`` (its defaults; see SB3's documentation).

    ``ent_coef`` is ``"auto"`` (learned, starting at 1), ``"auto_<init>"``, or a fixed number;
    ``target_entropy`` is ``"auto"`` (−dim(A)) or a number.
    """

    entity_type: ClassVar[str] = "forseti.rl.SACConfig"
    algorithm: ClassVar[str] = "SAC"

    name: Name = "sac"
    learning_rate: Schedule = 3e-4
    buffer_size: PositiveInt = 1_000_000
    learning_starts: NonNegativeInt = 100
    batch_size: PositiveInt = 256
    tau: Annotated[float, Field(gt=0.0, le=1.0)] = 0.005
    gamma: Gamma = 0.99
    train_freq: PositiveInt = Field(default=1, description="environment steps between updates")
    gradient_steps: int = Field(default=1, ge=-1, description="-1: as many as steps collected")
    ent_coef: Auto = "auto"
    target_update_interval: PositiveInt = 1
    target_entropy: Annotated[float | str, AfterValidator(_auto)] = "auto"
    use_sde: bool = False
    sde_sample_freq: int = Field(default=-1, ge=-1)
    use_sde_at_warmup: bool = False
    optimize_memory_usage: bool = False
    stats_window_size: PositiveInt = 100


class SB3ConfigEntity(RLConfigEntity):
    """The config of any SB3 algorithm class: ``algorithm_path`` (``"A2C"``, ``"DQN"``, or
    ``"sb3_contrib:TRPO"``) and its constructor's keyword arguments as JSON."""

    entity_type: ClassVar[str] = "forseti.rl.SB3Config"

    algorithm_path: Name
    hyperparameters: JSONMap = Field(default_factory=dict)

    def algorithm_name(self) -> str:
        return self.algorithm_path

    def algorithm_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = thaw(self.hyperparameters)
        return out


class EnvSpecEntity(Entity):
    """An environment, as gymnasium registers it: its id and keyword arguments (or the importable
    factory that makes it), and what its spaces look like."""

    entity_type: ClassVar[str] = "forseti.rl.EnvSpec"

    name: Name
    env_id: str | None = Field(default=None, description="a gymnasium id, e.g. 'CartPole-v1'")
    factory: str | None = Field(default=None, description="'module:function' that makes the env")
    env_kwargs: JSONMap = Field(default_factory=dict)
    observation_space: str = ""
    action_space: str = ""
    max_episode_steps: PositiveInt | None = None
    reward_threshold: float | None = None


class RLTrainingRunEntity(TrainingRunEntity):
    """A stable-baselines3 training run: ``step`` counts environment steps (SB3's
    ``num_timesteps``), ``config`` is the algorithm's config, ``env`` the environment's spec,
    ``model`` the policy's :class:`~forseti.ModelEntity`. ``stop_reason`` says why a run ended
    before ``total_steps`` (a handler asked it to stop)."""

    entity_type: ClassVar[str] = "forseti.rl.RLTrainingRun"

    env: EntityRef | None = None
    seed: int = 0
    stop_reason: str | None = None


class EvaluationEntity(Entity):
    """Episodes of a policy on an environment: returns and lengths of each, and their summary.

    ``checkpoint`` is the evaluated checkpoint (``None`` when the policy was evaluated between
    checkpoints; ``run`` then names the run's version)."""

    entity_type: ClassVar[str] = "forseti.rl.Evaluation"

    run: EntityRef | None = None
    checkpoint: EntityRef | None = None
    env: EntityRef | None = None
    step: NonNegativeInt = 0
    episodes: PositiveInt
    deterministic: bool = True
    seed: int | None = None
    mean_reward: float
    std_reward: NonNegativeFloat
    mean_length: NonNegativeFloat
    returns: tuple[float, ...] = ()
    lengths: tuple[int, ...] = ()
    metrics: FloatMap = Field(default_factory=dict)
