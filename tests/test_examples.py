"""The examples, the docs' snippets, the demo and the ``forseti`` command, run as a user runs them.

Each runs in a subprocess with this interpreter (``sys.executable``), in an empty temporary working
directory, with ``FORSETI_URL``/``FORSETI_BLOB_DIR`` unset, so a broken public API makes them fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from forseti.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
_FENCE = re.compile(r"(?P<skip><!-- not run[^>]*-->\s*\n)?```python\n(?P<code>.*?)```", re.S)
DOCS = sorted(p for p in (ROOT / "docs").glob("*.md") if _FENCE.search(p.read_text()))


def _run(
    args: list[str], cwd: Path, timeout: float = 120, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORSETI_URL", "FORSETI_BLOB_DIR")}
    env.update(extra_env)
    env["COLUMNS"] = "200"  # wide enough that rich (when installed) never wraps a name
    env["PYTHONIOENCODING"] = "utf-8"
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_the_documented_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"quickstart.py", "provenance.py", "async_registry.py"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_and_leaves_nothing_behind(example: Path, tmp_path: Path) -> None:
    _ok(_run([str(example)], cwd=tmp_path))
    assert list(tmp_path.iterdir()) == [], "examples write only to memory:// or a temp directory"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_doc_snippets_run(doc: Path, tmp_path: Path) -> None:
    """Every ```python block of a page runs, in order, in one namespace (one script per page).

    A block right after an ``<!-- not run: reason -->`` comment is skipped.
    """
    blocks = [m["code"] for m in _FENCE.finditer(doc.read_text()) if not m["skip"]]
    script = tmp_path / "snippets.py"
    script.write_text("\n\n".join(blocks))
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    _ok(_run([str(script)], cwd=work, TMPDIR=str(tmp)))  # snippets' tempfile dirs land here


def _section(text: str, start: str, end: str) -> str:
    assert start in text and end in text, text
    return text[text.index(start) : text.index(end)]


def test_tour_runs_twice_on_one_store_then_info_and_history(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    outputs = [_ok(_run(["-m", "forseti", "tour", "--url", url], cwd=tmp_path)) for _ in range(2)]

    for n, out in enumerate(outputs, start=1):
        assert f"Forseti tour #{n}" in out
        # the stale draft and the stale alias move are refused with their versions
        assert "ConflictError: the draft expected head v2, the store has v3" in out
        assert "expected revision 1, actual 2" in out
        assert "nothing was written" in out
        provenance = _section(out, "Checkpoint provenance", "Descendants of the dataset")
        for name in (f"demo-{n}-run", f"demo-{n}-model", f"demo-{n}-config", f"demo-{n}-dataset"):
            assert name in provenance
        assert (
            f"run demo-{n}-run v2 trained model demo-{n}-model v3 with config demo-{n}-config v1 "
            f"on dataset demo-{n}-dataset v1" in provenance
        )
        descendants = _section(out, "Descendants of the dataset", "Where the data lives")
        assert "Checkpoint" in descendants and f"demo-{n}-model" in descendants
        assert "hidden_size: 64 -> 128" in out
        assert str(tmp_path / "blobs") in out

    info = _ok(_run(["-m", "forseti", "info", "--url", url], cwd=tmp_path))
    assert url in info
    assert re.search(r"schema version:\s+1\b", info)
    # two demo runs: per run one checkpoint, dataset, model and run, and two configs (the
    # training config and the evaluation counter of the operations section)
    per_run = {"Checkpoint": 1, "Config": 2, "Dataset": 1, "Model": 1, "TrainingRun": 1}
    for type_name, count in per_run.items():
        assert re.search(rf"forseti\.{type_name}\W+{2 * count}\b", info), info

    lineage = re.search(r"forseti history (\S+) --url", outputs[1])
    assert lineage is not None
    history = _ok(_run(["-m", "forseti", "history", lineage[1], "--url", url], cwd=tmp_path))
    assert "demo-2-model" in history and "3 version(s)" in history
    assert "hidden_size: 64 -> 128" in history
    assert "production -> v3" in history
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("demo.db")) == [
        "blobs"
    ]


def test_demo_trains_gspo_on_the_default_store_then_shows_the_lineage(tmp_path: Path) -> None:
    """`make demo`: GSPO on the embedded SQLite store (a short run here; 200 steps by default)."""
    outputs = [
        _ok(_run(["-m", "forseti", "demo", "--steps", "8"], cwd=tmp_path)) for _ in range(2)
    ]
    db = tmp_path / ".forseti" / "forseti.db"
    assert db.is_file() and (tmp_path / ".forseti" / "blobs").is_dir()
    for n, out in enumerate(outputs, start=1):
        assert "GSPO learns to reverse four digits" in out
        assert f"sqlite:///{db}" in out
        curve = _section(out, "Learning curve", "Answers of the trained policy")
        assert re.search(r"\b8\b", curve), curve  # the last step is in the table
        lineage = _section(out, "Lineage of the final checkpoint's model", "Where it is stored")
        assert f"Model 'reverse-demo-{n}-policy' v1" in lineage
        assert f"GSPOTrainingRun 'reverse-demo-{n}'" in lineage
        assert lineage.count("Checkpoint step") == 4  # every 2 steps, the last at the end
        weights = re.search(r"weights:\s+(\S+)", out)
        assert weights is not None and Path(weights[1]).is_file()
        assert str(tmp_path / ".forseti" / "blobs") in weights[1]
        ref = re.search(r"forseti lineage (\S+) --url", out)
        assert ref is not None
        provenance = _ok(_run(["-m", "forseti", "lineage", ref[1]], cwd=tmp_path))
        assert "GSPOConfig" in provenance and f"reverse-demo-{n}" in provenance


def test_tour_on_the_default_store_uses_the_working_directory(tmp_path: Path) -> None:
    out = _ok(_run(["-m", "forseti", "tour"], cwd=tmp_path))
    assert f"sqlite:///{tmp_path / '.forseti' / 'forseti.db'}" in out
    assert (tmp_path / ".forseti" / "forseti.db").is_file()
    assert (tmp_path / ".forseti" / "blobs").is_dir()


def test_cli_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tour", "--url", "memory://", "--plain"]) == 0
    assert "gone when the tour exits" in capsys.readouterr().out
    assert main(["demo", "--url", "memory://", "--plain", "--steps", "2"]) == 0
    assert "GSPO learns to reverse" in capsys.readouterr().out
    assert main(["demo", "--url", "memory://", "--steps", "0"]) == 1
    assert main(["info", "--url", "memory://", "--plain"]) == 0
    assert "0 in all" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["history", "not-a-uuid", "--url", "memory://"], 1, "ValidationError"),
        (["history", "8f4c51b6-5c1a-4d7b-9d39-0b8f2a1f1c11", "--url", "memory://"], 1, "NotFoundError"),
        (["info", "--url", "nosuch://x"], 1, "ConfigError"),
    ],
)
def test_cli_errors_are_reported_not_raised(
    argv: list[str], status: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == status
    assert message in capsys.readouterr().err


def test_cli_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["nosuchcommand"])
    assert exc.value.code == 2
