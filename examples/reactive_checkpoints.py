"""Reactive checkpoints: a training loop publishes events, handlers and a projection react.

A tiny pure-Python "training loop" (fit ``y = 2x`` with SGD on four floats) publishes a typed
``StepCompleted`` event per step on ``reg.bus``. Nothing in the loop knows about checkpoints:

* a handler subscribed with ``@fs.on(StepCompleted, where=...)`` stores a checkpoint every
  ``EVERY`` steps (weights as a blob, a ``CheckpointEntity`` naming the exact run and model
  versions);
* an async handler keeps the best loss seen so far;
* a deliberately flaky handler fails once: the bus records a ``HandlerFailed`` event and the other
  handlers (checkpointing included) carry on;
* ``@fs.emit_events`` wraps the training function, so every event of the call (steps,
  checkpoints, the failure) is linked to its ``CallStarted`` by causation and correlation ids;
* a ``fs.Projection`` reads the persisted log and keeps a ``best-checkpoint`` config entity up to
  date, exactly once per event (re-running it processes nothing new).

Run it with ``python examples/reactive_checkpoints.py``; it writes only to a temporary directory.
"""

import struct
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import forseti as fs

STEPS = 20
EVERY = 5  # checkpoint every EVERY steps
FLAKY_STEP = 7  # the flaky handler fails on this step


class StepCompleted(fs.Event, frozen=True):
    """One optimisation step finished (``subject``: the run version being trained)."""

    topic = "example.train.step_completed"
    step: int
    loss: float
    weight: float


class Checkpointer:
    """Handlers that need the registry and the run: methods of an object, included with
    ``reg.bus.include(obj)`` (the marks of ``@fs.on`` subscribe its bound methods)."""

    def __init__(self, reg: fs.EntityRegistry, run: fs.TrainingRunEntity) -> None:
        self.reg, self.run = reg, run
        self.best_loss = float("inf")

    @fs.on(StepCompleted, where=lambda e: e.step % EVERY == 0, priority=10)
    def save(self, event: StepCompleted) -> None:
        # Runs inside the bus's delivery of `event`: the EntityRegistered event this add()
        # writes (in the same transaction as the checkpoint) is caused by `event`.
        weights = self.reg.put_blob(struct.pack("<d", event.weight), format="bin")
        self.reg.add(
            fs.CheckpointEntity(
                run=self.run.ref,
                model=self.run.model,
                step=event.step,
                weights=weights,
                metrics={"loss": event.loss},
            )
        )

    @fs.on(StepCompleted)
    async def watch_loss(self, event: StepCompleted) -> None:
        # An async handler: publish() runs it to completion on the bus's own loop thread.
        self.best_loss = min(self.best_loss, event.loss)


@fs.on(StepCompleted, where=lambda e: e.step == FLAKY_STEP)
def flaky_alert(event: StepCompleted) -> None:
    raise ConnectionError(f"alerting service unreachable at step {event.step}")


@fs.emit_events(name="train")
def train(reg: fs.EntityRegistry, run: fs.TrainingRunEntity, steps: int) -> fs.ModelEntity:
    """Fit y = 2x by SGD; publish StepCompleted per step; return the trained model version."""
    xs = [0.5, 1.0, 1.5, 2.0]
    ys = [2.0 * x for x in xs]
    w, lr = 0.0, 0.1
    for step in range(1, steps + 1):
        grad = sum(2 * (w * x - y) * x for x, y in zip(xs, ys)) / len(xs)
        w -= lr * grad
        loss = sum((w * x - y) ** 2 for x, y in zip(xs, ys)) / len(xs)
        reg.bus.publish(StepCompleted(step=step, loss=loss, weight=w, subject=run.ref))
    model = reg.get(run.model)
    weights = reg.put_blob(struct.pack("<d", w), format="bin")
    trained = reg.commit(model.evolve(weights=weights, derived_from=(run.ref,)))
    assert isinstance(trained, fs.ModelEntity)
    return trained  # CallCompleted.result is its ref


class BestCheckpoint(fs.Projection):
    """Keeps the config entity ``best-checkpoint`` pointing at the lowest-loss checkpoint."""

    name = "example.best-checkpoint"
    topics = (fs.EntityRegistered,)

    def apply(self, event: fs.Event, registry: fs.EntityRegistry) -> list[fs.Entity]:
        assert isinstance(event, fs.EntityRegistered) and event.subject is not None
        if event.entity_type != fs.CheckpointEntity.entity_type:
            return []
        ckpt = registry.get(event.subject)
        assert isinstance(ckpt, fs.CheckpointEntity)
        params = {
            "checkpoint": str(ckpt.lineage_id),
            "step": ckpt.step,
            "loss": ckpt.metrics["loss"],
        }
        current = registry.find(fs.ConfigEntity, name="best-checkpoint")
        if not current:
            best = fs.ConfigEntity(name="best-checkpoint", params=params, derived_from=(ckpt.ref,))
            return [best]
        if ckpt.metrics["loss"] < current[0].params["loss"]:
            return [current[0].evolve(params=params, derived_from=(ckpt.ref,))]
        return []


