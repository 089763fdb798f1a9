"""Trees that answer two everyday questions, built from what the registry stores.

* :func:`pipeline_tree`: which stages, runs and checkpoints make up this pipeline?
* :func:`model_lineage`: how did this model evolve through training runs and checkpoints?

Both find "who points at me" (a run's checkpoints, a model's runs) through one-hop
``reg.descendants``, which the store answers from its provenance index.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from ..entities import (
    CheckpointEntity,
    Entity,
    EntityRef,
    ModelEntity,
    PipelineEntity,
    TrainingRunEntity,
    TrainingStageEntity,
)
from ..errors import ValidationError
from .discover import resolve
from .edges import TreeEdge
from .model import EntityTree

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = ["pipeline_tree", "model_lineage"]

E = TypeVar("E", bound=Entity)


def _one_hop(reg: EntityRegistry, version: Entity, cls: type[E]) -> list[E]:
    """The versions of ``cls`` that reference ``version`` directly (or follow it)."""
    found = (reg.get(ref) for ref in reg.descendants(version, max_depth=1))
    return [e for e in found if isinstance(e, cls)]


def _latest_per_lineage(versions: Iterable[E]) -> dict[UUID, list[E]]:
    """``versions`` grouped by lineage (first seen first), each group oldest first."""
    groups: dict[UUID, list[E]] = {}
    for v in versions:
        groups.setdefault(v.lineage_id, []).append(v)
    for group in groups.values():
        group.sort(key=lambda v: v.version)
    return groups


def _checkpoints(reg: EntityRegistry, run_versions: Iterable[Entity]) -> dict[UUID, list[Any]]:
    """The checkpoint versions whose ``run`` is one of ``run_versions``, by checkpoint lineage."""
    return _latest_per_lineage(
        c for run in run_versions for c in _one_hop(reg, run, CheckpointEntity) if c.run == run.ref
    )


def _by_step(checkpoints: Iterable[CheckpointEntity]) -> list[CheckpointEntity]:
    return sorted(checkpoints, key=lambda c: (c.step, c.created_at))


def pipeline_tree(reg: EntityRegistry, pipeline: Entity | EntityRef | UUID | str) -> EntityTree:
    """The tree of a pipeline: its stages, each stage's run, and the checkpoints of each run.

    Shape (edge kind, relation)::

        Pipeline
        ├── TrainingStage        (hierarchical, "stages"; in the pipeline's order)
        │   ├── Config           (reference, "config")
        │   └── TrainingRun      (hierarchical, "run")
        │       └── Checkpoint   (hierarchical, "checkpoints"; by step)

    Stages, configs and runs are the exact versions stored in the pipeline and its stages. A
    run's checkpoints are those whose ``run`` is any version of the run's lineage, each at the
    head of its own lineage. ``pipeline`` is a :class:`PipelineEntity`, a ref or a lineage id.
    """
    top = resolve(reg, pipeline)
    if not isinstance(top, PipelineEntity):
        raise ValidationError(f"pipeline_tree() takes a pipeline, got a {type(top).__name__}")
    entities: list[Entity] = []
    edges: list[TreeEdge] = []
    expanded: set[EntityRef] = set()
    for stage_ref in top.stages:
        stage = reg.get(stage_ref)
        entities.append(stage)
        edges.append(TreeEdge(top.ref, stage.ref, "hierarchical", "stages"))
        if not isinstance(stage, TrainingStageEntity):
            continue
        if stage.config is not None:
            entities.append(reg.get(stage.config))
            edges.append(TreeEdge(stage.ref, stage.config, "reference", "config"))
        if stage.run is None:
            continue
        run = reg.get(stage.run)
        entities.append(run)
        edges.append(TreeEdge(stage.ref, run.ref, "hierarchical", "run"))
        if run.ref in expanded:  # a run shared by two stages
            continue
        expanded.add(run.ref)
        found = _checkpoints(reg, reg.history(run.lineage_id))
        heads = (reg.get(lineage) for lineage in found)
        for checkpoint in _by_step(c for c in heads if isinstance(c, CheckpointEntity)):
            entities.append(checkpoint)
            edges.append(TreeEdge(run.ref, checkpoint.ref, "hierarchical", "checkpoints"))
    return EntityTree(top, entities, edges)


def model_lineage(reg: EntityRegistry, model: Entity | EntityRef | UUID | str) -> EntityTree:
    """How a model evolved: its versions, the runs that trained each, their checkpoints, and the
    model versions made from those checkpoints.

    Rooted at version 1 of the model's lineage. Shape (edge kind, relation)::

        Model v1
        ├── Model v2             (derived_from, "previous": the next version of a lineage)
        └── TrainingRun          (derived_from, "runs": runs whose ``model`` is this version)
            └── Checkpoint       (hierarchical, "checkpoints"; by step)
                └── Model v2     (derived_from, "derived_from": its ``derived_from`` lists it)

    A model version made from a checkpoint is a shared child (of the version before it and of the
    checkpoint). A run appears once per model version it trained, as its latest version with that
    ``model``; a checkpoint as its latest version whose ``run`` is one of those run versions.
    A model version below a checkpoint stores references that lead back to the model version
    above it, so model versions only move forward along any path: the result is always a DAG.
    Model versions of other lineages made from these checkpoints (a distilled model) are
    followed the same way.
    """
    start = resolve(reg, model)
    if not isinstance(start, ModelEntity):
        raise ValidationError(f"model_lineage() takes a model, got a {type(start).__name__}")
    root = start if start.version == 1 else reg.get(start.lineage_id, 1)
    entities: list[Entity] = []
    edges: list[TreeEdge] = []
    queue: deque[Entity] = deque([root])
    expanded: set[EntityRef] = set()

    def reach(parent: Entity, child: Entity, kind: Any, relation: str) -> None:
        entities.append(child)
        edges.append(TreeEdge(parent.ref, child.ref, kind, relation))

    while queue:
        version = queue.popleft()
        if version.ref in expanded:
            continue
        expanded.add(version.ref)
        for after in _one_hop(reg, version, ModelEntity):
            if after.lineage_id == version.lineage_id and after.version == version.version + 1:
                reach(version, after, "derived_from", "previous")
                queue.append(after)
        runs = [r for r in _one_hop(reg, version, TrainingRunEntity) if r.model == version.ref]
        for run_versions in _latest_per_lineage(runs).values():
            run = run_versions[-1]
            reach(version, run, "derived_from", "runs")
            found = _checkpoints(reg, run_versions)
            for checkpoint in _by_step(group[-1] for group in found.values()):
                reach(run, checkpoint, "hierarchical", "checkpoints")
                for cv in found[checkpoint.lineage_id]:
                    for made in _one_hop(reg, cv, ModelEntity):
                        if cv.ref in made.derived_from:
                            reach(checkpoint, made, "derived_from", "derived_from")
                            queue.append(made)
    return EntityTree(root, entities, edges)
