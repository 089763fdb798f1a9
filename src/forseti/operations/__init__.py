"""Operations: prioritized changes, staged per target, committed under OCC with retry."""

from .decorator import OperationRejectedError, with_conflict_resolution
from .events import (
    OperationCommitted,
    OperationConflicted,
    OperationEvent,
    OperationFailed,
    OperationRejected,
    OperationRetried,
    OperationStarted,
    OperationSubmitted,
)
from .model import (
    FunctionOperation,
    LowPriorityOperation,
    NormalOperation,
    Operation,
    OperationResult,
    Policy,
    Priority,
    StructuralOperation,
)
from .scheduler import OperationScheduler

__all__ = [
    "Operation",
    "StructuralOperation",
    "NormalOperation",
    "LowPriorityOperation",
    "FunctionOperation",
    "OperationResult",
    "Priority",
    "Policy",
    "OperationScheduler",
    "with_conflict_resolution",
    "OperationRejectedError",
    "OperationEvent",
    "OperationSubmitted",
    "OperationStarted",
    "OperationConflicted",
    "OperationRetried",
    "OperationCommitted",
    "OperationRejected",
    "OperationFailed",
]
