"""Entity trees: which stages, runs and checkpoints make up this pipeline, and how did the model
evolve?

Builds a small two-stage pipeline (pre-training, then fine-tuning) with runs and checkpoints,
prints ``pipeline_tree`` as text and as a Mermaid flowchart, prints ``model_lineage``, then
changes the shared config with ``commit_change``: only the config and the versions that store a
reference to it are committed.

Run it with ``python examples/lineage_tree.py``; it writes only to memory.
"""

from datetime import UTC, datetime

import forseti as fs
from forseti.trees import EntityTree, model_lineage, pipeline_tree

reg = fs.open("memory://")

# Inputs, shared by both stages.
config = reg.add(fs.ConfigEntity(name="base-config", params={"lr": 3e-4, "batch_size": 16}))
dataset = reg.add(fs.DatasetEntity(name="arith-200", num_examples=200))
model = reg.add(fs.ModelEntity(name="tiny-lm", hidden_size=64, num_layers=2))
weights = reg.put_blob(b"stand-in for a safetensors file", format="safetensors")

# Stage 1: pre-training, with a checkpoint every 50 steps.
pre = reg.add(
    fs.TrainingRunEntity(
        name="pretrain-1", model=model.ref, config=config.ref, dataset=dataset.ref,
        status="running", total_steps=100,
    )
)  # fmt: skip
checkpoints = [
    reg.add(fs.CheckpointEntity(run=pre.ref, model=model.ref, step=step, weights=weights))
    for step in (50, 100)
]
pre = reg.commit(pre.evolve(status="completed", step=100, finished_at=datetime.now(UTC)))

# The trained model is the next version of the model, made from the last checkpoint.
model_v2 = reg.commit(model.evolve(weights=weights, derived_from=(checkpoints[-1].ref,)))

# Stage 2: fine-tuning the new version.
sft = reg.add(fs.TrainingRunEntity(name="sft-1", model=model_v2.ref, config=config.ref))
reg.add(fs.CheckpointEntity(run=sft.ref, model=model_v2.ref, step=20, weights=weights))

stages = [
    reg.add(fs.TrainingStageEntity(name="pretrain", kind="pretrain", config=config.ref, run=pre.ref)),
    reg.add(
        fs.TrainingStageEntity(
            name="sft", kind="sft", order=1, config=config.ref, run=sft.ref,
            depends_on=("pretrain",),
        )
    ),
]  # fmt: skip
pipeline = reg.add(fs.PipelineEntity(name="tiny-recipe", stages=tuple(s.ref for s in stages)))

# Which stages, runs and checkpoints?
tree = pipeline_tree(reg, pipeline)
print(tree.to_text())
print(tree.to_mermaid())
runs = tree.find(type=fs.TrainingRunEntity)
steps = [c.step for c in tree.find(type=fs.CheckpointEntity)]
print(f"{len(tree)} versions; runs: {[r.name for r in runs]}; checkpoint steps: {steps}")
assert [r.name for r in runs] == ["pretrain-1", "sft-1"] and steps == [50, 100, 20]

# How did the model evolve?
lineage = model_lineage(reg, model)
print(lineage.to_text())
print("path to the fine-tuned checkpoint:")
for ref in lineage.path_to(tree.find(type=fs.CheckpointEntity, step=20)[0]):
    print("  ", lineage[ref].__class__.__name__, f"v{ref.version}")

# Change the shared config: the config, both runs, both stages and the pipeline get a new
# version (they store a reference to it); the dataset and the model do not.
stored = EntityTree.build(reg, pipeline)
before = list(stored.nodes)  # node order: a change replaces nodes in place
stored.commit_change(reg, config, params={"lr": 1e-4, "batch_size": 16})
changed = sorted(
    f"{stored[ref].__class__.__name__} {getattr(stored[ref], 'name', '')!r}"
    for ref, old in zip(stored.nodes, before, strict=True)
    if ref != old
)
print("new versions:", changed)
assert len(changed) == 6
assert reg.get(pipeline.lineage_id).version == 2
print(stored.to_text(plain=True))
reg.close()
