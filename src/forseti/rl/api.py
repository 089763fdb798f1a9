"""The functions most code calls: ``train_sb3``, ``atrain_sb3``, ``resume_sb3``,
``latest_checkpoint``, ``stop_when``."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import gymnasium as gym
import torch

from ..entities import CheckpointEntity, EntityRef, ModelEntity
from ..errors import NotFoundError, ValidationError
from ..events import Subscription
from ..registry import AsyncEntityRegistry
from .algorithms import AlgorithmLike, algorithm_class
from .checks import check_plan
from .entities import RLConfigEntity, RLTrainingRunEntity
from .envs import EnvLike
from .evaluation import _checkpoint, _run_parts
from .events import RLStepMetrics, RLStopRequested
from .policy_io import read_policy, read_state
from .trainer import SB3Trainer

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = [
    "train_sb3",
    "atrain_sb3",
    "resume_sb3",
    "resume_trainer",
    "latest_checkpoint",
    "run_checkpoints",
    "stop_when",
]


def train_sb3(
    reg: EntityRegistry,
    algo: AlgorithmLike,
    env: EnvLike,
    config: RLConfigEntity | None = None,
    total_timesteps: int = 10_000,
    seed: int = 0,
    *,
    checkpoint_every: int = 0,
    eval_every: int = 0,
    eval_episodes: int = 5,
    run_name: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    progress: bool | None = None,
    device: str | torch.device = "cpu",
    replay_buffer: bool = True,
    log_interval: int | None = None,
) -> RLTrainingRunEntity:
    """Train ``algo`` (``"PPO"``, ``"SAC"``, or any SB3 algorithm class) on ``env`` as a run in
    ``reg`` and return the completed :class:`RLTrainingRunEntity`.

    ``config`` defaults to SB3's defaults for the algorithm (``fs.rl.preset("PPO",
    "CartPole-v1")`` gives the zoo's tuned settings). Checkpoints are committed every
    ``checkpoint_every`` environment steps and at the end; ``eval_every`` adds evaluations of
    ``eval_episodes`` episodes. A handler of :class:`RLStepMetrics` stops the run by publishing
    :class:`RLStopRequested` for it (see :func:`stop_when`). See :class:`SB3Trainer`.
    """
    check_plan(total_timesteps, checkpoint_every, eval_every, eval_episodes, log_interval)
    trainer = SB3Trainer(
        reg,
        algo,
        env,
        config,
        seed=seed,
        run_name=run_name,
        env_kwargs=env_kwargs,
        device=device,
        progress=progress,
        replay_buffer=replay_buffer,
    )
    return trainer.train(
        total_timesteps,
        checkpoint_every=checkpoint_every,
        eval_every=eval_every,
        eval_episodes=eval_episodes,
        log_interval=log_interval,
    )


async def atrain_sb3(
    reg: EntityRegistry | AsyncEntityRegistry,
    algo: AlgorithmLike,
    env: EnvLike,
    config: RLConfigEntity | None = None,
    total_timesteps: int = 10_000,
    seed: int = 0,
    **options: Any,
) -> RLTrainingRunEntity:
    """:func:`train_sb3` (same arguments; ``reg`` may be async) in a worker thread: the event
    loop keeps running while SB3 trains, and async handlers of the run's events run as usual."""
    sync = reg.sync if isinstance(reg, AsyncEntityRegistry) else reg
    call = functools.partial(train_sb3, sync, algo, env, config, total_timesteps, seed, **options)
    return await anyio.to_thread.run_sync(call)


def run_checkpoints(
    reg: EntityRegistry, run: RLTrainingRunEntity | EntityRef | str
) -> list[CheckpointEntity]:
    """The checkpoints of ``run`` (any of its versions), fewest steps first."""
    from ..trees.discover import resolve

    entity = (
        resolve(reg, run)
        if isinstance(run, str)
        else reg.get(run)
        if isinstance(run, EntityRef)
        else run
    )
    if not isinstance(entity, RLTrainingRunEntity):
        raise ValidationError(f"{run!r} is not an RL training run")
    found = [
        c
        for c in reg.find(CheckpointEntity)
        if c.run is not None and c.run.lineage_id == entity.lineage_id
    ]
    return sorted(found, key=lambda c: (c.step, c.created_at))


