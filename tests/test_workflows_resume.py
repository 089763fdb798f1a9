"""Resuming workflow runs: after a real crash (a child process killed mid-step), after a failed
step, with the code or definition changed since, and with two resumes racing for one run.

The crashing child runs ``tests/workflow_steps.py`` (seed -> double -> summarize; ``double``
calls ``os._exit(17)`` when the crash flag file exists) against a SQLite file or a PostgreSQL
schema; the parent registers the same functions (same code, so the same pinned versions) and
resumes the run from its last completed step.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import workflow_steps

import forseti as fs
from forseti.entities import entity_types, thaw
from forseti.workflows import WorkflowEntity

TESTS_DIR = Path(__file__).resolve().parent
WAIT = 10

CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); import workflow_steps; "
    "sys.exit(workflow_steps.child_main(sys.argv[2], sys.argv[3]))"
)


def heads(reg: fs.EntityRegistry) -> list[tuple[str, int, str]]:
    return sorted(
        (str(r.lineage_id), r.version, str(r.id))
        for r in reg.store.find_heads(sorted(entity_types()))
    )


def only(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


def run_crashing_child(url: str, run_name: str, flag: Path) -> subprocess.CompletedProcess[str]:
    flag.touch()
    env = dict(os.environ, **{workflow_steps.CRASH_ENV: str(flag)})
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(TESTS_DIR), url, run_name],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- module-level steps and their switches -----------------------------------------------------

SWITCHES: dict[str, Any] = {}
CALLS: dict[str, int] = {}
GATES: dict[str, threading.Event] = {}


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    SWITCHES.clear()
    CALLS.clear()
    GATES.clear()
    yield
    for gate in GATES.values():
        gate.set()


def _count(name: str) -> int:
    CALLS[name] = CALLS.get(name, 0) + 1
    return CALLS[name]


def start(value: int) -> int:
    _count("start")
    return value + 1


def flaky(x: int) -> int:
    """Fails while SWITCHES['fail'] is set; the call numbered SWITCHES['block'] waits at the
    'entered'/'release' gates."""
    n = _count("flaky")
    if SWITCHES.get("fail"):
        raise RuntimeError("flaky step failed")
    if SWITCHES.get("block") == n:
        GATES["entered"].set()
        assert GATES["release"].wait(WAIT)
    return x * 10


def finish(x: int, base: int) -> dict[str, int]:
    _count("finish")
    return {"x": x, "base": base}


def flaky_swapped(x: int) -> int:
    """Different code, registered under the name ``flaky``: a hot swap."""
    _count("flaky_swapped")
    return -x


def make_set(n: int) -> set[int]:
    _count("make_set")
    return set(range(n))


def use_set(items: Any) -> int:
    _count("use_set")
    if SWITCHES.get("fail"):
        raise RuntimeError("use_set failed")
    return len(items)


def make_stage(label: str) -> fs.TrainingStageEntity:
    return fs.TrainingStageEntity(name=label, kind="rl", status="running")


def cancel(output: fs.TrainingStageEntity) -> fs.TrainingStageEntity:
    return output.evolve(status="cancelled")


def flaky_chain(name: str, base: int = 1) -> fs.Workflow:
    wf = fs.Workflow(name)
    s = wf.step(start, value=base)
    f = wf.step(flaky, x=s)
    wf.step(finish, x=f, base=s)
    return wf


# -- 7. resume after a real crash --------------------------------------------------------------


def test_crashed_run_resumes_from_its_last_completed_step(
    persistent_url: str, tmp_path: Path
) -> None:
    proc = run_crashing_child(persistent_url, "crashy", tmp_path / "crash.flag")
    assert proc.returncode == workflow_steps.CRASH_CODE, proc.stderr[-3000:]

    reg = fs.open(persistent_url, blob_dir=tmp_path / "blobs")
    try:
        run = only(reg.find(fs.WorkflowRunEntity, name="crashy"))
        # the crash left the run mid-way: seed committed with its output, double under way
        assert run.status == "running" and run.attempts == 1 and run.finished_at is None
        assert [s.name for s in run.steps] == ["seed", "double", "summarize"]
        seed_state = run.step("seed")
        assert seed_state.status == "completed" and seed_state.call is not None
        assert run.step("double").status in ("running", "pending")
        assert run.step("summarize").status == "pending"
        seed_output = thaw(seed_state.output)
        assert set(seed_output) == {"$ref"}
        lineage, _, version = seed_output["$ref"].partition("@")
        seeded = reg.get(lineage, int(version))
        assert isinstance(seeded, fs.ConfigEntity) and seeded.params == {"value": 21}
        assert only(reg.callables.records("wfsteps.seed")).ref == seed_state.call
        assert reg.callables.records("wfsteps.double") == []  # it never finished
        before = heads(reg)
        history_before = len(reg.history(run.lineage_id))

        # the code is not registered in this process yet: a clear error, nothing written
        with pytest.raises(fs.NotFoundError, match="wfsteps.seed"):
            fs.Workflow.resume(reg, run)
        assert heads(reg) == before

        specs = workflow_steps.register(reg)
        assert sorted(s.label for s in specs) == [
            "wfsteps.double@1",
            "wfsteps.seed@1",
            "wfsteps.summarize@1",
        ]  # the same code: the versions the child pinned
        result = fs.Workflow.resume(reg, run)
        assert result.ok and result.run.attempts == 2 and result.run.lineage_id == run.lineage_id
        # seed was not run again: one record, and its output is the very version it committed
        assert len(reg.callables.records("wfsteps.seed")) == 1
        assert result["seed"].id == seeded.id
        doubled = result["double"]
        assert (doubled.lineage_id, doubled.version) == (seeded.lineage_id, 2)
        assert doubled.params == {"value": 42} and seeded.ref in doubled.derived_from
        assert result["summarize"] == {
            "doubled": 42,
            "original": 21,
            "versions": [1, 2],
            "same_lineage": True,
        }
        assert [len(reg.callables.records(f"wfsteps.{n}")) for n in ("double", "summarize")] == [
            1,
            1,
        ]
        final = result.run
        assert [s.status for s in final.steps] == ["completed"] * 3
        assert final.step("seed").call == seed_state.call  # the child's record is kept
        assert final.calls[0] == seed_state.call and len(final.calls) == 3
        assert len(reg.history(run.lineage_id)) == history_before + 1 + 2 * 2 + 1
        starts = reg.events(topic=fs.WorkflowStarted, subject=run.lineage_id)
        assert [s.event.attempt for s in starts] == [1, 2]

        # resuming the completed run again returns it unchanged
        again = fs.Workflow.resume(reg, run.lineage_id)
        assert again.run.id == final.id and again["summarize"] == result["summarize"]
        assert again["double"].id == doubled.id
        assert len(reg.callables.records("wfsteps.double")) == 1
    finally:
        reg.close()


def _two_failed_runs(url: str) -> tuple[fs.WorkflowRunEntity, fs.WorkflowRunEntity]:
    """Two runs of one definition, both failed at ``flaky`` (pinned ``flaky@1``); then the code
    of ``flaky`` is hot-swapped (``flaky@2`` is stored) in the same process, and the first run
    is resumed there: it runs the version it pinned, not the current one."""
    reg = fs.open(url)
    try:
        SWITCHES["fail"] = True
        runs = [flaky_chain("swap").run(reg, raise_on_failure=False).run for _ in range(2)]
        assert [r.step("flaky").callable for r in runs] == ["flaky@1", "flaky@1"]
        SWITCHES["fail"] = False
        assert reg.callables.register(flaky_swapped, "flaky").version == 2
        result = fs.Workflow.resume(reg, runs[0])
        assert result["flaky"] == 20 and "flaky_swapped" not in CALLS
        assert reg.get(result.run.step("flaky").call).function_version == 1
        assert reg.callables.get("flaky").version == 2  # still the current version
        return runs[0], runs[1]
    finally:
        reg.close()


def test_resume_runs_the_pinned_version_and_needs_it_loaded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'swap.db'}"
    _, pending = _two_failed_runs(url)
    reg = fs.open(url)  # a new process, as it were, with only the new code of flaky
    try:
        reg.callables.register(start)
        reg.callables.register(finish)
        assert reg.callables.register(flaky_swapped, "flaky").version == 2
        before = heads(reg)
        with pytest.raises(fs.NotFoundError, match=r"flaky@1 is not loaded in this process"):
            fs.Workflow.resume(reg, pending.lineage_id)
        assert heads(reg) == before
        assert reg.get(pending.lineage_id).id == pending.id
    finally:
        reg.close()


def test_a_run_pinned_to_a_swapped_out_version_resumes_with_its_code(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'swap.db'}"
    _, pending = _two_failed_runs(url)
    reg = fs.open(url)  # a new process with the old code of flaky (the one the run pinned)
    try:
        reg.callables.register(start)
        reg.callables.register(finish)
        spec = reg.callables.register(flaky, "flaky")
        assert spec.version == 1, f"the pinned code registered as flaky@{spec.version}"
        result = fs.Workflow.resume(reg, pending.lineage_id)
        assert result["flaky"] == 20
    finally:
        reg.close()


# -- resume after a failed step ----------------------------------------------------------------


def test_failed_run_resumes_only_the_steps_that_did_not_complete(
    reg: fs.EntityRegistry,
) -> None:
    SWITCHES["fail"] = True
    with pytest.raises(fs.WorkflowFailedError) as info:
        flaky_chain("retry").run(reg)
    failed = info.value.result.run
    assert [s.status for s in failed.steps] == ["completed", "failed", "skipped"]
    assert CALLS == {"start": 1, "flaky": 1}
    SWITCHES["fail"] = False
    result = fs.Workflow.resume(reg, failed)
    assert result.ok and result.run.attempts == 2
    assert result.outputs == {"start": 2, "flaky": 20, "finish": {"x": 20, "base": 2}}
    assert CALLS == {"start": 1, "flaky": 2, "finish": 1}  # start was not run again
    assert result.run.failed_step is None and result.run.error is None
    assert [s.status for s in result.run.steps] == ["completed"] * 3
    assert [r.status for r in reg.callables.records("flaky")] == ["failed", "completed"]
    assert len(reg.callables.records("start")) == 1
    assert result.run.step("start").call == failed.step("start").call
    assert set(failed.calls) <= set(result.run.calls)
    attempts = [s.event.attempt for s in reg.events(topic=fs.WorkflowStarted)]
    assert attempts == [1, 2]


def test_a_compensated_run_cannot_be_resumed() -> None:
    reg = fs.open("memory://")
    try:
        wf = fs.Workflow("rolled-back")
        stage = wf.step(make_stage, label="s", on_failure=cancel)
        wf.step(flaky, x=1, after=[stage])
        SWITCHES["fail"] = True
        failed = wf.run(reg, raise_on_failure=False)
        assert failed.run.step("make_stage").status == "compensated"
        before = heads(reg)
        SWITCHES["fail"] = False
        with pytest.raises(fs.ValidationError, match="rolled back"):
            fs.Workflow.resume(reg, failed.run)
        assert heads(reg) == before and CALLS == {"flaky": 1}
    finally:
        reg.close()


def test_a_non_json_output_cannot_feed_a_resumed_step() -> None:
    reg = fs.open("memory://")
    try:
        wf = fs.Workflow("sets")
        s = wf.step(make_set, n=3)
        wf.step(use_set, items=s)
        SWITCHES["fail"] = True
        failed = wf.run(reg, raise_on_failure=False)
        assert failed["make_set"] == {0, 1, 2}  # in memory during the first attempt
        assert set(thaw(failed.run.step("make_set").output)) == {"$repr"}
        SWITCHES["fail"] = False
        with pytest.raises(fs.WorkflowFailedError) as info:
            fs.Workflow.resume(reg, failed.run)
        cause = info.value.__cause__
        assert isinstance(cause, fs.NotFoundError) and "not JSON" in str(cause)
        assert info.value.step == "use_set" and CALLS == {"make_set": 1, "use_set": 1}
    finally:
        reg.close()


def test_resume_runs_the_definition_the_run_pinned() -> None:
    reg = fs.open("memory://")
    try:
        SWITCHES["fail"] = True
        old = flaky_chain("pinned", base=1).run(reg, raise_on_failure=False)
        SWITCHES["fail"] = False
        new = flaky_chain("pinned", base=5).run(reg)  # a changed definition, same name
        assert new.run.workflow.version == old.run.workflow.version + 1
        assert new["finish"] == {"x": 60, "base": 6}
        resumed = fs.Workflow.resume(reg, old.run)
        assert resumed.run.workflow == old.run.workflow
        assert resumed["finish"] == {"x": 20, "base": 2}
        definition = reg.get(old.run.workflow)
        assert isinstance(definition, WorkflowEntity)
        assert thaw(definition.spec)["steps"][0]["args"] == {"value": 1}
    finally:
        reg.close()


def test_resume_accepts_an_id_a_ref_or_an_old_version_and_loads_the_head() -> None:
    reg = fs.open("memory://")
    try:
        done = flaky_chain("handles").run(reg)
        first_version = reg.history(done.run.lineage_id)[0]
        assert first_version.status == "running"
        for handle in (
            done.run,
            done.run.lineage_id,
            str(done.run.lineage_id),
            done.run.ref,
            first_version,  # a stale version: the head is what resumes
            first_version.ref,
        ):
            again = fs.Workflow.resume(reg, handle)
            assert again.run.id == done.run.id and again.outputs == done.outputs
        assert CALLS == {"start": 1, "flaky": 1, "finish": 1}
        with pytest.raises(fs.ValidationError, match="not a workflow run"):
            fs.Workflow.resume(reg, reg.get(done.run.workflow))
    finally:
        reg.close()


@pytest.mark.anyio
async def test_aresume_continues_a_failed_run() -> None:
    areg = await fs.aopen("memory://")
    try:
        SWITCHES["fail"] = True
        failed = await flaky_chain("async-retry").arun(areg, raise_on_failure=False)
        assert failed.status == "failed"
        SWITCHES["fail"] = False
        result = await fs.Workflow.aresume(areg, failed.run.ref)
        assert result.ok and result.run.attempts == 2 and result["finish"]["x"] == 20
        assert CALLS["start"] == 1
    finally:
        await areg.close()


# -- two resumes racing for one run ------------------------------------------------------------


def _race(reg: fs.EntityRegistry) -> tuple[Any, Any, fs.WorkflowRunEntity]:
    """Resume a failed run twice at once: the first resume ("slow") blocks inside its flaky step
    until the second ("fast") has driven the run to completion. Returns both outcomes."""
    SWITCHES["fail"] = True
    failed = flaky_chain("race").run(reg, raise_on_failure=False)
    SWITCHES["fail"] = False
    SWITCHES["block"] = 2  # the slow resume's call of flaky (the first attempt's was call 1)
    GATES["entered"], GATES["release"] = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def slow() -> None:
        try:
            outcome["slow"] = fs.Workflow.resume(reg, failed.run)
        except BaseException as exc:  # noqa: BLE001 - the outcome is what the test checks
            outcome["slow"] = exc

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        assert GATES["entered"].wait(WAIT)  # slow is inside flaky, holding a stale head
        try:
            outcome["fast"] = fs.Workflow.resume(reg, failed.run)
        except BaseException as exc:  # noqa: BLE001
            outcome["fast"] = exc
    finally:
        GATES["release"].set()
        thread.join(WAIT)
    assert not thread.is_alive()
    return outcome["slow"], outcome["fast"], failed.run


def _conflict_inside(exc: BaseException) -> bool:
    seen: list[BaseException] = [exc]
    while seen:
        e = seen.pop()
        if isinstance(e, fs.ConflictError):
            return True
        seen.extend(getattr(e, "exceptions", ()))
        if e.__cause__ is not None:
            seen.append(e.__cause__)
    return False


def test_racing_resumes_one_drives_the_run_and_the_stale_one_writes_nothing() -> None:
    reg = fs.open("memory://")
    try:
        slow, fast, failed = _race(reg)
        # the resume that started second drove the run to the end
        assert isinstance(fast, fs.WorkflowResult) and fast.ok
        assert fast.outputs == {"start": 2, "flaky": 20, "finish": {"x": 20, "base": 2}}
        # the stale one lost: its writes conflicted, nothing it computed was committed
        assert isinstance(slow, BaseException) and _conflict_inside(slow)
        head = reg.get(failed.lineage_id)
        assert head.id == fast.run.id and head.status == "completed"
        assert [s.status for s in head.steps] == ["completed"] * 3
        assert head.attempts == 3  # both resumes started (2, then 3); only 3 finished
        assert CALLS["flaky"] == 3 and CALLS["start"] == 1  # first run, slow, fast
        completed = reg.callables.records("flaky", status="completed")
        assert only(completed).ref == head.step("flaky").call
        for ref in head.calls:
            assert isinstance(reg.get(ref), fs.CallRecord)
        history = reg.history(failed.lineage_id)
        assert history[-1].id == head.id
        assert [h.version for h in history] == list(range(1, len(history) + 1))
    finally:
        reg.close()


def test_a_resume_that_loses_the_race_raises_a_conflict() -> None:
    reg = fs.open("memory://")
    try:
        slow, _fast, _ = _race(reg)
        assert isinstance(slow, fs.ConflictError | fs.WorkflowFailedError), repr(slow)
        if isinstance(slow, fs.WorkflowFailedError):
            assert isinstance(slow.__cause__, fs.ConflictError)
    finally:
        reg.close()
