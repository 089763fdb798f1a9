"""Running a planned workflow: steps in dependency order, independent ones concurrently (anyio).

Each step is an ordinary recorded call (``CallRecord``, ``Call*`` events, provenance); its
completion commits the step's outputs, its record and the run's next version in ONE
transaction, so after a crash the run says exactly which steps completed and which outputs they
produced. Run-state commits are serialised by a lock, and the run lineage's OCC check stops two
processes from driving the same run at once.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

import anyio
import anyio.to_thread

from ..entities import Entity, EntityRef, utcnow
from ..errors import ConflictError, NotFoundError, ValidationError
from ..events import Event
from ..registry.callables import CallRecord, FunctionSpec, prepare
from ..registry.callables.addresses import follow_path
from ..registry.callables.invoke import Extra
from ..registry.callables.outputs import Outputs
from .entities import StepState, WorkflowEntity, WorkflowRunEntity
from .events import WorkflowCompleted, WorkflowFailed, WorkflowStarted
from .model import Workflow, WorkflowFailedError, WorkflowResult
from .plan import (
    Plan,
    PlannedStep,
    definition_spec,
    plan_from_spec,
    plan_workflow,
    store_definition,
)
from .support import completed_result, error_text, io, load_head
from .values import decode_value, encode_output

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = ["start_run", "resume_run"]

logger = logging.getLogger(__name__)



async def start_run(
    reg: EntityRegistry, wf: Workflow, *, raise_on_failure: bool = True
) -> WorkflowResult:
    """Plan ``wf`` (nothing is written if that fails), then run it from the start."""
    plan = await io(reg, plan_workflow, reg, wf)
    definition = await io(reg, store_definition, reg, plan)
    draft = WorkflowRunEntity(
        name=wf.name,
        status="running",
        workflow=definition.ref,
        steps=tuple(StepState(name=s.name, callable=s.spec.label) for s in plan.steps),
        attempts=1,
        started_at=utcnow(),
    )
    return await _Engine(reg, plan, draft).execute(raise_on_failure)


async def resume_run(
    reg: EntityRegistry, run: WorkflowRunEntity | EntityRef | UUID | str, *, raise_on_failure: bool = True
) -> WorkflowResult:
    """Continue a stored run from its last completed step."""
    head = await io(reg, load_head, reg, run)
    if head.status == "completed":  # nothing to run: no functions needed
        return await io(reg, completed_result, reg, head)
    definition = await io(reg, reg.get, head.workflow)
    if not isinstance(definition, WorkflowEntity):
        raise ValidationError(f"run {head.ref} names {definition.ref}, which is not a workflow")
    engine_plan = await io(
        reg, plan_from_spec, reg, head.name, definition_spec(definition)
    )
    compensated = [s.name for s in head.steps if s.status in ("compensated", "compensation_failed")]
    if compensated:
        raise ValidationError(
            f"workflow run {head.lineage_id} was rolled back (compensated: "
            f"{', '.join(compensated)}); start a new run instead of resuming it"
        )
    draft = head.evolve(
        status="running",
        attempts=head.attempts + 1,
        steps=tuple(
            s if s.status == "completed" else s.model_copy(update={"status": "pending", "error": None})
            for s in head.steps
        ),
        failed_step=None,
        error=None,
        finished_at=None,
    )
    return await _Engine(reg, engine_plan, draft).execute(raise_on_failure)


class _Engine:
    def __init__(self, reg: EntityRegistry, plan: Plan, draft: WorkflowRunEntity) -> None:
        self.reg = reg
        self.plan = plan
        self.steps = plan.by_name
        self.head = draft  # the newest version (committed, except the draft before the start)
        self.outputs: dict[str, Any] = {}
        self.restored: dict[str, Any] = {}  # JSON outputs of steps completed before a resume
        self.order: list[str] = []  # completed steps, in completion order
        self.done = {s.name: anyio.Event() for s in plan.steps}
        self.failed: str | None = None
        self.error: BaseException | None = None
        #: set when a commit of the run's state found its head moved by another writer
        self.taken_over: ConflictError | None = None
        self.lock = anyio.Lock()
        self.limiter = anyio.CapacityLimiter(plan.max_concurrency)
        self.t0 = time.perf_counter()

    # -- the run ---------------------------------------------------------------------------------

    async def execute(self, raise_on_failure: bool) -> WorkflowResult:
        started = WorkflowStarted(
            workflow=self.plan.name,
            attempt=self.head.attempts,
            steps=len(self.plan.steps),
            subject=self.head.ref,
        )
        async with self.lock:
            self.head = await self._commit([self.head], [started])
        self.restore()
        async with anyio.create_task_group() as tg:
            for step in self.plan.steps:
                if step.name not in self.restored:
                    tg.start_soon(self._run_step, step)
        if self.taken_over is not None:
            # another process drove this run meanwhile: its state is theirs to finish
            raise ConflictError(
                f"workflow run {self.head.lineage_id} was advanced by another writer (another "
                f"resume?); this attempt stopped without changing it further",
                lineage_id=self.head.lineage_id,
                expected=self.taken_over.expected,
                actual=self.taken_over.actual,
            ) from self.taken_over
        compensated: list[str] = []
        if self.failed is not None:
            compensated = await self._compensate()
        await self._finish(compensated)
        result = self.result()
        if self.failed is not None and raise_on_failure:
            raise WorkflowFailedError(
                f"workflow {self.plan.name!r} failed at step {self.failed!r}: {error_text(self.error)}"
                + (f"; compensated: {', '.join(compensated)}" if compensated else ""),
                result=result,
                step=self.failed,
            ) from self.error
        return result

    def restore(self) -> None:
        """Outputs of the steps a previous attempt completed (kept as JSON until used)."""
        for state in self.head.steps:
            if state.status == "completed" and state.name not in self.outputs:
                self.restored[state.name] = state.output
                self.order.append(state.name)
                self.done[state.name].set()

    def result(self) -> WorkflowResult:
        outputs = dict(self.outputs)
        for name in self.restored:
            try:
                outputs[name] = self._output(name)
            except NotFoundError:
                pass  # an output that could not be stored: not available after a restart
        return WorkflowResult(self.head, outputs)

    async def _finish(self, compensated: list[str]) -> None:
        failed = self.failed is not None
        error = error_text(self.error) if self.error is not None else None
        async with self.lock:
            draft = self.head.evolve(
                status="failed" if failed else "completed",
                steps=tuple(
                    s.model_copy(update={"status": "skipped"})
                    if failed and s.status in ("pending", "running")
                    else s
                    for s in self.head.steps
                ),
                failed_step=self.failed,
                error=error,
                finished_at=utcnow(),
            )
            event: Event
            if failed:
                event = WorkflowFailed(
                    workflow=self.plan.name,
                    step=self.failed or "",
                    error=error or "",
                    compensated=tuple(compensated),
                    subject=draft.ref,
                )
            else:
                event = WorkflowCompleted(
                    workflow=self.plan.name,
                    duration_s=time.perf_counter() - self.t0,
                    subject=draft.ref,
                )
            self.head = await self._commit([draft], [event])

    # -- steps -----------------------------------------------------------------------------------

    async def _run_step(self, step: PlannedStep) -> None:
        for dep in step.depends:
            await self.done[dep].wait()
        try:
            if self.failed is not None or any(d not in self.order for d in step.depends):
                return  # an upstream step failed: this one is skipped
            async with self.limiter:
                if self.failed is not None:
                    return
                kwargs = await io(self.reg, self._arguments, step)
                value = await self._invoke(
                    step.spec,
                    kwargs,
                    done=lambda rec, outs: {
                        "status": "completed",
                        "call": rec.ref,
                        "output": encode_output(outs.value if outs is not None else None),
                        "error": None,
                    },
                    failed=lambda rec, exc: {"status": "failed", "call": rec.ref, "error": error_text(exc)},
                    step=step.name,
                )
            self.outputs[step.name] = value
            self.order.append(step.name)
        except Exception as exc:  # the step failed: recorded, then the run compensates
            if self.failed is None:
                self.failed, self.error = step.name, exc
            if self.head.step(step.name).status != "failed" and self.taken_over is None:
                try:
                    await self._update(step.name, status="failed", error=error_text(exc))
                except ConflictError as conflict:
                    self.taken_over = conflict
        finally:
            self.done[step.name].set()

    async def _invoke(
        self,
        spec: FunctionSpec,
        kwargs: dict[str, Any],
        *,
        done: Callable[[CallRecord, Outputs | None], dict[str, Any]],
        failed: Callable[[CallRecord, BaseException], dict[str, Any]],
        step: str,
        mark_running: bool = True,
    ) -> Any:
        """One recorded call whose outcome commits together with the step's new state."""
        inv = await io(self.reg, prepare, self.reg, spec, (), kwargs)
        if mark_running:
            await self._update(step, status="running")
        pending: list[WorkflowRunEntity] = []

        def with_state(changes: Callable[[CallRecord, Outputs | None], dict[str, Any]]) -> Extra:
            def build(record: CallRecord, outs: Outputs | None) -> Sequence[Entity]:
                draft = self.head.evolve(
                    steps=self.head.with_step(step, **changes(record, outs)),
                    calls=(*self.head.calls, record.ref),
                )
                pending.append(draft)
                return [draft]

            return build

        inv.start()
        try:
            try:
                result = await inv.arun()
                async with self.lock:
                    value, _ = await io(self.reg, inv.complete, result, with_state(done))
                    self.head = pending[-1]
                return value
            except Exception as exc:
                error: Exception = exc
                with anyio.CancelScope(shield=True):
                    async with self.lock:
                        pending.clear()
                        fail_state = with_state(lambda rec, _outs: failed(rec, error))
                        if await io(self.reg, inv.fail, error, fail_state) is not None:
                            self.head = pending[-1]
                raise
            except BaseException as exc:  # cancelled: the call is recorded, the step stays open
                with anyio.CancelScope(shield=True):
                    await io(self.reg, inv.fail, exc)
                raise
        finally:
            inv.end()

    def _arguments(self, step: PlannedStep) -> dict[str, Any]:
        """The step's arguments, with other steps' outputs filled in."""
        return {k: decode_value(self.reg, v, self._step_value) for k, v in step.args.items()}

    def _step_value(self, name: str, path: list[Any]) -> Any:
        value = self._output(name)
        if not path:
            return value
        return follow_path(self.reg, value, tuple(path), f"{name}.{'.'.join(map(str, path))}").value

    def _output(self, name: str) -> Any:
        if name in self.outputs:
            return self.outputs[name]
        value = decode_value(self.reg, self.restored[name])
        self.outputs[name] = value
        return value

    # -- compensation ----------------------------------------------------------------------------

    async def _compensate(self) -> list[str]:
        """Run ``on_failure`` of every completed step, newest first; the names that succeeded."""
        compensated = []
        for name in reversed(self.order):
            step = self.steps[name]
            comp = step.compensation
            if comp is None:
                continue
            try:
                args = await io(self.reg, self._arguments, step)
                kwargs = {
                    k: v
                    for k, v in args.items()
                    if k in comp.by_name or comp.var_keyword is not None
                }
                if "output" in comp.by_name or comp.var_keyword is not None:
                    kwargs["output"] = await io(self.reg, self._output, name)
                await self._invoke(
                    comp,
                    kwargs,
                    done=lambda rec, _out: {"status": "compensated", "compensation": rec.ref},
                    failed=lambda rec, exc: {
                        "status": "compensation_failed",
                        "compensation": rec.ref,
                        "error": error_text(exc),
                    },
                    step=name,
                    mark_running=False,
                )
                compensated.append(name)
            except Exception as exc:  # logged and recorded; the other compensations still run
                logger.warning("compensation of step %r failed: %s", name, error_text(exc))
                if self.head.step(name).status != "compensation_failed":
                    await self._update(name, status="compensation_failed", error=error_text(exc))
        return compensated

    # -- run state -------------------------------------------------------------------------------

    async def _update(self, step: str, **changes: Any) -> None:
        async with self.lock:
            draft = self.head.evolve(steps=self.head.with_step(step, **changes))
            self.head = await self._commit([draft], [])

    async def _commit(
        self, drafts: Sequence[WorkflowRunEntity], events: Sequence[Event]
    ) -> WorkflowRunEntity:
        committed = await io(
            self.reg, functools.partial(self.reg.commit_many, drafts, events=events)
        )
        return cast(WorkflowRunEntity, committed[-1])
