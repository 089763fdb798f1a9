"""``forseti lineage REF``: a model's evolution, a pipeline's tree, where a version came from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import forseti as fs
from forseti.cli import main


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, dict[str, fs.Entity]]:
    """A SQLite file holding a model trained twice and a two-stage pipeline."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    with fs.open(url, blob_dir=tmp_path / "blobs") as reg:
        w = reg.put_blob(b"w" * 16, format="safetensors")
        config = reg.add(fs.ConfigEntity(name="cfg-lr3", params={"lr": 3e-4}))
        model = reg.add(fs.ModelEntity(name="tiny-lm", hidden_size=64))
        run = reg.add(fs.TrainingRunEntity(name="run-pre", model=model.ref, config=config.ref))
        ckpt = reg.add(fs.CheckpointEntity(run=run.ref, model=model.ref, step=200, weights=w))
        model2 = reg.commit(model.evolve(weights=w, derived_from=(ckpt.ref,)))
        stage = reg.add(
            fs.TrainingStageEntity(
                name="stage-pre", kind="pretrain", config=config.ref, run=run.ref
            )
        )
        pipeline = reg.add(fs.PipelineEntity(name="pipe-main", stages=(stage.ref,)))
    entities = dict(
        config=config, model=model, model2=model2, run=run, ckpt=ckpt, stage=stage,
        pipeline=pipeline,
    )  # fmt: skip
    return url, entities


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_pipeline_as_text(
    store: tuple[str, dict[str, fs.Entity]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, e = store
    status, out, err = run_cli(
        capsys, "lineage", str(e["pipeline"].lineage_id), "--url", url, "--plain"
    )
    assert status == 0 and err == ""
    assert "Pipeline 'pipe-main' v1: stages, runs and checkpoints" in out
    assert "|-- stages: TrainingStage 'stage-pre' v1" not in out  # the only stage is the last
    assert "`-- stages: TrainingStage 'stage-pre' v1" in out
    assert "config (ref): Config 'cfg-lr3' v1" in out
    assert "run: TrainingRun 'run-pre' v1" in out
    assert "checkpoints: Checkpoint step 200 v1" in out
    assert f"5 version(s); stored in {url}" in out


def test_model_lineage_with_rich(
    store: tuple[str, dict[str, fs.Entity]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, e = store
    ref = f"{e['model2'].lineage_id}@2"  # LINEAGE@VERSION; the tree starts at version 1
    status, out, _ = run_cli(capsys, "lineage", ref, "--url", url)
    assert status == 0
    assert "Model 'tiny-lm' v2: how the model evolved" in out
    lines = out.splitlines()
    root = next(i for i, line in enumerate(lines) if line.startswith("Model 'tiny-lm' v1"))
    tree = "\n".join(lines[root:])
    for text in ("previous (derived): Model 'tiny-lm' v2", "runs (derived): TrainingRun 'run-pre' v1",
                 "checkpoints: Checkpoint step 200 v1", "derived_from (derived): Model 'tiny-lm' v2"):  # fmt: skip
        assert text in tree
    assert "(shown above)" in tree  # v2 hangs from v1 and from the checkpoint
    assert f"stored in {url}" in out


def test_other_entities_show_where_they_came_from(
    store: tuple[str, dict[str, fs.Entity]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, e = store
    # a version id works too
    status, out, _ = run_cli(capsys, "lineage", str(e["ckpt"].id), "--url", url, "--plain")
    assert status == 0
    assert "Checkpoint step 200 v1: what it came from" in out
    assert "run (ref): TrainingRun 'run-pre' v1" in out
    assert "model (ref): Model 'tiny-lm' v1" in out
    assert "config (ref): Config 'cfg-lr3' v1" in out  # through the run


def test_mermaid_and_dot(
    store: tuple[str, dict[str, fs.Entity]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, e = store
    lineage = str(e["pipeline"].lineage_id)
    status, out, _ = run_cli(capsys, "lineage", lineage, "--url", url, "--format", "mermaid")
    assert status == 0 and out.startswith("graph TD\n")
    assert len(re.findall(r'^    n\d+\["', out, re.M)) == 5
    assert "-->|stages|" in out and "-.->|config|" in out
    assert out.rstrip().splitlines()[-1] == f"%% stages, runs and checkpoints; stored in {url}"
    status, out, _ = run_cli(capsys, "lineage", lineage, "--url", url, "--format", "dot")
    assert status == 0 and out.startswith("digraph entity_tree {")
    assert out.count("{") == out.count("}") == 1
    assert len(re.findall(r"^    n\d+ \[label=", out, re.M)) == 5
    assert out.rstrip().splitlines()[-1] == f"// stages, runs and checkpoints; stored in {url}"


@pytest.mark.parametrize(
    ("ref", "error"),
    [
        ("8f4c51b6-5c1a-4d7b-9d39-0b8f2a1f1c11", "NotFoundError"),
        ("not-a-uuid", "ValidationError"),
        ("8f4c51b6-5c1a-4d7b-9d39-0b8f2a1f1c11@two", "ValidationError"),
    ],
)
def test_errors_are_reported_on_stderr(
    store: tuple[str, dict[str, fs.Entity]],
    capsys: pytest.CaptureFixture[str],
    ref: str,
    error: str,
) -> None:
    url, _ = store
    status, out, err = run_cli(capsys, "lineage", ref, "--url", url)
    assert status == 1 and out == ""
    assert err.startswith(f"forseti: error ({error}):")


def test_unknown_version_and_usage_errors(
    store: tuple[str, dict[str, fs.Entity]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, e = store
    status, _, err = run_cli(capsys, "lineage", f"{e['model'].lineage_id}@9", "--url", url)
    assert status == 1 and "has no version 9" in err
    with pytest.raises(SystemExit) as exc:
        main(["lineage", str(e["model"].lineage_id), "--url", url, "--format", "svg"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["lineage"])
    assert exc.value.code == 2
    assert "REF" in capsys.readouterr().err
