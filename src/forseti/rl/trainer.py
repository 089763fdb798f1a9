"""``SB3Trainer`` / ``train_sb3``: a stable-baselines3 algorithm as an entity-managed run.

Around SB3's own ``learn`` loop (untouched: the hot path is SB3's), the trainer stores the config,
the environment's spec, the policy's model and the run as entities; publishes the run's events
through the callback bridge; and at rollout boundaries commits checkpoints (policy weights and
the training state as safetensors blobs, with the run's next version, in one transaction) and
evaluations. Per-step work never touches the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from ..entities import CheckpointEntity, Entity, EntityRef, ModelEntity, utcnow
from ..errors import ValidationError
from ..events import Event
from ..progress import Advance, progress_bar
from .algorithms import AlgorithmLike, algorithm_class, algorithm_path, build_model, config_for
from .bridge import Bridge, MetricsWriter
from .checks import as_run, check_plan, count, no_progress, stored_or_new
from .entities import EnvSpecEntity, EvaluationEntity, RLConfigEntity, RLTrainingRunEntity
from .envs import EnvLike, env_spec, make_vec
from .evaluation import record_evaluation, run_episodes
from .events import (
    CheckpointCreated,
    RLStepMetrics,
    RLStopRequested,
    RLTrainingCompleted,
    RLTrainingStarted,
)
from .policy_io import write_policy, write_state

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = ["SB3Trainer"]

logger = logging.getLogger(__name__)


class SB3Trainer:
    """Train an SB3 algorithm on an environment as a run in ``reg``.

    ``SB3Trainer(reg, "PPO", "CartPole-v1", config=fs.rl.preset("PPO", "CartPole-v1"), seed=0)``
    checks the environment (SB3's env checker: a broken one raises
    :class:`~forseti.rl.EnvCheckError` before anything is stored), builds the SB3 model and
    stores the config, environment spec and policy model. :meth:`train` runs to a total number of
    environment steps; :meth:`resume` continues a run from a checkpoint (bit-identically on CPU).
    """

    @classmethod
    def resume(
        cls,
        reg: EntityRegistry,
        checkpoint: CheckpointEntity | RLTrainingRunEntity | EntityRef | str,
        **options: Any,
    ) -> SB3Trainer:
        """A trainer continuing ``checkpoint``'s run (see :func:`forseti.rl.resume_trainer`)."""
        from .api import resume_trainer

        return resume_trainer(reg, checkpoint, **options)

    def __init__(
        self,
        reg: EntityRegistry,
        algo: AlgorithmLike,
        env: EnvLike,
        config: RLConfigEntity | None = None,
        *,
        seed: int = 0,
        run_name: str | None = None,
        env_kwargs: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        progress: bool | None = None,
        replay_buffer: bool = True,
        model: ModelEntity | None = None,
        env_factory: Callable[..., Any] | None = None,
    ) -> None:
        cls = algorithm_class(algo)
        cfg = config_for(cls, config)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
            raise ValidationError(f"seed must be an integer in [0, 2**31), got {seed!r}")
        spec, self._factory = env_spec(
            env, env_kwargs=env_kwargs, factory=env_factory
        )  # checks the environment
        self.reg = reg
        self.seed = seed
        self.progress = progress
        self.replay_buffer = replay_buffer
        self.algorithm = algorithm_path(cls)
        self.model: BaseAlgorithm = build_model(
            cls, cfg, make_vec(spec, cfg.n_envs, seed, self._factory), seed, device
        )
        config_entity, new_config = stored_or_new(reg, cfg)
        spec_entity, new_spec = stored_or_new(reg, spec)
        policy = self.model.policy
        model_entity = model or ModelEntity(
            name=f"{run_name or cfg.name}-policy",
            architecture=type(policy).__name__,
            num_parameters=sum(p.numel() for p in policy.parameters()) or None,
            hyperparameters={
                "algorithm": self.algorithm,
                "policy": cfg.policy,
                "policy_kwargs": dict(cfg.policy_kwargs),
                "observation_space": spec_entity.observation_space,
                "action_space": spec_entity.action_space,
            },
            derived_from=(config_entity.ref, spec_entity.ref),
        )
        new: list[Entity] = [
            e for e, is_new in ((config_entity, new_config), (spec_entity, new_spec)) if is_new
        ]
        if model is not None:
            model_entity, new_model = stored_or_new(reg, model)
            if new_model:
                new.append(model_entity)
        else:
            new.append(model_entity)
        if new:
            reg.commit_many(new)  # one transaction; the drafts are now the stored versions
        self.config: RLConfigEntity = config_entity
        self.env_spec: EnvSpecEntity = spec_entity
        self.model_entity: ModelEntity = model_entity
        self.run_name = run_name or f"{self.algorithm.lower()}-{spec.name}"
        self.run: RLTrainingRunEntity | None = None
        self.checkpoints: list[CheckpointEntity] = []
        self.evaluations: list[EvaluationEntity] = []
        self.metrics: dict[str, float] = {}
        self._stop_reason: str | None = None
        self._plan: dict[str, int] = {}
        self._next_checkpoint: int | None = None
        self._next_eval: int | None = None
        self._advance: Advance = no_progress

    # -- entities ----------------------------------------------------------------------------------

    @property
    def run_ref(self) -> EntityRef | None:
        return self.run.ref if self.run is not None else None

    def _current_run(self) -> RLTrainingRunEntity:
        if self.run is None:
            raise ValidationError("the run has not started: call train() first")
        return self.run

    def _begin(self, total: int) -> RLTrainingRunEntity:
        step = self.model.num_timesteps
        if self.run is None:
            run = self.reg.add(
                RLTrainingRunEntity(
                    name=self.run_name,
                    algorithm=self.algorithm,
                    model=self.model_entity.ref,
                    config=self.config.ref,
                    env=self.env_spec.ref,
                    seed=self.seed,
                    status="running",
                    step=step,
                    total_steps=total,
                    started_at=utcnow(),
                )
            )
        else:
            head = self.reg.get(self.run.lineage_id)
            run = as_run(
                self.reg.commit(
                    head.evolve(
                        status="running",
                        step=step,
                        total_steps=total,
                        finished_at=None,
                        error=None,
                        stop_reason=None,
                    )
                )
            )
        self.run = run
        self.reg.bus.publish(
            RLTrainingStarted(
                run_name=self.run_name,
                algorithm=self.algorithm,
                env=self.env_spec.name,
                timestep=step,
                total_timesteps=total,
                seed=self.seed,
                subject=run.ref,
            )
        )
        return run

    def checkpoint(
        self, *, final: bool = False, events: tuple[Event, ...] = ()
    ) -> CheckpointEntity:
        """Commit a checkpoint (policy weights and training state as safetensors blobs) with the
        run's next version; ``CheckpointCreated`` (and ``events``) go in the same transaction."""
        run = self._current_run()
        step = self.model.num_timesteps
        changes: dict[str, Any] = {"step": step, "metrics": self.metrics}
        if run.total_steps is not None and step > run.total_steps:
            changes["total_steps"] = step  # SB3 finishes its last rollout
        if final:
            changes.update(status="completed", finished_at=utcnow(), stop_reason=self._stop_reason)
        draft = run.evolve(**changes)
        meta = {
            "forseti.step": str(step),
            "forseti.run": str(draft.ref),
            "forseti.model": str(self.model_entity.ref),
            "forseti.rl.algorithm": self.algorithm,
        }
        weights = write_policy(self.reg, self.model.policy, meta)
        training = write_state(self.reg, self.model, meta, replay_buffer=self.replay_buffer)
        ckpt = CheckpointEntity(
            run=draft.ref,
            model=self.model_entity.ref,
            step=step,
            weights=weights,
            optimizer_state=training,
            metrics=self.metrics,
            derived_from=(self.config.ref, self.env_spec.ref),
        )
        created = CheckpointCreated(
            checkpoint=ckpt.ref, timestep=step, metrics=dict(self.metrics), subject=draft.ref
        )
        events = tuple(
            msgspec.structs.replace(e, checkpoint=ckpt.ref, subject=draft.ref)
            if isinstance(e, RLTrainingCompleted)
            else e
            for e in events
        )
        new_run, stored = self.reg._commit(
            [draft, ckpt], events=(created, *events), with_published=True
        )
        self.run = new_run  # type: ignore[assignment]
        self.checkpoints.append(stored)  # type: ignore[arg-type]
        return stored  # type: ignore[return-value]

    def evaluate(
        self, episodes: int = 5, *, checkpoint: CheckpointEntity | None = None
    ) -> EvaluationEntity:
        """Run ``episodes`` deterministic episodes of the current policy on a fresh environment
        (seeded from the run's seed and step), store and announce the evaluation."""
        count(episodes, "episodes", 1)
        step = self.model.num_timesteps
        env = make_vec(self.env_spec, 1, self.seed + 7919 + step, self._factory)
        try:
            evaluation = run_episodes(
                self.model,
                env,
                episodes,
                run=self.run_ref,
                checkpoint=checkpoint.ref if checkpoint is not None else None,
                env=self.env_spec.ref,
                step=step,
                seed=self.seed + 7919 + step,
                derived_from=(
                    checkpoint.ref if checkpoint is not None else self._current_run().ref,
                ),
            )
        finally:
            env.close()
        stored = record_evaluation(self.reg, evaluation, subject=self.run_ref)
        self.evaluations.append(stored)
        return stored

    # -- training ----------------------------------------------------------------------------------

    def train(
        self,
        total_timesteps: int,
        *,
        checkpoint_every: int = 0,
        eval_every: int = 0,
        eval_episodes: int = 5,
        log_interval: int | None = None,
    ) -> RLTrainingRunEntity:
        """Train until ``total_timesteps`` environment steps in all (or a handler asks the run to
        stop); checkpoint every ``checkpoint_every`` steps and evaluate every ``eval_every``
        (0: only at the end / never; both act at the first rollout boundary past each multiple).
        ``log_interval`` is SB3's (default: every rollout on-policy, every 4 episodes
        off-policy). Returns the completed run."""
        plan = check_plan(
            total_timesteps, checkpoint_every, eval_every, eval_episodes, log_interval
        )
        total, every, evals, eval_episodes = (
            plan["total"],
            plan["every"],
            plan["evals"],
            plan["episodes"],
        )
        start = self.model.num_timesteps
        if total <= start:
            raise ValidationError(
                f"this run is at step {start}: total_timesteps={total} leaves nothing to do"
            )
        log_interval = plan.get("log_interval") or (
            4 if isinstance(self.model, OffPolicyAlgorithm) else 1
        )
        self._plan = {"every": every, "evals": evals, "episodes": eval_episodes}
        self._next_checkpoint = (start // every + 1) * every if every else None
        self._next_eval = (start // evals + 1) * evals if evals else None
        self._stop_reason = None
        # subscribed first: a handler of RLTrainingStarted may already ask the run to stop
        sub = self.reg.bus.subscribe(RLStopRequested, self._stop, where=self._is_mine)
        try:
            self._begin(total)
        except BaseException:
            self.reg.bus.unsubscribe(sub)
            raise
        self.model.set_logger(Logger(folder=None, output_formats=[MetricsWriter(self._logged)]))
        t0 = time.perf_counter()
        try:
            label = f"{self.algorithm} {self.env_spec.name}"
            show = {"ep_rew_mean": "return", "fps": "fps"}
            with progress_bar(total, start, label, self.progress, show) as advance:
                self._advance = advance
                bridge = Bridge(self._boundary, lambda: self._stop_reason is not None, advance)
                self.model.learn(
                    total - start,
                    callback=bridge,
                    log_interval=log_interval,
                    reset_num_timesteps=False,
                )
            done = RLTrainingCompleted(
                run_name=self.run_name,
                timestep=self.model.num_timesteps,
                duration_s=time.perf_counter() - t0,
                metrics=dict(self.metrics),
                stop_reason=self._stop_reason,
            )
            if evals:  # the final evaluation, then the completion: the last event of the run
                final = self.checkpoint(final=True)
                self.evaluate(eval_episodes, checkpoint=final)
                self.reg.bus.publish(
                    msgspec.structs.replace(done, checkpoint=final.ref, subject=final.run)
                )
            else:
                self.checkpoint(final=True, events=(done,))
        except BaseException as exc:
            self._failed(exc)
            raise
        finally:
            self._advance = no_progress
            self.reg.bus.unsubscribe(sub)
        logger.info(
            "%s: %d steps in %.1f s",
            self.run_name,
            self.model.num_timesteps - start,
            time.perf_counter() - t0,
        )
        return self._current_run()

    def _logged(self, timestep: int, metrics: dict[str, float]) -> None:
        self.metrics = metrics
        self._advance(0, metrics)
        self.reg.bus.publish(
            RLStepMetrics(timestep=timestep, metrics=metrics, subject=self.run_ref)
        )

    def _is_mine(self, event: RLStopRequested) -> bool:
        run, subject = self.run, event.subject
        return run is not None and subject is not None and subject.lineage_id == run.lineage_id

    def _stop(self, event: RLStopRequested) -> None:
        if self._stop_reason is None:
            self._stop_reason = event.reason or "stop requested"

    def _boundary(self) -> None:
        step = self.model.num_timesteps
        ckpt = None
        if self._next_checkpoint is not None and step >= self._next_checkpoint:
            every = self._plan["every"]
            self._next_checkpoint = (step // every + 1) * every
            ckpt = self.checkpoint()
        if self._next_eval is not None and step >= self._next_eval:
            evals = self._plan["evals"]
            self._next_eval = (step // evals + 1) * evals
            self.evaluate(self._plan["episodes"], checkpoint=ckpt)

    def _failed(self, exc: BaseException) -> None:
        """Record that the run stopped with an error (best effort; the error propagates)."""
        try:
            head = as_run(self.reg.get(self._current_run().lineage_id))
            step = self.model.num_timesteps
            if head.total_steps is not None:
                step = min(step, head.total_steps)
            self.run = self.reg.commit(
                head.evolve(
                    status="failed",
                    step=step,
                    error=f"{type(exc).__name__}: {exc}"[:2000] or type(exc).__name__,
                    finished_at=utcnow(),
                )
            )
        except Exception:  # noqa: BLE001 - the original error matters more
            logger.warning("could not mark run %s failed", self.run_name, exc_info=True)
