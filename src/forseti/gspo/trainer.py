"""``GSPOTrainer``: GSPO steps (:mod:`forseti.gspo.step`) as an entity-managed, event-emitting run.

Around the plain-torch loop it stores the settings, the policy's config and model, and the run
as entities; publishes ``GSPOTrainingStarted`` / ``GSPOStepCompleted`` / ``GSPOTrainingCompleted``
on the registry's bus; and every ``checkpoint_every`` steps (and at the end) commits a
``CheckpointEntity`` whose weights and training state are safetensors blobs, together with the
run's next version. Per-step work never touches the store (the hot-path rule).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import msgspec
import torch

from ..entities import CheckpointEntity, Entity, EntityRef, ModelEntity, utcnow
from ..errors import ValidationError
from ..events import Event
from ..registry.checks import stored_version
from .checkpoint import load_training_state, load_weights, save_training_state, save_weights
from .entities import GSPOConfigEntity, GSPOTrainingRunEntity
from .events import GSPOStepCompleted, GSPOTrainingCompleted, GSPOTrainingStarted
from .model import TinyCausalLM, TinyLMConfigEntity
from .step import GSPOState, gspo_step
from .tasks import VOCAB_SIZE, Task, get_task

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = ["GSPOTrainer"]

logger = logging.getLogger(__name__)


class GSPOTrainer:
    """Train a policy with GSPO on a verifiable task, as a run in ``reg``.

    ``GSPOTrainer(reg, config=GSPOConfigEntity(task="reverse"))`` builds a
    :class:`TinyCausalLM` (``model_config``, default sized for the toy tasks) unless a
    ``policy`` is given (any module following the :class:`~forseti.gspo.CausalLM` protocol, e.g.
    an ``HFCausalLM``). :meth:`train` runs to a total number of steps; :meth:`resume` picks a
    run up from one of its checkpoints, bit-exactly on CPU.
    """

    def __init__(
        self,
        reg: EntityRegistry,
        *,
        config: GSPOConfigEntity | None = None,
        policy: torch.nn.Module | None = None,
        model_config: TinyLMConfigEntity | None = None,
        model: ModelEntity | None = None,
        task: Task | None = None,
        run_name: str = "gspo",
        device: torch.device | str | None = None,
        progress: bool | None = None,
    ) -> None:
        self.reg = reg
        cfg = config or GSPOConfigEntity()
        # the task first: a bad task name stores nothing
        self.task = task or get_task(cfg.task, **dict(cfg.task_params))
        self.config = _stored(reg, cfg)
        if policy is None:
            self.model_config = _stored(
                reg, model_config or TinyLMConfigEntity(vocab_size=VOCAB_SIZE)
            )
            with torch.random.fork_rng(devices=[]):  # seeded init, global RNG left alone
                torch.manual_seed(self.config.seed)
                policy = TinyCausalLM(self.model_config)
        else:
            self.model_config = model_config
        if device is not None:
            dev = torch.device(device)
        else:  # where the policy already is
            dev = next(policy.parameters()).device
        self.policy = policy.to(dev)
        self.model = _stored(reg, model) if model is not None else self._model_entity(run_name)
        self.state = GSPOState.create(self.policy, self.task, self.config, dev)
        self.run: GSPOTrainingRunEntity | None = None
        self.run_name = run_name
        self.progress = progress
        self.history: list[dict[str, float]] = []
        self.checkpoints: list[CheckpointEntity] = []

    # -- entities ----------------------------------------------------------------------------------

    def _model_entity(self, run_name: str) -> ModelEntity:
        cfg = self.model_config
        params = sum(p.numel() for p in self.policy.parameters())
        entity = ModelEntity(
            name=f"{run_name}-policy",
            architecture=type(self.policy).__name__,
            hidden_size=getattr(cfg, "d_model", None),
            num_layers=getattr(cfg, "n_layers", None),
            vocab_size=getattr(cfg, "vocab_size", None),
            num_parameters=params,
            hyperparameters=cfg.model_dump(mode="json", include=set(cfg.user_fields())) if cfg else {},
            derived_from=(cfg.ref,) if cfg is not None else (),
        )
        return self.reg.add(entity)

    def _begin(self, total_steps: int) -> GSPOTrainingRunEntity:
        run: GSPOTrainingRunEntity
        if self.run is None:
            run = self.reg.add(
                GSPOTrainingRunEntity(
                    name=self.run_name,
                    task=self.config.task,
                    model=self.model.ref,
                    config=self.config.ref,
                    status="running",
                    step=self.state.step,
                    total_steps=total_steps,
                    started_at=utcnow(),
                )
            )
        else:
            head = self.reg.get(self.run.lineage_id)
            run = self.reg.commit(  # type: ignore[assignment]
                head.evolve(
                    status="running",
                    step=self.state.step,
                    total_steps=total_steps,
                    finished_at=None,
                    error=None,
                )
            )
        self.run = run
        self.reg.bus.publish(
            GSPOTrainingStarted(
                run_name=self.run_name,
                task=self.config.task,
                step=self.state.step,
                total_steps=total_steps,
                subject=run.ref,
            )
        )
        return run

    def checkpoint(
        self, metrics: dict[str, float], *, final: bool = False, events: tuple[Event, ...] = ()
    ) -> CheckpointEntity:
        """Commit a checkpoint (weights and training state as blobs) with the run's next version."""
        run = self._current_run()
        step = self.state.step
        changes: dict[str, Any] = {"step": step, "metrics": metrics}
        if final:
            changes.update(status="completed", finished_at=utcnow())
        draft = run.evolve(**changes)
        meta = {
            "format": "forseti.gspo/1",
            "architecture": type(self.policy).__name__,
            "step": str(step),
            "run": str(draft.ref),
            "model": str(self.model.ref),
            "config": str(self.config.ref),
        }
        weights = save_weights(self.reg, self.policy, meta)
        training = save_training_state(
            self.reg, self.state.optimizer, self.state.generators, meta, self.state.reference
        )
        ckpt = CheckpointEntity(
            run=draft.ref,
            model=self.model.ref,
            step=step,
            weights=weights,
            optimizer_state=training,
            metrics=metrics,
            derived_from=(self.config.ref,),
        )
        events = tuple(
            msgspec.structs.replace(e, checkpoint=ckpt.ref)
            if isinstance(e, GSPOTrainingCompleted)
            else e
            for e in events
        )
        # the step events still buffered go into this transaction first, so the log keeps
        # publication order (steps, then the checkpoint's versions, then events given here)
        new_run, stored = self.reg._commit([draft, ckpt], events=events, with_published=True)
        self.run = new_run  # type: ignore[assignment]
        self.checkpoints.append(stored)  # type: ignore[arg-type]
        return stored  # type: ignore[return-value]

    # -- training ----------------------------------------------------------------------------------

    def train(self, total_steps: int) -> GSPOTrainingRunEntity:
        """Run steps until ``total_steps`` have been done in all; return the completed run."""
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValidationError("total_steps is a positive integer")
        if total_steps < self.state.step:
            raise ValidationError(
                f"this run is at step {self.state.step}, past total_steps={total_steps}"
            )
        run = self._begin(total_steps)
        t0 = time.perf_counter()
        first = self.state.step
        metrics: dict[str, float] = dict(run.metrics)
        try:
            metrics = self._loop(total_steps, metrics)
        except BaseException as exc:
            self._failed(exc)
            raise
        done = GSPOTrainingCompleted(
            run_name=self.run_name,
            step=self.state.step,
            duration_s=time.perf_counter() - t0,
            metrics=metrics,
            subject=self.run_ref,
        )
        last = self.checkpoints[-1] if self.checkpoints else None
        if last is not None and last.step == self.state.step and self.state.step == first:
            # nothing new since the last checkpoint: mark the run completed, no duplicate blobs
            head = self._current_run()
            self.run = self.reg._commit(  # type: ignore[assignment]
                [head.evolve(status="completed", finished_at=utcnow())],
                events=(msgspec.structs.replace(done, checkpoint=last.ref),),
                with_published=True,
            )[0]
        else:
            self.checkpoint(metrics, final=True, events=(done,))
        logger.info(
            "GSPO run %s: %d steps in %.1f s",
            self.run_name,
            self.state.step - first,
            time.perf_counter() - t0,
        )
        return self._current_run()

    def _loop(self, total_steps: int, metrics: dict[str, float]) -> dict[str, float]:
        every = self.config.checkpoint_every
        with self._progress(total_steps) as advance:
            while self.state.step < total_steps:
                t = time.perf_counter()
                raw = gspo_step(self.state)
                metrics = _floats(raw)  # the one host sync of the step
                elapsed = time.perf_counter() - t
                metrics["steps_per_s"] = 1.0 / elapsed if elapsed > 0 else 0.0
                metrics["tokens_per_s"] = metrics["tokens"] / elapsed if elapsed > 0 else 0.0
                self.history.append(metrics)
                self.reg.bus.publish(
                    GSPOStepCompleted(step=self.state.step, metrics=metrics, subject=self.run_ref)
                )
                advance(metrics)
                if every and self.state.step % every == 0 and self.state.step < total_steps:
                    self.checkpoint(metrics)
        return metrics

    def _failed(self, exc: BaseException) -> None:
        """Record that the run stopped with an error (best effort; the error propagates)."""
        try:
            head = self.reg.get(self._current_run().lineage_id)
            self.run = self.reg.commit(  # type: ignore[assignment]
                head.evolve(
                    status="failed",
                    step=self.state.step,
                    error=f"{type(exc).__name__}: {exc}"[:2000] or type(exc).__name__,
                    finished_at=utcnow(),
                )
            )
        except Exception:  # noqa: BLE001 - the original error matters more
            logger.warning("could not mark run %s failed", self.run_name, exc_info=True)

    def _current_run(self) -> GSPOTrainingRunEntity:
        if self.run is None:
            raise ValidationError("the run has not started: call train() first")
        return self.run

    @property
    def run_ref(self) -> EntityRef | None:
        return self.run.ref if self.run is not None else None

    @contextmanager
    def _progress(self, total: int) -> Iterator[Any]:
        from ..progress import progress_bar

        show = {"reward_mean": "reward", "exact": "exact", "clip_frac": "clip"}
        label = f"GSPO {self.config.task}"
        with progress_bar(total, self.state.step, label, self.progress, show) as bar:
            yield lambda metrics: bar(1, metrics)

    # -- resuming ----------------------------------------------------------------------------------

    @classmethod
    def resume(
        cls,
        reg: EntityRegistry,
        checkpoint: CheckpointEntity | EntityRef,
        *,
        policy: torch.nn.Module | None = None,
        task: Task | None = None,
        device: torch.device | str | None = None,
        progress: bool | None = None,
    ) -> GSPOTrainer:
        """A trainer that continues the run of ``checkpoint`` from its step (weights, optimizer
        and random generators restored; hashes verified before anything is loaded)."""
        ckpt = checkpoint if isinstance(checkpoint, CheckpointEntity) else reg.get(checkpoint)
        if (
            not isinstance(ckpt, CheckpointEntity)
            or ckpt.optimizer_state is None
            or ckpt.run is None
        ):
            raise ValidationError(f"{ckpt.ref} is not a GSPO checkpoint with a training state")
        run = reg.get(ckpt.run)
        if not isinstance(run, GSPOTrainingRunEntity) or run.config is None:
            raise ValidationError(f"{ckpt.run} is not a GSPO training run")
        config = reg.get(run.config)
        model = reg.get(ckpt.model)
        if not isinstance(config, GSPOConfigEntity) or not isinstance(model, ModelEntity):
            raise ValidationError(f"run {run.ref} does not name a GSPO config and a model")
        model_config = None
        if policy is None:
            model_config = next(
                (e for e in map(reg.get, model.derived_from) if isinstance(e, TinyLMConfigEntity)),
                None,
            )
            if model_config is None:
                raise ValidationError(
                    f"model {model.ref} is not a TinyCausalLM of a stored config: pass policy="
                )
        trainer = cls(
            reg,
            config=config,
            policy=policy if policy is not None else TinyCausalLM(model_config),  # type: ignore[arg-type]
            model_config=model_config,
            model=model,
            task=task,
            run_name=run.name,
            device=device,
            progress=progress,
        )
        # both blobs are read (and their hashes verified) before anything is loaded
        weights, training = reg.read_blob(ckpt.weights), reg.read_blob(ckpt.optimizer_state)
        load_weights(reg, ckpt.weights, trainer.policy, data=weights)
        load_training_state(
            reg,
            ckpt.optimizer_state,
            trainer.state.optimizer,
            trainer.state.generators,
            data=training,
            reference=trainer.state.reference,
        )
        trainer.state.step = ckpt.step
        trainer.run = reg.get(run.lineage_id)  # type: ignore[assignment]
        return trainer


def _stored(reg: EntityRegistry, entity: Any) -> Any:
    """``entity`` if it is a stored version, else the version ``reg.add`` stores."""
    if not isinstance(entity, Entity):
        raise ValidationError(f"expected an entity, got {type(entity).__name__}")
    stored = stored_version(reg, entity)
    if stored is not None:
        return stored
    if entity.version != 1:
        raise ValidationError(f"{entity.ref} is not a stored version of its lineage")
    return reg.add(entity)


def _floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    names = list(metrics)
    values = torch.stack([metrics[n].detach().float().reshape(()) for n in names]).tolist()
    return dict(zip(names, values, strict=True))