with tempfile.TemporaryDirectory() as tmp:
    with fs.open(f"sqlite:///{Path(tmp) / 'runs.db'}") as reg:  # close() flushes the event log
        model = reg.add(fs.ModelEntity(name="linear", hidden_size=1))
        run = reg.add(
            fs.TrainingRunEntity(
                name="fit-2x", model=model.ref, status="running", total_steps=STEPS,
                started_at=datetime.now(UTC),
            )
        )
        checkpointer = Checkpointer(reg, run)
        reg.bus.include(checkpointer, flaky_alert)

        with reg.bus.activate():  # @emit_events functions publish to reg.bus in this block
            trained = train(reg, run, STEPS)
        reg.commit(
            run.evolve(status="completed", step=STEPS, finished_at=datetime.now(UTC),
                       metrics={"loss": checkpointer.best_loss})
        )
        print(f"trained w = {struct.unpack('<d', reg.read_blob(trained.weights))[0]:.4f}")
        print(f"bus: {reg.bus.stats}")

        first = reg.run_projection(BestCheckpoint())
        again = reg.run_projection(BestCheckpoint())
        print(f"projection: {first}")
        print(f"re-run:     {again}")

        # -- what happened, read back from the persisted log -------------------------------------
        log = reg.events()  # flushes buffered events first; commit order (seq)
        by_id = {stored.event.id: stored.event for stored in log}
        (started,) = [e for e in by_id.values() if isinstance(e, fs.CallStarted)]
        (completed,) = [e for e in by_id.values() if isinstance(e, fs.CallCompleted)]
        steps = [s.event for s in reg.events(topic=StepCompleted)]
        ckpt_events = [
            s.event
            for s in reg.events(topic=fs.EntityRegistered)
            if s.event.entity_type == fs.CheckpointEntity.entity_type
        ]

        def chain(event: fs.Event) -> list[fs.Event]:
            """The event, its cause, its cause's cause … up to the root."""
            out = [event]
            while out[-1].causation_id is not None:
                out.append(by_id[out[-1].causation_id])
            return out

        print(f"{len(log)} events logged; a checkpoint's causation chain:")
        for e in chain(ckpt_events[-1]):
            print(f"  {e.topic:<30} {e.id}")

        # 1. one checkpoint every EVERY steps, each a stored entity
        assert len(ckpt_events) == STEPS // EVERY == len(reg.find(fs.CheckpointEntity))
        saved_steps = sorted(reg.get(e.subject).step for e in ckpt_events)
        assert saved_steps == list(range(EVERY, STEPS + 1, EVERY))

        # 2. every checkpoint leads back to the CallStarted of the training call
        assert started.function == "train" and started.causation_id is None
        for e in ckpt_events:
            links = chain(e)
            assert isinstance(links[1], StepCompleted) and links[1].step == reg.get(e.subject).step
            assert links[-1] is started
            assert all(x.correlation_id == started.id for x in links[:-1])
        assert completed.causation_id == started.id and completed.result == trained.ref
        assert len(steps) == STEPS and all(s.causation_id == started.id for s in steps)

        # 3. the flaky handler failed once, was recorded, and checkpointing went on
        (failure,) = [s.event for s in reg.events(topic=fs.HandlerFailed)]
        failed_step = by_id[failure.event_id]
        assert isinstance(failed_step, StepCompleted) and failed_step.step == FLAKY_STEP
        assert failure.handler.endswith("flaky_alert") and failure.error_type == "ConnectionError"
        assert failure.causation_id == failed_step.id and failure.correlation_id == started.id
        assert reg.bus.stats.failed == 1
        assert any(reg.get(e.subject).step > FLAKY_STEP for e in ckpt_events)

        # 4. the async handler saw every step
        assert checkpointer.best_loss == min(s.loss for s in steps)

        # 5. the projection: the best checkpoint is the last one; a re-run processes nothing
        (best,) = reg.find(fs.ConfigEntity, name="best-checkpoint")
        assert best.params["step"] == STEPS and best.derived_from == (ckpt_events[-1].subject,)
        assert first.committed_versions == STEPS // EVERY == best.version
        assert (again.processed, again.committed_versions) == (0, 0)
        assert again.last_seq == first.last_seq
        print(f"best checkpoint: step {best.params['step']}, loss {best.params['loss']:.2e}")
