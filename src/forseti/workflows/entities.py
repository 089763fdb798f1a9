"""What a workflow run stores: a :class:`WorkflowRunEntity` with one :class:`StepState` per step."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, NonNegativeInt

from ..entities import Entity, EntityRef, JSONMap, JSONValue, Name

__all__ = ["StepState", "StepStatus", "WorkflowStatus", "WorkflowEntity", "WorkflowRunEntity"]

StepStatus = Literal[
    "pending", "running", "completed", "failed", "skipped", "compensated", "compensation_failed"
]
WorkflowStatus = Literal["pending", "running", "completed", "failed"]


class StepState(BaseModel):
    """One step of a run: where it stands, the call that ran it, and its output.

    ``output`` is JSON: a committed entity appears as ``{"$ref": "<lineage>@<version>"}``, so a
    resumed run gets exactly the versions the step produced.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    callable: str = Field(description="the function version that runs it, 'name@version'")
    status: StepStatus = "pending"
    call: EntityRef | None = Field(default=None, description="the step's CallRecord")
    output: JSONValue = None
    error: str | None = None
    compensation: EntityRef | None = Field(
        default=None, description="the CallRecord of its on_failure step, if that ran"
    )


class WorkflowEntity(Entity):
    """A workflow's definition as data: its steps, their pinned function versions, arguments
    and compensations. One lineage per workflow name; a changed definition is its next version.
    """

    entity_type: ClassVar[str] = "forseti.Workflow"

    name: Name
    spec: JSONMap = Field(default_factory=dict)
    spec_hash: str = Field(description="sha256 of the spec's canonical JSON")


class WorkflowRunEntity(Entity):
    """One run of a :class:`~forseti.workflows.Workflow`, a new version at every step.

    ``workflow`` is the exact definition it runs (a :class:`WorkflowEntity` version), so
    :meth:`Workflow.resume <forseti.workflows.Workflow.resume>` can pick a crashed run up in
    another process. ``calls`` lists every call record the run made, as provenance edges.
    """

    entity_type: ClassVar[str] = "forseti.WorkflowRun"

    name: Name
    status: WorkflowStatus = "pending"
    workflow: EntityRef
    steps: tuple[StepState, ...] = ()
    calls: tuple[EntityRef, ...] = ()
    failed_step: str | None = None
    error: str | None = None
    attempts: NonNegativeInt = Field(default=0, description="how many times it was (re)started")
    started_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None

    def step(self, name: str) -> StepState:
        """The state of step ``name`` (KeyError if there is none)."""
        for state in self.steps:
            if state.name == name:
                return state
        raise KeyError(f"workflow {self.name!r} has no step {name!r}")

    def with_step(self, name: str, **changes: Any) -> tuple[StepState, ...]:
        """``steps`` with step ``name`` updated (for ``run.evolve(steps=...)``)."""
        return tuple(
            s.model_copy(update=changes) if s.name == name else s for s in self.steps
        )
