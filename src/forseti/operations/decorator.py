"""``@fs.with_conflict_resolution``: turn ``f(entity, ...) -> draft`` into a submitted operation."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload
from uuid import UUID

import anyio.to_thread

from ..entities import Entity, EntityRef
from ..errors import ConfigError, ForsetiError, ValidationError
from ..events import new_event_id
from ..registry.checks import check_op_id
from .model import FunctionOperation, Policy, Priority

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = ["with_conflict_resolution", "OperationRejectedError"]


class OperationRejectedError(ForsetiError):
    """A ``reject``-policy operation found its target busy and was not applied."""


@overload
def with_conflict_resolution(fn: Callable[..., Any], /) -> Callable[..., Any]: ...
@overload
def with_conflict_resolution(
    *,
    priority: Priority = Priority.NORMAL,
    policy: Policy = "retry",
    max_retries: int = 25,
    reason: str = "",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...


def with_conflict_resolution(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    priority: Priority = Priority.NORMAL,
    policy: Policy = "retry",
    max_retries: int = 25,
    reason: str = "",
) -> Any:
    """Make ``f(entity, *args, **kwargs) -> draft`` run as an operation on the entity's lineage.

    The decorated function takes the target (an entity, an ``EntityRef`` or a lineage id) and
    returns the committed version. The registry is the ``registry=`` keyword or the one made
    active with ``with reg.activate():``. ``f`` always receives the current head, so concurrent
    calls never lose an update: ``@with_conflict_resolution(policy="merge") def inc(c): return
    c.evolve(n=c.n + 1)`` called 1000 times from 16 threads ends at 1000. An ``async def`` ``f``
    gives an async wrapper. A rejected call raises :class:`OperationRejectedError`.
    """

    if isinstance(priority, bool) or (
        not isinstance(priority, Priority) and priority not in tuple(Priority)
    ):
        raise ValidationError(f"priority must be a Priority, got {priority!r}")
    if policy not in ("retry", "reject", "merge"):
        raise ValidationError(f"policy is 'retry', 'reject' or 'merge', got {policy!r}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValidationError("max_retries is a non-negative integer")
    priority = Priority(priority)

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        is_async = inspect.iscoroutinefunction(func)
        apply: Callable[..., Any] = func
        if is_async:

            def apply(entity: Entity, *args: Any, **kwargs: Any) -> Any:  # noqa: F811
                import asyncio

                return asyncio.run(func(entity, *args, **kwargs))

            functools.update_wrapper(apply, func)

        def make(
            target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], op_id: str | None
        ) -> FunctionOperation:
            if op_id is not None:
                check_op_id(op_id)
            # every field is checked here or when the decorator was made: skip re-validation
            return FunctionOperation.model_construct(
                function=apply, args=args, kwargs=kwargs, targets=(_lineage(target),),
                priority=priority, policy=policy, max_retries=max_retries, reason=reason,
                op_id=op_id if op_id is not None else new_event_id().hex,
            )  # fmt: skip

        def outcome(result: Any) -> Entity:
            if result.status == "rejected":
                raise OperationRejectedError(f"{func.__qualname__} was rejected: {result.reason}")
            return result.entity  # type: ignore[no-any-return]

        if is_async:

            @functools.wraps(func)
            async def awrapper(
                target: Any, *args: Any, registry: EntityRegistry | None = None,
                op_id: str | None = None, **kwargs: Any,
            ) -> Entity:  # fmt: skip
                reg = _registry(registry)
                op = make(target, args, kwargs, op_id)
                return outcome(await anyio.to_thread.run_sync(reg.submit, op))

            return awrapper

        @functools.wraps(func)
        def wrapper(
            target: Any, *args: Any, registry: EntityRegistry | None = None,
            op_id: str | None = None, **kwargs: Any,
        ) -> Entity:  # fmt: skip
            return outcome(_registry(registry).submit(make(target, args, kwargs, op_id)))

        return wrapper

    if fn is not None:
        return wrap(fn)
    return wrap


def _lineage(target: Any) -> UUID:
    if isinstance(target, Entity):
        return target.lineage_id
    if isinstance(target, EntityRef):
        return target.lineage_id
    if isinstance(target, UUID):
        return target
    raise ValidationError(
        f"the target is an entity, an EntityRef or a lineage id, not {type(target).__name__}"
    )


def _registry(registry: EntityRegistry | None) -> EntityRegistry:
    from ..registry.core import active_registry

    reg = registry or active_registry()
    if reg is None:
        raise ConfigError(
            "no registry for this operation: pass registry=reg, or call it inside "
            "`with reg.activate():`"
        )
    return reg
