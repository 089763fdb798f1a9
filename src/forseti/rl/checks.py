"""Small checks shared by the trainer and the API: counts, stored-or-new entities, run types."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ..entities import Entity
from ..errors import ValidationError
from ..registry.checks import stored_version
from .entities import RLTrainingRunEntity

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = ["count", "check_plan", "as_run", "stored_or_new", "no_progress"]

E = TypeVar("E", bound=Entity)


def count(value: Any, what: str, minimum: int = 0) -> int:
    """``value`` if it is an integer (not a bool) of at least ``minimum``; else ValidationError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValidationError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def no_progress(n: int, metrics: Mapping[str, float]) -> None:
    """The progress callback when no bar is shown."""
    return None


def check_plan(
    total_timesteps: Any,
    checkpoint_every: Any = 0,
    eval_every: Any = 0,
    eval_episodes: Any = 5,
    log_interval: Any = None,
) -> dict[str, int]:
    """The arguments of :meth:`SB3Trainer.train`, checked (before anything is built or stored)."""
    plan = {
        "total": count(total_timesteps, "total_timesteps", 1),
        "every": count(checkpoint_every, "checkpoint_every"),
        "evals": count(eval_every, "eval_every"),
        "episodes": count(eval_episodes, "eval_episodes", 1),
    }
    if log_interval is not None:
        plan["log_interval"] = count(log_interval, "log_interval", 1)
    return plan


def as_run(entity: Entity) -> RLTrainingRunEntity:
    """``entity`` as an RL run (ValidationError when it is something else)."""
    if not isinstance(entity, RLTrainingRunEntity):
        raise ValidationError(f"{entity.ref} is not an RL training run")
    return entity


def stored_or_new(reg: EntityRegistry, entity: E) -> tuple[E, bool]:
    """The stored version of ``entity`` and ``False``, or ``entity`` to add and ``True``."""
    stored = stored_version(reg, entity)
    if stored is not None:
        return stored, False  # type: ignore[return-value]
    if entity.version != 1:
        raise ValidationError(f"{entity.ref} is not a stored version of its lineage")
    return entity, True
