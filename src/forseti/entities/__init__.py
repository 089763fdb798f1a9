"""Versioned entities: the ``Entity`` base, references, and the AI entity types."""

from .ai import (
    CheckpointEntity,
    ConfigEntity,
    DatasetEntity,
    ModelEntity,
    Name,
    PipelineEntity,
    RunStatus,
    TrainingRunEntity,
    TrainingStageEntity,
)
from .base import SYSTEM_FIELDS, Entity, entity_type, entity_types, utcnow
from .frozen import FloatMap, FrozenDict, IntMap, JSONMap, JSONValue, deep_freeze, thaw
from .refs import BlobRef, EntityRef

__all__ = [
    "Entity",
    "SYSTEM_FIELDS",
    "EntityRef",
    "BlobRef",
    "entity_type",
    "entity_types",
    "utcnow",
    "FrozenDict",
    "deep_freeze",
    "thaw",
    "JSONMap",
    "JSONValue",
    "FloatMap",
    "IntMap",
    "Name",
    "RunStatus",
    "ModelEntity",
    "CheckpointEntity",
    "DatasetEntity",
    "ConfigEntity",
    "TrainingRunEntity",
    "PipelineEntity",
    "TrainingStageEntity",
]