def latest_checkpoint(
    reg: EntityRegistry, run: RLTrainingRunEntity | EntityRef | str
) -> CheckpointEntity:
    """The checkpoint of ``run`` (any of its versions) with the most steps."""
    found = run_checkpoints(reg, run)
    if not found:
        raise NotFoundError(f"run {run!r} has no checkpoint")
    return found[-1]


def resume_trainer(
    reg: EntityRegistry,
    checkpoint: CheckpointEntity | RLTrainingRunEntity | EntityRef | str,
    *,
    env: Callable[..., gym.Env] | None = None,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> SB3Trainer:
    """A trainer that continues ``checkpoint``'s run from it (a run: from its latest checkpoint),
    with the policy, optimizers, counters, replay buffer, environments and random generators
    restored (hashes verified before anything is loaded)."""
    target: Any = checkpoint
    if isinstance(target, EntityRef):
        target = reg.get(target)
    if isinstance(target, RLTrainingRunEntity):
        target = latest_checkpoint(reg, target)
    ckpt = _checkpoint(reg, target)
    run, config, spec = _run_parts(reg, ckpt)
    if ckpt.optimizer_state is None:
        raise ValidationError(f"{ckpt.ref} has no training state to resume from")
    model = reg.get(ckpt.model)
    if not isinstance(model, ModelEntity):
        raise ValidationError(f"{ckpt.ref} does not name its policy's model")
    trainer = SB3Trainer(
        reg,
        algorithm_class(run.algorithm),
        spec,
        config,
        seed=run.seed,
        run_name=run.name,
        device=device,
        progress=progress,
        model=model,
        env_factory=env,
    )
    read_policy(reg, ckpt.weights, trainer.model.policy)
    read_state(reg, ckpt.optimizer_state, trainer.model)
    trainer.run = reg.get(run.lineage_id)  # type: ignore[assignment]
    trainer.metrics = dict(ckpt.metrics)
    trainer.checkpoints.append(ckpt)
    return trainer


def resume_sb3(
    reg: EntityRegistry,
    checkpoint: CheckpointEntity | RLTrainingRunEntity | EntityRef | str,
    total_timesteps: int,
    *,
    checkpoint_every: int = 0,
    eval_every: int = 0,
    eval_episodes: int = 5,
    env: Callable[..., gym.Env] | None = None,
    progress: bool | None = None,
    device: str | torch.device = "cpu",
) -> RLTrainingRunEntity:
    """Continue a run from ``checkpoint`` (or a run's latest checkpoint) to ``total_timesteps``."""
    check_plan(total_timesteps, checkpoint_every, eval_every, eval_episodes)
    trainer = resume_trainer(reg, checkpoint, env=env, device=device, progress=progress)
    return trainer.train(
        total_timesteps,
        checkpoint_every=checkpoint_every,
        eval_every=eval_every,
        eval_episodes=eval_episodes,
    )


def stop_when(
    reg: EntityRegistry,
    metric: str,
    threshold: float,
    *,
    run: RLTrainingRunEntity | EntityRef | None = None,
    below: bool = False,
) -> Subscription:
    """Stop training runs (or only ``run``) once a logged metric reaches ``threshold``
    (``below=True``: falls to it): a handler of :class:`RLStepMetrics` that publishes
    :class:`RLStopRequested`. ``reg.bus.unsubscribe(sub)`` removes it."""
    if not isinstance(metric, str) or not metric:
        raise ValidationError("metric is the name of a logged value, e.g. 'ep_rew_mean'")
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or math.isnan(threshold)
    ):
        raise ValidationError(f"threshold must be a number, got {threshold!r}")
    lineage = run.lineage_id if run is not None else None

    def check(event: RLStepMetrics) -> None:
        value = event.metrics.get(metric)
        if value is None or event.subject is None:
            return
        if (value <= threshold) if below else (value >= threshold):
            reason = f"{metric} {value:.6g} {'<=' if below else '>='} {threshold:g}"
            reg.bus.publish(RLStopRequested(reason=reason, subject=event.subject))

    where = (
        None
        if lineage is None
        else (lambda e: e.subject is not None and e.subject.lineage_id == lineage)
    )
    return reg.bus.subscribe(RLStepMetrics, check, where=where)
