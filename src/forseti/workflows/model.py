"""Defining workflows: :class:`Workflow`, its :class:`Step`s and references to their outputs."""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ForsetiError, ValidationError
from .entities import WorkflowRunEntity

if TYPE_CHECKING:
    from ..registry import AsyncEntityRegistry, EntityRegistry

__all__ = ["Workflow", "Step", "StepOutput", "WorkflowResult", "WorkflowFailedError"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")


@dataclass(frozen=True, slots=True)
class StepOutput:
    """A reference to (part of) another step's output; index it to go deeper.

    ``train["metrics"]["loss"]`` is the ``loss`` key of the ``metrics`` field of the entity
    step ``train`` returned. Paths follow fields, keys, indexes and entity refs, as addresses do.
    """

    step: str
    path: tuple[str | int, ...] = ()

    def __getitem__(self, key: str | int) -> StepOutput:
        if not isinstance(key, str | int) or isinstance(key, bool):
            raise ValidationError(f"a step output is indexed by a name or a position, got {key!r}")
        return StepOutput(self.step, (*self.path, key))


@dataclass(eq=False)
class Step:
    """One step: a registered function, its arguments, and what to run if the workflow fails.

    Pass a step (or ``step[...]``) as another step's argument to use its output; that makes the
    other step depend on it.
    """

    name: str
    target: str | Callable[..., Any]
    args: dict[str, Any]
    after: tuple[str, ...]
    on_failure: str | Callable[..., Any] | None
    depends: tuple[str, ...] = field(default=())

    @property
    def output(self) -> StepOutput:
        """This step's whole output."""
        return StepOutput(self.name)

    def __getitem__(self, key: str | int) -> StepOutput:
        return self.output[key]

    def __repr__(self) -> str:
        return f"Step({self.name!r}, depends={list(self.depends)})"


def _placeholders(value: Any) -> Iterator[Step | StepOutput]:
    """Every step (or reference into a step's output) inside ``value``: lists, tuples and dicts
    are searched."""
    if isinstance(value, Step | StepOutput):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _placeholders(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _placeholders(v)


def _references(value: Any) -> Iterator[str]:
    """The names of the steps ``value`` uses."""
    for p in _placeholders(value):
        yield p.name if isinstance(p, Step) else p.step


class Workflow:
    """A DAG of registered callables, run with provenance, concurrency and compensation.

    ``wf.step("train", model=m, data=prep)`` adds a step calling ``train``; passing the step
    ``prep`` makes ``train`` wait for it and receive its output. Steps whose inputs are ready run
    concurrently (up to ``max_concurrency``). :meth:`run` persists a
    :class:`WorkflowRunEntity` that records each step as it completes, in the same transaction
    as the step's outputs, so :meth:`resume` continues a crashed run from its last completed
    step. When a step fails, the ``on_failure`` step of every completed step runs, newest first
    (compensation), and the run ends ``failed``.
    """

    def __init__(self, name: str, *, max_concurrency: int = 8) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValidationError(f"a workflow name is a short identifier, got {name!r}")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or (
            max_concurrency < 1
        ):
            raise ValidationError("max_concurrency is a positive integer")
        self.name = name
        self.max_concurrency = max_concurrency
        self._steps: dict[str, Step] = {}

    def step(
        self,
        target: str | Callable[..., Any],
        /,
        *,
        name: str | None = None,
        after: Iterable[Step | str] = (),
        on_failure: str | Callable[..., Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
        **args: Any,
    ) -> Step:
        """Add a step calling ``target`` (a registered name, ``"name@version"`` or a function)
        with keyword ``args``; return it, to pass to later steps.

        ``name`` defaults to the callable's name and must be unique in the workflow. ``after``
        adds ordering without passing data. ``on_failure`` names a callable run if the workflow
        fails after this step completed; it receives, by parameter name, this step's arguments
        and ``output`` (what this step returned). ``inputs`` passes arguments by a mapping too
        (for parameters named ``name``, ``after``, ``on_failure`` or ``inputs``).
        """
        if not isinstance(target, str) and not builtins.callable(target):
            raise ValidationError(f"a step runs a callable's name or a function, got {target!r}")
        if inputs is not None:
            overlap = set(inputs) & set(args)
            if overlap:
                raise ValidationError(
                    f"argument(s) {', '.join(sorted(overlap))} given both in inputs and by keyword"
                )
            args = {**inputs, **args}
        label = name or _callable_name(target)
        if not _NAME.match(label):
            raise ValidationError(f"step name {label!r} is not a short identifier")
        if label in self._steps:
            raise ValidationError(f"workflow {self.name!r} already has a step {label!r}")
        if on_failure is not None and not isinstance(on_failure, str) and not builtins.callable(
            on_failure
        ):
            raise ValidationError("on_failure is a callable's name or a function")
        order: list[str] = []
        for dep in after:
            order.append(dep.name if isinstance(dep, Step) else dep)
        depends = list(dict.fromkeys([*_references(args), *order]))
        for dep in depends:
            if dep not in self._steps:
                raise ValidationError(
                    f"step {label!r} refers to {dep!r}, which is not an earlier step of "
                    f"workflow {self.name!r}"
                )
        for used in _placeholders([args, *after]):
            if isinstance(used, Step) and self._steps.get(used.name) is not used:
                raise ValidationError(
                    f"step {label!r} refers to step {used.name!r} of another workflow"
                )
        step = Step(label, target, dict(args), tuple(order), on_failure, tuple(depends))
        self._steps[label] = step
        return step

    @property
    def steps(self) -> list[Step]:
        """The steps, in the order they were added (a topological order)."""
        return list(self._steps.values())

    def __getitem__(self, name: str) -> Step:
        return self._steps[name]

    def __len__(self) -> int:
        return len(self._steps)

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, steps={list(self._steps)})"

    # -- running -------------------------------------------------------------------------------

    def run(self, reg: EntityRegistry, *, raise_on_failure: bool = True) -> WorkflowResult:
        """Run every step against ``reg``; see :meth:`arun`. Works inside a running event loop."""
        from .engine import start_run

        return reg.callables.runner.call(
            lambda: start_run(reg, self, raise_on_failure=raise_on_failure)
        )

    async def arun(
        self, reg: EntityRegistry | AsyncEntityRegistry, *, raise_on_failure: bool = True
    ) -> WorkflowResult:
        """Run every step; return the result, or raise :class:`WorkflowFailedError` (after
        compensation) when a step fails and ``raise_on_failure`` is true."""
        from .engine import start_run

        return await start_run(_sync(reg), self, raise_on_failure=raise_on_failure)

    @staticmethod
    def resume(
        reg: EntityRegistry, run: WorkflowRunEntity | Any, *, raise_on_failure: bool = True
    ) -> WorkflowResult:
        """Continue a run (its lineage id, a ref or the entity) from its last completed step.

        Completed steps are not run again: their outputs are the exact versions they committed.
        The functions must be registered in this process under the versions the run pinned
        (the same code registers as the same version).
        """
        from .engine import resume_run

        return reg.callables.runner.call(
            lambda: resume_run(reg, run, raise_on_failure=raise_on_failure)
        )

    @staticmethod
    async def aresume(
        reg: EntityRegistry | AsyncEntityRegistry,
        run: WorkflowRunEntity | Any,
        *,
        raise_on_failure: bool = True,
    ) -> WorkflowResult:
        """See :meth:`resume`."""
        from .engine import resume_run

        return await resume_run(_sync(reg), run, raise_on_failure=raise_on_failure)


def _callable_name(target: str | Callable[..., Any]) -> str:
    if isinstance(target, str):
        return target.partition("@")[0].replace(".", "_").replace(":", "_").replace("/", "_")
    if not builtins.callable(target):
        raise ValidationError(f"a step runs a callable's name or a function, got {target!r}")
    mark = getattr(target, "__forseti_callable__", None)
    label = mark.name if mark is not None else getattr(target, "__name__", "step")
    return str(label).replace(".", "_").replace(":", "_").replace("/", "_")


def _sync(reg: EntityRegistry | AsyncEntityRegistry) -> EntityRegistry:
    from ..registry import AsyncEntityRegistry

    return reg.sync if isinstance(reg, AsyncEntityRegistry) else reg


@dataclass
class WorkflowResult:
    """A finished run: its entity and each completed step's output (committed versions)."""

    run: WorkflowRunEntity
    outputs: dict[str, Any]

    @property
    def status(self) -> str:
        return self.run.status

    @property
    def ok(self) -> bool:
        return self.run.status == "completed"

    def __getitem__(self, step: str) -> Any:
        try:
            return self.outputs[step]
        except KeyError:
            state = self.run.step(step)
            raise KeyError(f"step {step!r} has no output (it is {state.status})") from None


class WorkflowFailedError(ForsetiError):
    """A step failed; compensation ran. ``result`` holds the run, ``step`` the failed step, and
    the step's exception is the ``__cause__``."""

    def __init__(self, message: str, *, result: WorkflowResult, step: str | None) -> None:
        super().__init__(message)
        self.result = result
        self.step = step
