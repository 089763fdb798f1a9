"""PPO, SAC and any stable-baselines3 algorithm as entity-managed, event-emitting training runs.

* :func:`train_sb3` / :func:`atrain_sb3` / :class:`SB3Trainer`: SB3's own training loop, with the
  config (:class:`PPOConfigEntity`, :class:`SACConfigEntity`, :class:`SB3ConfigEntity`; the
  rl-baselines3-zoo presets through :func:`preset`), the environment's spec, the policy's model,
  the run, its checkpoints and evaluations stored as entities with provenance;
* the callback bridge: :class:`RLTrainingStarted`, :class:`RLStepMetrics`,
  :class:`CheckpointCreated`, :class:`EvaluationCompleted`, :class:`RLTrainingCompleted` on the
  registry's bus; a handler stops a run with :class:`RLStopRequested` (:func:`stop_when`);
* checkpoints as safetensors blobs (policy weights; optimizers, counters, replay buffer,
  environments and random generators) — never SB3's zip/pickle — and :func:`resume_sb3`, which
  continues a run bit-identically on CPU;
* :func:`evaluate`, :func:`load_policy`, and :func:`export_policy` (ONNX, parity-checked).

See ``docs/rl.md``.
"""

from .algorithms import algorithm_class
from .api import (
    atrain_sb3,
    latest_checkpoint,
    resume_sb3,
    resume_trainer,
    run_checkpoints,
    stop_when,
    train_sb3,
)
from .entities import (
    EnvSpecEntity,
    EvaluationEntity,
    PPOConfigEntity,
    RLConfigEntity,
    RLTrainingRunEntity,
    SACConfigEntity,
    SB3ConfigEntity,
    Schedule,
)
from .envs import EnvCheckError, check_environment
from .evaluation import PolicyActions, evaluate, export_policy, load_policy
from .events import (
    CheckpointCreated,
    EvaluationCompleted,
    RLStepMetrics,
    RLStopRequested,
    RLTrainingCompleted,
    RLTrainingStarted,
)
from .presets import PRESETS, preset, preset_timesteps
from .trainer import SB3Trainer

__all__ = [
    "train_sb3",
    "atrain_sb3",
    "resume_sb3",
    "resume_trainer",
    "latest_checkpoint",
    "run_checkpoints",
    "stop_when",
    "SB3Trainer",
    "algorithm_class",
    "RLConfigEntity",
    "PPOConfigEntity",
    "SACConfigEntity",
    "SB3ConfigEntity",
    "Schedule",
    "EnvSpecEntity",
    "RLTrainingRunEntity",
    "EvaluationEntity",
    "EnvCheckError",
    "check_environment",
    "evaluate",
    "load_policy",
    "export_policy",
    "PolicyActions",
    "RLTrainingStarted",
    "RLStepMetrics",
    "CheckpointCreated",
    "EvaluationCompleted",
    "RLTrainingCompleted",
    "RLStopRequested",
    "PRESETS",
    "preset",
    "preset_timesteps",
]
