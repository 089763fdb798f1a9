"""Evaluating RL checkpoints, loading their policies, and exporting them to ONNX.

``evaluate(reg, checkpoint, episodes)`` rebuilds the policy from the checkpoint's run (its config
and environment spec), loads the verified weights, runs the episodes, stores an
:class:`EvaluationEntity` derived from the checkpoint and announces ``EvaluationCompleted``.
``export_policy`` exports the deterministic policy (what SB3's ``predict(obs,
deterministic=True)`` returns) to ONNX through :func:`forseti.export.export_onnx`, whose
onnxruntime parity check it passes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from ..entities import CheckpointEntity, EntityRef
from ..errors import ValidationError
from .algorithms import algorithm_class, build_model
from .entities import EnvSpecEntity, EvaluationEntity, RLConfigEntity, RLTrainingRunEntity
from .envs import make_vec
from .events import EvaluationCompleted
from .policy_io import read_policy

if TYPE_CHECKING:
    from ..export.entities import ExportEntity
    from ..registry import EntityRegistry

__all__ = [
    "evaluate",
    "load_policy",
    "export_policy",
    "PolicyActions",
    "run_episodes",
    "record_evaluation",
]

CheckpointRef = CheckpointEntity | EntityRef | str


def run_episodes(
    model: BaseAlgorithm,
    venv: VecEnv,
    episodes: int,
    *,
    deterministic: bool = True,
    **fields: Any,
) -> EvaluationEntity:
    """Play ``episodes`` episodes (SB3's ``evaluate_policy``) and describe them as an unstored
    :class:`EvaluationEntity` (``fields`` fill in run, checkpoint, env, step, seed). Training's
    random generators are left as they were."""
    with torch.random.fork_rng(devices=[]):
        state = np.random.get_state()
        try:
            returns, lengths = evaluate_policy(
                model,
                venv,
                n_eval_episodes=episodes,
                deterministic=deterministic,
                return_episode_rewards=True,
                warn=False,
            )
        finally:
            np.random.set_state(state)
    r = np.asarray(returns, dtype=np.float64)
    n = np.asarray(lengths, dtype=np.float64)
    return EvaluationEntity(
        episodes=episodes,
        deterministic=deterministic,
        mean_reward=float(r.mean()),
        std_reward=float(r.std()),
        mean_length=float(n.mean()),
        returns=tuple(float(x) for x in r),
        lengths=tuple(int(x) for x in n),
        **fields,
    )


def _checkpoint(reg: EntityRegistry, ref: CheckpointRef) -> CheckpointEntity:
    from ..export.artifacts import resolve_checkpoint

    return resolve_checkpoint(reg, ref)


def _run_parts(
    reg: EntityRegistry, ckpt: CheckpointEntity
) -> tuple[RLTrainingRunEntity, RLConfigEntity, EnvSpecEntity]:
    run = reg.get(ckpt.run) if ckpt.run is not None else None
    if not isinstance(run, RLTrainingRunEntity) or run.config is None or run.env is None:
        raise ValidationError(f"{ckpt.ref} is not a checkpoint of a forseti.rl run")
    config, spec = reg.get(run.config), reg.get(run.env)
    if not isinstance(config, RLConfigEntity) or not isinstance(spec, EnvSpecEntity):
        raise ValidationError(f"run {run.ref} does not name an RL config and an environment spec")
    return run, config, spec


def load_policy(
    reg: EntityRegistry,
    checkpoint: CheckpointRef,
    *,
    env: Callable[..., gym.Env] | None = None,
    device: str | torch.device = "cpu",
) -> BaseAlgorithm:
    """The SB3 model of ``checkpoint``'s run, with the checkpoint's (verified) policy weights.

    ``env`` is the factory of an environment made by a function that cannot be imported by name.
    Only the policy is restored (use :meth:`SB3Trainer.resume` to continue training)."""
    ckpt = _checkpoint(reg, checkpoint)
    run, config, spec = _run_parts(reg, ckpt)
    venv = make_vec(spec, config.n_envs, run.seed, env)
    model = build_model(algorithm_class(run.algorithm), config, venv, run.seed, device)
    read_policy(reg, ckpt.weights, model.policy)
    return model


def evaluate(
    reg: EntityRegistry,
    checkpoint: CheckpointRef,
    episodes: int = 10,
    *,
    deterministic: bool = True,
    seed: int | None = None,
    env: Callable[..., gym.Env] | None = None,
) -> EvaluationEntity:
    """Play ``episodes`` episodes with ``checkpoint``'s policy; store and announce the result.

    ``seed`` seeds the evaluation environment (default: the run's seed + 1)."""
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValidationError(f"episodes must be a positive integer, got {episodes!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValidationError(f"seed must be a non-negative integer, got {seed!r}")
    ckpt = _checkpoint(reg, checkpoint)
    model = load_policy(reg, ckpt, env=env)
    run, _, spec = _run_parts(reg, ckpt)
    eval_seed = run.seed + 1 if seed is None else seed
    venv = make_vec(spec, 1, eval_seed, env)
    try:
        draft = run_episodes(
            model,
            venv,
            episodes,
            deterministic=deterministic,
            run=ckpt.run,
            checkpoint=ckpt.ref,
            env=spec.ref,
            step=ckpt.step,
            seed=eval_seed,
            derived_from=(ckpt.ref,),
        )
    finally:
        venv.close()
    return record_evaluation(reg, draft, subject=ckpt.run)


def record_evaluation(
    reg: EntityRegistry, draft: EvaluationEntity, *, subject: EntityRef | None
) -> EvaluationEntity:
    """Store ``draft`` and publish its ``EvaluationCompleted`` (``subject``: the run version)."""
    stored = reg.add(draft)
    reg.bus.publish(
        EvaluationCompleted(
            evaluation=stored.ref,
            timestep=stored.step,
            episodes=stored.episodes,
            mean_reward=stored.mean_reward,
            std_reward=stored.std_reward,
            checkpoint=stored.checkpoint,
            subject=subject,
        )
    )
    return stored


class PolicyActions(nn.Module):
    """An SB3 policy's deterministic action as one traceable module: what ``model.predict(obs,
    deterministic=True)`` returns (argmax for discrete actions; for boxes the squashed action
    rescaled to the bounds, or the mean clipped to them). Its parameters *are* the policy's (same
    names), so a checkpoint's weights load into it directly."""

    def __init__(self, policy: nn.Module, action_space: gym.Space[Any]) -> None:
        super().__init__()
        for name, child in policy.named_children():
            self.add_module(name, child)
        for name, param in policy.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buf in policy.named_buffers(recurse=False):
            self.register_buffer(name, buf)
        object.__setattr__(self, "_policy", policy)
        self._box = isinstance(action_space, gym.spaces.Box)
        self._squash = bool(getattr(policy, "squash_output", False))
        if self._box:
            box: gym.spaces.Box = action_space  # type: ignore[assignment]
            self.register_buffer(
                "low", torch.as_tensor(box.low, dtype=torch.float32), persistent=False
            )
            self.register_buffer(
                "high", torch.as_tensor(box.high, dtype=torch.float32), persistent=False
            )

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        policy: Any = self._policy
        actions: torch.Tensor = policy._predict(observation, deterministic=True)
        if not self._box:
            return actions
        low, high = self.get_buffer("low"), self.get_buffer("high")
        if self._squash:
            return low + 0.5 * (actions + 1.0) * (high - low)
        return torch.maximum(torch.minimum(actions, high), low)


def export_policy(
    reg: EntityRegistry,
    checkpoint: CheckpointRef,
    *,
    out: str | os.PathLike[str] | None = None,
    opset: int | None = None,
    atol: float = 1e-5,
    env: Callable[..., gym.Env] | None = None,
) -> ExportEntity:
    """Export ``checkpoint``'s deterministic policy to ONNX (input ``observation`` [batch, …],
    output ``action``), checked by ``onnx.checker`` and against torch in onnxruntime; an
    :class:`~forseti.export.ExportEntity` derived from the checkpoint records it."""
    from ..export.onnx import export_onnx

    model = load_policy(reg, checkpoint, env=env)
    space = model.observation_space
    if not isinstance(space, gym.spaces.Box):
        raise ValidationError(f"ONNX export takes Box observations, not {type(space).__name__}")
    gen = np.random.default_rng(0)
    low = np.nan_to_num(space.low.astype(np.float64), neginf=-1.0, posinf=1.0)
    high = np.nan_to_num(space.high.astype(np.float64), neginf=-1.0, posinf=1.0)
    low, high = np.maximum(low, -10.0), np.minimum(high, 10.0)
    sample = gen.uniform(low, high, size=(3, *space.shape)).astype(np.float32)
    kwargs: dict[str, Any] = {} if opset is None else {"opset": opset}
    return export_onnx(
        reg,
        _checkpoint(reg, checkpoint),
        module=PolicyActions(model.policy, model.action_space).eval(),
        example_inputs=torch.from_numpy(sample),
        input_names=["observation"],
        output_names=["action"],
        atol=atol,
        out=out,
        **kwargs,
    )
