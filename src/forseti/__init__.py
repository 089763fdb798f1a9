"""Forseti: entity-first, event-sourced AI training.

>>> import forseti as fs
>>> reg = fs.open("memory://")
>>> m = reg.add(fs.ModelEntity(name="tiny", hidden_size=64))
>>> reg.commit(m.evolve(hidden_size=128)).version
2
"""

from __future__ import annotations

import logging

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
    ConfigError,
    ConflictError,
    DuplicateOperationError,
    ForsetiError,
    IntegrityError,
    NotFoundError,
    SchemaVersionError,
    StoreClosedError,
    UnknownEntityTypeError,
    ValidationError,
)
from .registry import AsyncEntityRegistry, EntityRegistry, aopen, open

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "__version__",
    "open",
    "aopen",
    "EntityRegistry",
    "AsyncEntityRegistry",
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
    "ForsetiError",
    "ValidationError",
    "ConflictError",
    "DuplicateOperationError",
    "NotFoundError",
    "UnknownEntityTypeError",
    "IntegrityError",
    "ConfigError",
    "SchemaVersionError",
    "StoreClosedError",
]
