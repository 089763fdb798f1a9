"""A training pipeline as a workflow of registered functions, with provenance, rollback and resume.

    python examples/pipeline.py

1. Registers four functions (`prepare`, `train`, `evaluate`, `promote`) and runs them as a
   workflow: the two evaluations run concurrently, and every output is committed with
   provenance to the exact versions it came from.
2. Answers "which run, config and dataset produced this checkpoint?" from the store.
3. A run whose promotion fails: the completed training stage is rolled back (its `on_failure`
   compensation), and the run records which step failed and what was undone.
4. A run that stops half way (a flaky step) and is resumed: completed steps are not run again.

Everything lives in a throwaway in-memory store; use `fs.open()` for the embedded SQLite file.
"""

from __future__ import annotations

import forseti as fs

reg = fs.open("memory://")

# -- the functions ---------------------------------------------------------------------------


@fs.callable("prepare")
def prepare(raw: fs.DatasetEntity, keep: float = 0.9) -> fs.DatasetEntity:
    """Filter a dataset: the next version of its lineage."""
    assert raw.num_examples is not None
    kept = int(raw.num_examples * keep)
    return raw.evolve(num_examples=kept, splits={"train": kept - 100, "val": 50, "test": 50})


@fs.callable("train")
def train(
    model: fs.ModelEntity, data: fs.DatasetEntity, config: fs.ConfigEntity
) -> fs.CheckpointEntity:
    """Train (here: pretend to) and return a checkpoint of a new run."""
    steps = int(config.params["steps"])
    run = reg.add(
        fs.TrainingRunEntity(
            name=f"{model.name}-run",
            algorithm="sgd",
            model=model.ref,
            config=config.ref,
            dataset=data.ref,
            status="completed",
            step=steps,
            total_steps=steps,
            derived_from=(model.ref, config.ref, data.ref),
        )
    )
    weights = reg.put_blob(b"\x00" * 64, format="safetensors")
    return fs.CheckpointEntity(run=run.ref, model=model.ref, step=steps, weights=weights)


@fs.callable("evaluate")
def evaluate(checkpoint: fs.CheckpointEntity, split: str) -> dict[str, float]:
    return {"split_size": 50.0, "accuracy": 0.91 if split == "val" else 0.89}


@fs.callable("promote")
def promote(checkpoint: fs.CheckpointEntity, scores: list[dict[str, float]], minimum: float) -> str:
    worst = min(s["accuracy"] for s in scores)
    if worst < minimum:
        raise ValueError(f"accuracy {worst:.2f} is below {minimum:.2f}: not promoting")
    return f"promoted checkpoint at step {checkpoint.step}"


@fs.callable("mark_stage")
def mark_stage(stage: fs.TrainingStageEntity, status: str) -> fs.TrainingStageEntity:
    return reg.get(stage.lineage_id).evolve(status=status)  # type: ignore[return-value]


@fs.callable("roll_back_stage")
def roll_back_stage(output: fs.TrainingStageEntity) -> fs.TrainingStageEntity:
    """Compensation for `mark_stage`: cancel the stage it completed."""
    return reg.get(output.lineage_id).evolve(status="cancelled")  # type: ignore[return-value]


reg.callables.include(prepare, train, evaluate, promote, mark_stage, roll_back_stage)

raw = reg.add(fs.DatasetEntity(name="digits", num_examples=1000))
config = reg.add(fs.ConfigEntity(name="sgd", params={"steps": 200, "lr": 0.1}))
model = reg.add(fs.ModelEntity(name="tiny", architecture="mlp", hidden_size=32))
stage = reg.add(fs.TrainingStageEntity(name="sft", kind="supervised"))


def pipeline(minimum: float) -> fs.Workflow:
    wf = fs.Workflow("train-and-promote")
    data = wf.step("prepare", raw=raw.lineage_id, keep=0.9)  # a lineage id: its head when run
    started = wf.step("mark_stage", stage=stage, status="running", on_failure="roll_back_stage")
    ckpt = wf.step("train", model=model, data=data, config=config, after=[started])
    scores = [wf.step("evaluate", name=f"eval_{s}", checkpoint=ckpt, split=s) for s in ("val", "test")]
    wf.step("promote", checkpoint=ckpt, scores=scores, minimum=minimum)
    return wf


def show(run: fs.WorkflowRunEntity) -> None:
    print(f"  run {run.name!r}: {run.status} (attempt {run.attempts}, version {run.version})")
    for s in run.steps:
        print(f"    {s.name:10s} {s.callable:22s} {s.status}")


# -- 1. a run that succeeds --------------------------------------------------------------------

print("1. a pipeline run")
result = pipeline(minimum=0.85).run(reg)
show(result.run)
print("  ", result["promote"])

# -- 2. provenance -------------------------------------------------------------------------------

checkpoint = result["train"]
print("\n2. which run, config and dataset produced this checkpoint?")
for ref in reg.ancestors(checkpoint):
    entity = reg.get(ref)
    if isinstance(entity, fs.TrainingRunEntity | fs.ConfigEntity | fs.DatasetEntity):
        print(f"   {type(entity).__name__:18s} {getattr(entity, 'name', ''):10s} v{entity.version}")
record = reg.get(result.run.step("train").call)
print(f"   made by call {record.name}@{record.function_version} in {record.duration_s * 1e3:.2f} ms")

# -- 3. a failing run: compensation --------------------------------------------------------------

print("\n3. a run whose promotion fails rolls the stage back")
try:
    pipeline(minimum=0.95).run(reg)
except fs.WorkflowFailedError as exc:
    show(exc.result.run)
    print(f"   failed step: {exc.step}; cause: {exc.__cause__}")
    print(f"   stage is now {reg.get(stage.lineage_id).status!r}")  # cancelled

# -- 4. stop half way, then resume ----------------------------------------------------------------

print("\n4. a flaky step, then resume")
flaky = {"fail": True}


@fs.callable("publish")
def publish(checkpoint: fs.CheckpointEntity) -> str:
    if flaky["fail"]:
        raise ConnectionError("model hub unreachable")
    return f"published step {checkpoint.step}"


reg.callables.register(publish)
wf = fs.Workflow("train-and-publish")
ckpt = wf.step("train", model=model, data=raw, config=config)
wf.step("publish", checkpoint=ckpt)
stopped = wf.run(reg, raise_on_failure=False)
show(stopped.run)
trained = len(reg.callables.records("train"))
flaky["fail"] = False  # the hub is back
resumed = fs.Workflow.resume(reg, stopped.run)
show(resumed.run)
assert len(reg.callables.records("train")) == trained  # completed steps do not run again
print(f"   {resumed['publish']}; the resumed run did not train again")
reg.close()
