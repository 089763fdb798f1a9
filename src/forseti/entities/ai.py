"""The AI entity types: models, checkpoints, datasets, configs, runs, pipelines and stages.

Each is validated when it is built (and so when it is evolved): counts and sizes are positive, a
checkpoint references the exact model version (and run version, or an explicit ``None``) it came
from, a run's step never exceeds its total, a finished run says when it finished.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import (
    AwareDatetime,
    Field,
    NonNegativeInt,
    PositiveInt,
    StringConstraints,
    model_validator,
)

from .base import Entity
from .frozen import FloatMap, IntMap, JSONMap
from .refs import BlobRef, EntityRef

__all__ = [
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

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]
"""A non-empty, human-readable name (surrounding whitespace is stripped)."""

RunStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
_TERMINAL = frozenset({"completed", "failed", "cancelled"})


class ModelEntity(Entity):
    """A model: its architecture, sizes, hyper-parameters and (optionally) its weights blob."""

    entity_type: ClassVar[str] = "forseti.Model"

    name: Name
    architecture: str = ""
    hidden_size: PositiveInt | None = None
    num_layers: PositiveInt | None = None
    vocab_size: PositiveInt | None = None
    num_parameters: PositiveInt | None = None
    hyperparameters: JSONMap = Field(default_factory=dict)
    weights: BlobRef | None = None
    description: str = ""


class CheckpointEntity(Entity):
    """A snapshot of a model's weights at one step. It names the exact model version, and the
    exact run version when it came from one (``run=None``: weights from outside, e.g. imported)."""

    entity_type: ClassVar[str] = "forseti.Checkpoint"

    run: EntityRef | None
    model: EntityRef
    step: NonNegativeInt
    weights: BlobRef
    optimizer_state: BlobRef | None = None
    metrics: FloatMap = Field(default_factory=dict)


class DatasetEntity(Entity):
    """A dataset: where it lives, how big it is, and optionally its content as a blob."""

    entity_type: ClassVar[str] = "forseti.Dataset"

    name: Name
    uri: str = ""
    format: str = ""
    num_examples: PositiveInt | None = None
    size_bytes: PositiveInt | None = None
    data: BlobRef | None = None
    splits: IntMap = Field(default_factory=dict)
    description: str = ""

    @model_validator(mode="after")
    def _check_splits(self) -> Self:
        if self.num_examples is not None and sum(self.splits.values()) > self.num_examples:
            raise ValueError(
                f"splits add up to {sum(self.splits.values())}, more than num_examples="
                f"{self.num_examples}"
            )
        return self


class ConfigEntity(Entity):
    """A named configuration: a deeply immutable mapping of parameters."""

    entity_type: ClassVar[str] = "forseti.Config"

    name: Name
    params: JSONMap = Field(default_factory=dict)


class TrainingRunEntity(Entity):
    """A training run: what it trains, with which config and data, and how far it got."""

    entity_type: ClassVar[str] = "forseti.TrainingRun"

    name: Name
    algorithm: str = ""
    model: EntityRef | None = None
    config: EntityRef | None = None
    dataset: EntityRef | None = None
    status: RunStatus = "pending"
    step: NonNegativeInt = 0
    total_steps: PositiveInt | None = None
    metrics: FloatMap = Field(default_factory=dict)
    started_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None
    error: str | None = None

    @model_validator(mode="after")
    def _check_progress(self) -> Self:
        if self.total_steps is not None and self.step > self.total_steps:
            raise ValueError(f"step {self.step} is past total_steps {self.total_steps}")
        if self.finished_at is not None and self.status not in _TERMINAL:
            raise ValueError(f"finished_at is set but status is {self.status!r}")
        if self.status == "failed" and not self.error:
            raise ValueError("a failed run must say why (error)")
        if self.started_at and self.finished_at and self.finished_at < self.started_at:
            raise ValueError("finished_at is before started_at")
        return self


class TrainingStageEntity(Entity):
    """One stage of a pipeline (pre-training, SFT, RL, evaluation, export …).

    It owns its ``run`` (a ``hierarchical`` edge in :mod:`forseti.trees`); its ``config`` is a
    ``reference``.
    """

    entity_type: ClassVar[str] = "forseti.TrainingStage"
    child_fields: ClassVar[tuple[str, ...]] = ("run",)

    name: Name
    kind: Name
    order: NonNegativeInt = 0
    config: EntityRef | None = None
    run: EntityRef | None = None
    status: RunStatus = "pending"
    depends_on: tuple[Name, ...] = ()

    @model_validator(mode="after")
    def _check_deps(self) -> Self:
        if self.name in self.depends_on:
            raise ValueError(f"stage {self.name!r} depends on itself")
        return self


class PipelineEntity(Entity):
    """An ordered set of stages (each a :class:`TrainingStageEntity` version), which it owns."""

    entity_type: ClassVar[str] = "forseti.Pipeline"
    child_fields: ClassVar[tuple[str, ...]] = ("stages",)

    name: Name
    stages: tuple[EntityRef, ...] = ()
    description: str = ""

    @model_validator(mode="after")
    def _check_stages(self) -> Self:
        lineages = [ref.lineage_id for ref in self.stages]
        if len(set(lineages)) != len(lineages):
            raise ValueError("a pipeline lists each stage lineage at most once")
        return self
