"""Planning a run: pin each step's function version and store the workflow as JSON.

Everything that can be checked before a step runs is checked here (callables registered,
argument names, compensation parameters, arguments storable), so a bad workflow fails before
it changes anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..entities import Entity, thaw
from ..errors import ConflictError, ValidationError
from ..registry.callables import FunctionSpec
from ..registry.checks import stored_version
from .entities import WorkflowEntity
from .model import Step, StepOutput, Workflow
from .values import encode_argument

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = [
    "PlannedStep",
    "Plan",
    "plan_workflow",
    "plan_from_spec",
    "store_definition",
    "SPEC_FORMAT",
]

SPEC_FORMAT = 1


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """A step with its function version pinned and its arguments as JSON."""

    name: str
    spec: FunctionSpec
    args: Mapping[str, Any]
    depends: tuple[str, ...]
    compensation: FunctionSpec | None


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    steps: tuple[PlannedStep, ...]
    max_concurrency: int

    @property
    def by_name(self) -> dict[str, PlannedStep]:
        return {s.name: s for s in self.steps}

    def to_spec(self) -> dict[str, Any]:
        """The workflow as JSON (stored in the run entity)."""
        return {
            "format": SPEC_FORMAT,
            "max_concurrency": self.max_concurrency,
            "steps": [
                {
                    "name": s.name,
                    "callable": s.spec.label,
                    "args": dict(s.args),
                    "depends": list(s.depends),
                    "on_failure": s.compensation.label if s.compensation else None,
                }
                for s in self.steps
            ],
        }


def _placeholder(value: Any) -> Any | None:
    if isinstance(value, Step):
        return {"$step": value.name, "path": []}
    if isinstance(value, StepOutput):
        return {"$step": value.step, "path": list(value.path)}
    return None


def plan_workflow(reg: EntityRegistry, wf: Workflow) -> Plan:
    """Check every step, then pin the current version of each step's callable.

    Functions given as objects are registered only once every step has passed its checks, so
    a bad workflow writes nothing.
    """
    if not len(wf):
        raise ValidationError(f"workflow {wf.name!r} has no steps")
    previews = []
    for step in wf.steps:
        spec = reg.callables.preview(step.target)
        comp = reg.callables.preview(step.on_failure) if step.on_failure is not None else None
        args = {
            k: encode_argument(v, f"step {step.name!r}, argument {k!r}", _placeholder)
            for k, v in step.args.items()
        }
        for key, value in step.args.items():
            _check_stored(reg, value, f"step {step.name!r}, argument {key!r}")
        planned = PlannedStep(step.name, spec, args, step.depends, comp)
        _check(planned)
        previews.append(planned)
    steps = []
    for step, planned in zip(wf.steps, previews, strict=True):
        comp = planned.compensation
        steps.append(
            dataclasses.replace(
                planned,
                spec=reg.callables.lookup(step.target),
                compensation=reg.callables.lookup(step.on_failure)
                if step.on_failure is not None and comp is not None
                else None,
            )
        )
    return Plan(wf.name, tuple(steps), wf.max_concurrency)


def _check_stored(reg: EntityRegistry, value: Any, where: str) -> None:
    """Entities given as arguments must be stored versions (as ``reg.call`` requires)."""
    if isinstance(value, Entity):
        if stored_version(reg, value) is None:
            raise ValidationError(
                f"{where}: the {type(value).__name__} is not stored (a new entity or an "
                f"uncommitted draft); add or commit it first"
            )
    elif isinstance(value, list | tuple):
        for item in value:
            _check_stored(reg, item, where)
    elif isinstance(value, dict):
        for item in value.values():
            _check_stored(reg, item, where)


def plan_from_spec(reg: EntityRegistry, name: str, spec: Mapping[str, Any]) -> Plan:
    """The plan a stored run was started with; its pinned versions must be registered here."""
    if spec.get("format") != SPEC_FORMAT:
        raise ValidationError(
            f"workflow run {name!r} was stored in spec format {spec.get('format')!r}; this "
            f"version of Forseti reads format {SPEC_FORMAT}"
        )
    steps = []
    for raw in spec["steps"]:
        comp_label = raw.get("on_failure")
        steps.append(
            PlannedStep(
                raw["name"],
                reg.callables.get(raw["callable"]),
                dict(raw["args"]),
                tuple(raw["depends"]),
                reg.callables.get(comp_label) if comp_label else None,
            )
        )
    return Plan(name, tuple(steps), int(spec["max_concurrency"]))


def store_definition(reg: EntityRegistry, plan: Plan) -> WorkflowEntity:
    """The stored definition of ``plan``: the name's head if its spec is the same, else the
    next version (or the first)."""
    spec = plan.to_spec()
    digest = hashlib.sha256(
        json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    for _ in range(10):  # another process may store a definition of this name meanwhile
        heads = reg.find(WorkflowEntity, name=plan.name)
        try:
            if not heads:
                return reg.add(WorkflowEntity(name=plan.name, spec=spec, spec_hash=digest))
            if heads[0].spec_hash == digest:
                return heads[0]
            return reg.commit(heads[0].evolve(spec=spec, spec_hash=digest))
        except ConflictError:
            continue
    raise ConflictError(f"could not store workflow {plan.name!r}: its lineage kept moving")


def definition_spec(definition: WorkflowEntity) -> dict[str, Any]:
    """The spec of a stored definition, as plain JSON."""
    spec: dict[str, Any] = thaw(definition.spec)
    return spec


def _check(step: PlannedStep) -> None:
    spec = step.spec
    names = set(step.args)
    if spec.var_keyword is None:
        unknown = names - set(spec.by_name)
        if unknown:
            raise ValidationError(
                f"step {step.name!r}: {spec.label} has no parameter(s) "
                f"{', '.join(sorted(unknown))}"
            )
    missing = [p.name for p in spec.params if p.required and p.name not in names]
    if missing:
        raise ValidationError(
            f"step {step.name!r}: {spec.label} needs argument(s) {', '.join(missing)}"
        )
    comp = step.compensation
    if comp is not None:
        offered = names | {"output"}
        unmet = [p.name for p in comp.params if p.required and p.name not in offered]
        if unmet:
            raise ValidationError(
                f"step {step.name!r}: its on_failure {comp.label} needs {', '.join(unmet)}, but "
                f"it is given only the step's arguments ({', '.join(sorted(names)) or 'none'}) "
                f"and 'output'"
            )
