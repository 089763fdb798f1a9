"""Events of stable-baselines3 training runs, published on the registry's bus (and persisted).

``subject`` is always the run's version. A run publishes, in order: :class:`RLTrainingStarted`,
then :class:`RLStepMetrics` each time SB3 logs (every rollout for on-policy algorithms, every
``log_interval`` episodes for off-policy ones), :class:`CheckpointCreated` and
:class:`EvaluationCompleted` at their boundaries, and :class:`RLTrainingCompleted` with the final
checkpoint. A handler stops a run by publishing :class:`RLStopRequested` for it.
"""

from __future__ import annotations

from ..entities import EntityRef
from ..events import Event

__all__ = [
    "RLTrainingStarted",
    "RLStepMetrics",
    "CheckpointCreated",
    "EvaluationCompleted",
    "RLTrainingCompleted",
    "RLStopRequested",
]


class RLTrainingStarted(Event, frozen=True):
    """A run started (or resumed at ``timestep``)."""

    topic = "forseti.rl.TrainingStarted"
    run_name: str
    algorithm: str
    env: str
    timestep: int = 0
    total_timesteps: int = 0
    seed: int = 0


class RLStepMetrics(Event, frozen=True):
    """What SB3 logged, without its ``rollout/``, ``train/``, ``time/`` prefixes: ``ep_rew_mean``,
    ``ep_len_mean``, ``fps``, the losses, ``approx_kl``, ``clip_fraction``, ``entropy`` (PPO,
    = −``entropy_loss``), ``ent_coef`` (SAC), ``learning_rate`` … The losses are those of the
    most recent update, as in SB3's own log."""

    topic = "forseti.rl.StepMetrics"
    timestep: int
    metrics: dict[str, float]


class CheckpointCreated(Event, frozen=True):
    """A checkpoint was committed (in the same transaction as this event)."""

    topic = "forseti.rl.CheckpointCreated"
    checkpoint: EntityRef
    timestep: int
    metrics: dict[str, float]


class EvaluationCompleted(Event, frozen=True):
    """Evaluation episodes finished; ``evaluation`` is the stored :class:`EvaluationEntity`."""

    topic = "forseti.rl.EvaluationCompleted"
    evaluation: EntityRef
    timestep: int
    episodes: int
    mean_reward: float
    std_reward: float
    checkpoint: EntityRef | None = None


class RLTrainingCompleted(Event, frozen=True):
    """The run ended: at ``total_timesteps``, or early when ``stop_reason`` is set."""

    topic = "forseti.rl.TrainingCompleted"
    run_name: str
    timestep: int
    duration_s: float
    metrics: dict[str, float]
    checkpoint: EntityRef | None = None
    stop_reason: str | None = None


class RLStopRequested(Event, frozen=True):
    """Ask the run ``subject`` names (any of its versions) to stop at the next environment step;
    it then saves a final checkpoint and completes with ``stop_reason=reason``."""

    topic = "forseti.rl.StopRequested"
    reason: str
