"""Helpers of the workflow engine: store I/O off the loop, loading runs, error text."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread

from ..entities import Entity, EntityRef
from ..errors import NotFoundError, ValidationError
from .entities import WorkflowRunEntity
from .model import WorkflowResult
from .values import decode_value

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = ["completed_result", "load_head", "io", "error_text"]

T = TypeVar("T")
_MAX_ERROR = 2000


def completed_result(reg: EntityRegistry, head: WorkflowRunEntity) -> WorkflowResult:
    outputs = {}
    for state in head.steps:
        if state.status == "completed":
            try:
                outputs[state.name] = decode_value(reg, state.output)
            except NotFoundError:
                pass  # an output that could not be stored
    return WorkflowResult(head, outputs)


def load_head(reg: EntityRegistry, run: Any) -> WorkflowRunEntity:
    if isinstance(run, Entity):
        run = run.lineage_id
    elif isinstance(run, EntityRef):
        run = run.lineage_id
    head = reg.get(run)
    if not isinstance(head, WorkflowRunEntity):
        raise ValidationError(f"{head.ref} is a {type(head).__name__}, not a workflow run")
    return head


async def io(reg: EntityRegistry, fn: Callable[..., T], *args: Any) -> T:
    """Run store work inline for the memory store, on a worker thread otherwise."""
    if not reg.store.blocking:
        return fn(*args)
    return await anyio.to_thread.run_sync(functools.partial(fn, *args))


def error_text(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}"[:_MAX_ERROR] if exc is not None else ""
