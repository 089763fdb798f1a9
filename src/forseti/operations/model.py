"""Operations: named, prioritized, pure changes to one or more lineages.

An :class:`Operation` says *what* to change (``apply``: current heads -> drafts), *which* lineages
(``targets``), how urgent it is (``priority``) and what to do when it meets another writer
(``policy``). The :class:`~forseti.operations.scheduler.OperationScheduler` decides *when*.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, Literal
from uuid import UUID

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..entities import Entity
from ..errors import ValidationError
from ..events import new_event_id

__all__ = [
    "Priority",
    "Policy",
    "Operation",
    "StructuralOperation",
    "NormalOperation",
    "LowPriorityOperation",
    "FunctionOperation",
    "OperationResult",
]


class Priority(IntEnum):
    """How urgent an operation is: higher runs first on a contended target."""

    BACKGROUND = 0
    LOW = 1
    NORMAL = 2
    HIGH = 3
    CRITICAL = 4


Policy = Literal["retry", "reject", "merge"]
"""``retry``: wait for its turn, retry on conflict; ``reject``: give up if another operation is
running or waiting ahead on a target; ``merge``: commutative, folds with the other pending
``merge`` operations of the same kind on the same targets into one commit."""


class Operation(BaseModel):
    """A change to ``targets`` (lineage ids), applied by a pure :meth:`apply`.

    Subclass it, add the operation's parameters as fields and implement :meth:`apply`. The
    operation is recorded with its commit (``OperationCommitted`` in the event log), so the audit
    trail shows who changed what and why (``reason``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    default_priority: ClassVar[Priority] = Priority.NORMAL
    default_policy: ClassVar[Policy] = "retry"

    op_id: str = Field(default_factory=lambda: new_event_id().hex, min_length=1, max_length=128)
    targets: tuple[UUID, ...]
    priority: Priority = Priority.NORMAL
    policy: Policy = "retry"
    max_retries: int = Field(default=25, ge=0, le=10_000)
    reason: str = ""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            raise ValidationError.from_pydantic(exc, type(self).__name__) from None

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data.setdefault("priority", cls.default_priority)
            data.setdefault("policy", cls.default_policy)
            target = data.pop("target", None)
            if target is not None:
                if "targets" in data:
                    raise ValueError("give target or targets, not both")
                data["targets"] = (target,)
        return data

    @field_validator("priority", "max_retries", mode="before")
    @classmethod
    def _no_bools(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("a boolean is not a priority or a retry budget")
        return value

    @field_validator("targets", mode="before")
    @classmethod
    def _lineages(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(v.lineage_id if isinstance(v, Entity) else v for v in value)
        return value

    @field_validator("targets")
    @classmethod
    def _unique(cls, value: tuple[UUID, ...]) -> tuple[UUID, ...]:
        if not value:
            raise ValueError("an operation has at least one target")
        if len(set(value)) != len(value):
            raise ValueError("targets must be distinct lineages")
        return value

    @field_validator("op_id")
    @classmethod
    def _op_id(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("op_id must not contain NUL characters")
        return value

    @property
    def kind(self) -> str:
        """The operation's type, as recorded in the audit trail."""
        cls = type(self)
        return f"{cls.__module__}.{cls.__qualname__}"

    def apply(self, heads: Mapping[UUID, Entity]) -> Sequence[Entity]:
        """The drafts this operation makes from the current ``heads`` (one per target it changes).

        Must be pure: it may run several times (after a conflict, against the new heads).
        """
        raise NotImplementedError(f"{type(self).__name__}.apply() is not implemented")

    def can_merge(self, other: Operation) -> bool:
        """Whether ``other`` may be folded into the same commit (default: same kind, targets)."""
        return (
            self.policy == "merge"
            and other.policy == "merge"
            and type(other) is type(self)
            and other.targets == self.targets
        )

    def describe(self) -> dict[str, Any]:
        """The operation's own parameters (everything but the scheduling fields), for the log."""
        skip = {"op_id", "targets", "priority", "policy", "max_retries", "reason"}
        return {
            k: v
            for k, v in self.model_dump(mode="json").items()
            if k not in skip and isinstance(v, (str, int, float, bool, type(None), list, dict))
        }


class StructuralOperation(Operation):
    """Changes the shape of things (new stages, re-wiring): HIGH priority, retried on conflict."""

    default_priority: ClassVar[Priority] = Priority.HIGH
    default_policy: ClassVar[Policy] = "retry"


class NormalOperation(Operation):
    """An ordinary update: NORMAL priority, retried on conflict."""

    default_priority: ClassVar[Priority] = Priority.NORMAL
    default_policy: ClassVar[Policy] = "retry"


class LowPriorityOperation(Operation):
    """Housekeeping that yields to everything else: LOW priority, retried on conflict."""

    default_priority: ClassVar[Priority] = Priority.LOW
    default_policy: ClassVar[Policy] = "retry"


class FunctionOperation(Operation):
    """An operation made from a function ``f(entity, *args, **kwargs) -> draft`` (one target).

    This is what ``@fs.with_conflict_resolution`` submits.
    """

    function: Callable[..., Any] = Field(exclude=True)
    args: tuple[Any, ...] = Field(default=(), exclude=True)
    kwargs: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @property
    def kind(self) -> str:
        fn = self.function
        return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"

    def describe(self) -> dict[str, Any]:
        return {}  # the function is the operation: its name is the recorded kind

    def apply(self, heads: Mapping[UUID, Entity]) -> Sequence[Entity]:
        draft = self.function(heads[self.targets[0]], *self.args, **self.kwargs)
        if not isinstance(draft, Entity):
            raise ValidationError(
                f"{self.kind} must return a draft (entity.evolve(...)), got {type(draft).__name__}"
            )
        return [draft]

    def can_merge(self, other: Operation) -> bool:
        return (
            isinstance(other, FunctionOperation)
            and self.policy == other.policy == "merge"
            and other.function is self.function
            and other.targets == self.targets
        )


@dataclass(frozen=True, slots=True)
class OperationResult:
    """What became of a submitted operation.

    ``status`` is ``committed``, ``replayed`` (its op_id was committed before: nothing new was
    written) or ``rejected`` (policy ``reject``; ``reason`` says why). ``merged`` lists the
    operations whose contributions went into the same commit.
    """

    op_id: str
    status: Literal["committed", "replayed", "rejected"]
    versions: tuple[Entity, ...] = ()
    attempts: int = 0
    merged: tuple[str, ...] = ()
    reason: str = ""

    @property
    def entity(self) -> Entity:
        """The single version written (for one-target operations)."""
        if len(self.versions) != 1:
            raise ValidationError(f"operation {self.op_id} wrote {len(self.versions)} versions")
        return self.versions[0]
