"""Forseti: entity-first, event-sourced AI training.

>>> import forseti as fs
>>> reg = fs.open("memory://")
>>> m = reg.add(fs.ModelEntity(name="tiny", hidden_size=64))
>>> reg.commit(m.evolve(hidden_size=128)).version
2
"""

from __future__ import annotations

import logging

from . import trees
from .entities import (
    SYSTEM_FIELDS,
    BlobRef,
    CheckpointEntity,
    ConfigEntity,
    DatasetEntity,
    Entity,
    EntityRef,
    FrozenDict,
    ModelEntity,
    PipelineEntity,
    TrainingRunEntity,
    TrainingStageEntity,
)
from .errors import (
    BackpressureError,
    ConfigError,
    ConflictError,
    DecryptionError,
    DuplicateOperationError,
    ForsetiError,
    IntegrityError,
    NotFoundError,
    SchemaVersionError,
    StoreClosedError,
    UnknownEntityTypeError,
    ValidationError,
)
from .events import (
    AliasMoved,
    CallCompleted,
    CallFailed,
    CallStarted,
    EntityRegistered,
    EntityVersionCommitted,
    Event,
    EventBus,
    HandlerFailed,
    caused_by,
    current_event,
    emit_events,
    on,
)
from .operations import (
    FunctionOperation,
    LowPriorityOperation,
    NormalOperation,
    Operation,
    OperationCommitted,
    OperationConflicted,
    OperationFailed,
    OperationRejected,
    OperationRejectedError,
    OperationResult,
    OperationRetried,
    OperationStarted,
    OperationSubmitted,
    Priority,
    StructuralOperation,
    with_conflict_resolution,
)
from .registry import AsyncEntityRegistry, EntityRegistry, aopen, generate_blob_key, open
from .registry.callables import CallableRegistry, CallRecord, FunctionEntity, FunctionSpec, callable
from .registry.eventlog import Projection, ProjectionReport, StoredEvent
from .trees import CycleError, EntityTree
from .workflows import (
    Step,
    StepOutput,
    Workflow,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowFailedError,
    WorkflowResult,
    WorkflowRunEntity,
    WorkflowStarted,
)

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``fs.gspo``, ``fs.consensus``, ``fs.export`` and ``fs.rl``: imported on first use (they
    need torch, which ``import forseti`` does not)."""
    if name in ("gspo", "consensus", "export", "rl"):
        import importlib

        return importlib.import_module(f"forseti.{name}")
    raise AttributeError(f"module 'forseti' has no attribute {name!r}")

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "__version__",
    "open",
    "generate_blob_key",
    "aopen",
    "EntityRegistry",
    "AsyncEntityRegistry",
    "callable",
    "CallableRegistry",
    "CallRecord",
    "FunctionEntity",
    "FunctionSpec",
    "Entity",
    "EntityRef",
    "BlobRef",
    "FrozenDict",
    "SYSTEM_FIELDS",
    "ModelEntity",
    "CheckpointEntity",
    "DatasetEntity",
    "ConfigEntity",
    "TrainingRunEntity",
    "PipelineEntity",
    "TrainingStageEntity",
    "Event",
    "EventBus",
    "on",
    "emit_events",
    "caused_by",
    "current_event",
    "HandlerFailed",
    "CallStarted",
    "CallCompleted",
    "CallFailed",
    "EntityRegistered",
    "EntityVersionCommitted",
    "AliasMoved",
    "Operation",
    "StructuralOperation",
    "NormalOperation",
    "LowPriorityOperation",
    "FunctionOperation",
    "OperationResult",
    "Priority",
    "with_conflict_resolution",
    "OperationRejectedError",
    "OperationSubmitted",
    "OperationStarted",
    "OperationConflicted",
    "OperationRetried",
    "OperationCommitted",
    "OperationRejected",
    "OperationFailed",
    "trees",
    "EntityTree",
    "CycleError",
    "Workflow",
    "Step",
    "StepOutput",
    "WorkflowResult",
    "WorkflowFailedError",
    "WorkflowRunEntity",
    "WorkflowStarted",
    "WorkflowCompleted",
    "WorkflowFailed",
    "Projection",
    "ProjectionReport",
    "StoredEvent",
    "BackpressureError",
    "ForsetiError",
    "ValidationError",
    "ConflictError",
    "DuplicateOperationError",
    "NotFoundError",
    "UnknownEntityTypeError",
    "IntegrityError",
    "DecryptionError",
    "ConfigError",
    "SchemaVersionError",
    "StoreClosedError",
]
