"""Provenance: which run, config and dataset produced this checkpoint?

Every reference an entity holds (a run's ``model``/``config``/``dataset``, a checkpoint's ``run`` and
``model``, anything listed in ``derived_from``) is recorded as a provenance edge when the version is
stored, and so is each version's link to the one before it. ``reg.ancestors(x)`` walks those edges
towards the inputs, ``reg.descendants(x)`` towards everything built from ``x``.

Run it with ``python examples/provenance.py``; it writes only to a temporary directory.
"""

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import forseti as fs

with tempfile.TemporaryDirectory() as tmp:
    reg = fs.open(f"sqlite:///{Path(tmp) / 'runs.db'}")  # blobs go to <tmp>/blobs

    # Inputs.
    dataset = reg.add(fs.DatasetEntity(name="arith-200", format="jsonl", num_examples=200))
    config = reg.add(fs.ConfigEntity(name="sft-small", params={"lr": 3e-4, "batch_size": 16}))
    model = reg.add(fs.ModelEntity(name="tiny", hidden_size=64))

    # A run that uses them, then finishes.
    run = reg.add(
        fs.TrainingRunEntity(
            name="sft-1", model=model.ref, config=config.ref, dataset=dataset.ref,
            status="running", total_steps=100,
        )
    )
    run = reg.commit(run.evolve(status="completed", step=100, finished_at=datetime.now(UTC)))

    # Trained weights: bytes go to the blob store; the entity holds a verified reference.
    weights = reg.put_blob(b"stand-in for a safetensors file", format="safetensors")
    model_v2 = reg.commit(model.evolve(weights=weights, derived_from=(run.ref,)))
    checkpoint = reg.add(
        fs.CheckpointEntity(run=run.ref, model=model_v2.ref, step=100, weights=weights)
    )

    def describe(ref: fs.EntityRef) -> str:
        entity = reg.get(ref)  # an EntityRef names an exact version
        name = getattr(entity, "name", f"step {getattr(entity, 'step', '?')}")
        return f"{type(entity).__name__:<18} {name:<10} v{ref.version}"

    print("direct inputs of the checkpoint:")
    direct = reg.ancestors(checkpoint, max_depth=1)
    for ref in direct:
        print("  ", describe(ref))

    print("all ancestors, nearest first:")
    ancestors = reg.ancestors(checkpoint)
    for ref in ancestors:
        print("  ", describe(ref))

    # The answer to the question, by type.
    by_type: dict[type, fs.Entity] = {}  # nearest version of each type
    for ref in ancestors:
        by_type.setdefault(type(reg.get(ref)), reg.get(ref))
    run_e, config_e, dataset_e = (
        by_type[t] for t in (fs.TrainingRunEntity, fs.ConfigEntity, fs.DatasetEntity)
    )
    print(
        f"produced by: run {run_e.name} v{run_e.version}, config {config_e.name} "
        f"v{config_e.version}, dataset {dataset_e.name} v{dataset_e.version}"
    )

    print("everything derived from the dataset:")
    descendants = reg.descendants(dataset)
    for ref in descendants:
        print("  ", describe(ref))

    # The checkpoint's weights, read back and verified against their sha256.
    data = reg.read_blob(checkpoint.weights)
    print(f"weights: {len(data)} bytes at {reg.blob_path(checkpoint.weights)}")
    reg.close()

    # What this script showed, checked.
    assert set(direct) == {run.ref, model_v2.ref}
    assert {dataset.ref, config.ref, model.ref, run.ref, model_v2.ref} <= set(ancestors)
    assert run.ref.version == 2 and fs.EntityRef(run.lineage_id, 1) in ancestors  # earlier run version
    assert (run_e, config_e, dataset_e) == (run, config, dataset)
    assert checkpoint.ref in descendants and model_v2.ref in descendants
    assert model.ref not in descendants  # the model was an input, not derived from the data
    assert data == b"stand-in for a safetensors file"
