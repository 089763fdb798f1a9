"""One call of a registered function, in steps both faces share: bind, start, run, finish.

``bind`` reads and checks (a bad argument changes nothing); ``start`` publishes
``CallStarted`` and makes it the cause of whatever the function publishes; ``complete`` commits
the new versions, the :class:`CallRecord` and ``CallCompleted`` in one transaction; ``fail``
records the failure (with ``CallFailed``) instead. Workflows pass ``also`` to commit their own
state in the same transaction.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio.to_thread

from ...entities import Entity, EntityRef, FrozenDict, utcnow
from ...entities.refs import fast_ref, new_uuid4
from ...errors import ValidationError
from ...events import CallCompleted, CallFailed, CallStarted
from ...events.base import _CURRENT
from .binding import BoundCall, _summary, bind
from .outputs import Outputs, collect_outputs, is_plain
from .records import CallRecord
from .spec import FunctionSpec

if TYPE_CHECKING:
    from contextvars import Token

    from ...events import Event
    from ..core import EntityRegistry

__all__ = ["Invocation", "Extra", "prepare"]

logger = logging.getLogger(__name__)

Extra = Callable[[CallRecord, Outputs | None], Sequence[Entity]]
"""Extra drafts to commit with the call's outcome (a workflow's run state)."""

_MAX_ERROR = 4000


@dataclass(slots=True, eq=False)
class Invocation:
    """A bound call, from ``CallStarted`` to its record."""

    reg: EntityRegistry
    spec: FunctionSpec
    bound: BoundCall
    record_id: UUID
    inputs: tuple[EntityRef, ...]
    started_at: datetime | None = None
    t0: float = 0.0
    token: Token[Event | None] | None = None

    @property
    def record_ref(self) -> EntityRef:
        """The ref the call's record will have (it is committed when the call ends)."""
        return fast_ref(self.record_id, 1)

    # -- the steps ----------------------------------------------------------------------------

    def start(self) -> None:
        """Publish ``CallStarted``; events published until the call ends are caused by it."""
        started = CallStarted(function=self.spec.label, subject=self.record_ref, inputs=self.inputs)
        # logged with the call's outcome: see complete()
        self.reg.bus.publish(started)
        self.token = _CURRENT.set(started)
        self.started_at = utcnow()
        self.t0 = time.perf_counter()

    def run(self) -> Any:
        """Run the function here; an async one runs on the registry's private loop thread."""
        fn = functools.partial(self.spec.fn, *self.bound.args, **self.bound.kwargs)
        if self.spec.is_async:
            return self.reg.callables.runner.call(fn)
        return fn()

    async def arun(self) -> Any:
        """Await the function; a sync one runs on a worker thread, so the loop never stalls."""
        fn = functools.partial(self.spec.fn, *self.bound.args, **self.bound.kwargs)
        if self.spec.is_async:
            return await fn()
        return await anyio.to_thread.run_sync(fn)

    def end(self) -> None:
        """Stop linking new events to this call's ``CallStarted``."""
        if self.token is not None:
            _CURRENT.reset(self.token)
            self.token = None

    def complete(self, result: Any, also: Extra | None = None) -> tuple[Any, CallRecord]:
        """Commit what ``result`` holds, the record and ``CallCompleted`` (all or nothing).

        Returns ``result`` with its entities replaced by the committed versions.
        """
        duration = time.perf_counter() - self.t0
        spec = self.spec
        if spec.returns and not isinstance(result, spec.returns):
            declared = " or ".join(
                "None" if t is type(None) else t.__name__ for t in spec.returns
            )
            raise ValidationError(
                f"{spec.label} is declared to return {declared} but returned "
                f"{type(result).__name__}"
            )
        outs = collect_outputs(self.reg, result, self.inputs)
        record = _record(
            lineage_id=self.record_id,
            name=spec.name,
            function_version=spec.version,
            function=spec.function_ref,
            inputs=self.inputs,
            outputs=tuple(outs.refs),
            arguments=FrozenDict(self.bound.arguments),
            result=_summary(result) if not outs.refs and is_plain(result) else None,
            status="completed",
            error=None,
            duration_s=duration,
            started_at=self.started_at,
        )
        event = CallCompleted(
            function=spec.label,
            duration_s=duration,
            result=outs.refs[0] if isinstance(result, Entity) else None,
            outputs=record.outputs,
            subject=record.ref,
        )
        drafts = [*outs.drafts, record]
        if also is not None:
            drafts.extend(also(record, outs))
        # CallStarted and whatever the function published are written in this transaction,
        # ahead of the outcome, so the log keeps the call's events in publication order
        self.reg._commit(drafts, events=[event], with_published=True)
        return outs.value, record

    def fail(self, exc: BaseException, also: Extra | None = None) -> CallRecord | None:
        """Record the failure (a failed :class:`CallRecord` and ``CallFailed``); best effort.

        Nothing is recorded when the call's outcome is committed already (a strict handler of
        its events failed afterwards).
        """
        if self.reg._cached(self.record_ref) is not None:
            return None
        duration = time.perf_counter() - self.t0 if self.t0 else 0.0
        message = f"{type(exc).__name__}: {exc}"
        record = _record(
            lineage_id=self.record_id,
            name=self.spec.name,
            function_version=self.spec.version,
            function=self.spec.function_ref,
            inputs=self.inputs,
            outputs=(),
            arguments=FrozenDict(self.bound.arguments),
            result=None,
            status="failed",
            error=message[:_MAX_ERROR],
            duration_s=duration,
            started_at=self.started_at,
        )
        event = CallFailed(
            function=self.spec.label,
            duration_s=duration,
            error_type=type(exc).__name__,
            error_message=str(exc)[:_MAX_ERROR],
            subject=record.ref,
        )
        drafts: list[Entity] = [record]
        if also is not None:
            drafts.extend(also(record, None))
        try:
            self.reg._commit(drafts, events=[event], with_published=True)
        except Exception:
            logger.warning("could not record the failure of %s", self.spec.label, exc_info=True)
            return None
        return record



_RECORD_FIELDS = frozenset(CallRecord.model_fields)


def _record(**fields: Any) -> CallRecord:
    """A call record from values built here (already the right types), without re-validation.

    Validation would cost a third of a trivial call, and ``model_construct`` most of what is
    left, so the instance is assembled as ``model_construct`` does, with every field given.
    ``tests/test_callables.py`` checks that records validate and round-trip.
    """
    values = {
        "id": new_uuid4(),
        "lineage_id": fields.pop("lineage_id"),
        "version": 1,
        "previous_id": None,
        "created_at": utcnow(),
        "derived_from": (),
        **fields,
    }
    if values.keys() != _RECORD_FIELDS:  # a field added to CallRecord must be set here too
        raise RuntimeError(f"call record fields out of date: {sorted(_RECORD_FIELDS ^ values.keys())}")
    record = CallRecord.__new__(CallRecord)
    object.__setattr__(record, "__dict__", values)
    object.__setattr__(record, "__pydantic_fields_set__", set(values))
    object.__setattr__(record, "__pydantic_extra__", None)
    object.__setattr__(record, "__pydantic_private__", None)
    return record


def prepare(
    reg: EntityRegistry, spec: FunctionSpec, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> Invocation:
    """Bind the arguments (reads only; raises for bad input before anything happens)."""
    bound = bind(reg, spec, args, kwargs)
    return Invocation(reg, spec, bound, new_uuid4(), tuple(bound.inputs))
