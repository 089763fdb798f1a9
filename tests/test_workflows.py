"""Workflows: DAGs of registered callables run in dependency order, concurrently, with
compensation on failure and a persisted, per-step :class:`WorkflowRunEntity`.

The core semantics (data flow, provenance, compensation, persisted state, events) run on every
backend (memory, SQLite, PostgreSQL) through the ``reg`` fixture; the rest on memory. Crash and
resume are in ``test_workflows_resume.py``. Concurrency is proven with barriers (a step pair
that can only finish if both run at once), never with sleeps.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import pytest
from pydantic import Field

import forseti as fs
from forseti.entities import JSONMap, Name, entity_types, thaw
from forseti.workflows import StepState, WorkflowEntity

WAIT = 10  # seconds a barrier / event waits before the test fails instead of hanging
SHORT = 1.0  # seconds a barrier waits where the test expects it NOT to be met


# -- module-level types and shared state (annotations of step functions resolve here) ----------


class Scores(fs.Entity):
    entity_type: ClassVar[str] = "tests.workflows.Scores"

    name: Name
    values: tuple[int, ...] = ()
    meta: JSONMap = Field(default_factory=dict)


class StepBoom(Exception):
    """A step's failure."""


class Trace:
    """A thread-safe log of what step functions did, in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[Any, ...]] = []

    def add(self, *item: Any) -> None:
        with self.lock:
            self.items.append(item)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        with self.lock:
            return [i[1:] for i in self.items if i[0] == kind]


TRACE = Trace()
BARRIERS: dict[str, threading.Barrier] = {}
GATES: dict[str, threading.Event] = {}
ASYNC_EVENTS: dict[str, anyio.Event] = {}
IN_FLIGHT = {"now": 0, "max": 0}
THREADS: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    TRACE.items.clear()
    BARRIERS.clear()
    GATES.clear()
    ASYNC_EVENTS.clear()
    IN_FLIGHT.update(now=0, max=0)
    THREADS.clear()
    yield
    for gate in GATES.values():
        gate.set()  # never leave a worker thread blocked behind a failed test
    for barrier in BARRIERS.values():
        barrier.abort()


@pytest.fixture
def mreg() -> Iterator[fs.EntityRegistry]:
    """A memory registry (for the tests whose subject is not the backend)."""
    registry = fs.open("memory://")
    yield registry
    registry.close()


# -- step functions ----------------------------------------------------------------------------


def make_model(label: str, size: int) -> fs.ModelEntity:
    TRACE.add("run", "make_model", label)
    return fs.ModelEntity(name=label, hidden_size=size)


def grow(m: fs.ModelEntity, by: int) -> fs.ModelEntity:
    TRACE.add("run", "grow", m.ref)
    return m.evolve(hidden_size=m.hidden_size + by)


def scores_of(m: fs.ModelEntity, n: int) -> Scores:
    TRACE.add("run", "scores_of", m.ref)
    size = m.hidden_size or 0
    return Scores(
        name=f"{m.name}-scores",
        values=tuple(range(size, size + n)),
        meta={"nested": {"k": [10, 20, 30]}, "size": size},
    )


def join(base: fs.ModelEntity, grown: fs.ModelEntity, scores: Scores) -> dict[str, Any]:
    TRACE.add("run", "join", base.ref, grown.ref, scores.ref)
    return {
        "versions": [base.version, grown.version],
        "same_lineage": base.lineage_id == grown.lineage_id,
        "sizes": [base.hidden_size, grown.hidden_size],
        "scores": scores,
        "model": grown,
    }


def gather(
    total: int,
    first: int,
    deep: int,
    models: list[fs.ModelEntity],
    named: dict[str, Any],
    size: int,
    via_ref: int,
) -> dict[str, Any]:
    return {
        "total": total,
        "first": first,
        "deep": deep,
        "models": [[str(m.lineage_id), m.version] for m in models],
        "named": {
            "grown": [str(named["grown"].lineage_id), named["grown"].version],
            "n": named["n"],
        },
        "size": size,
        "via_ref": via_ref,
    }


def tokenize(ds: fs.DatasetEntity) -> fs.DatasetEntity:
    return fs.DatasetEntity(name=f"{ds.name}-tok", num_examples=ds.num_examples)


def train(data: fs.DatasetEntity, lr: float) -> fs.TrainingRunEntity:
    return fs.TrainingRunEntity(
        name="run", algorithm="sft", dataset=data.ref, status="completed", metrics={"lr": lr}
    )


def export(run: fs.TrainingRunEntity) -> fs.ModelEntity:
    return fs.ModelEntity(name="final", hyperparameters={"lr": run.metrics["lr"]})


def traced(label: str, deps: list[str]) -> str:
    TRACE.add("start", label)
    TRACE.add("end", label)
    return label


async def atraced(label: str, deps: list[str]) -> str:
    TRACE.add("start", label)
    await anyio.lowlevel.checkpoint()  # let other steps run in between
    await anyio.lowlevel.checkpoint()
    TRACE.add("end", label)
    return label


def _async_event(key: str) -> anyio.Event:
    return ASYNC_EVENTS.setdefault(key, anyio.Event())


async def async_rendezvous(me: str, other: str, timeout: float) -> str:
    """Finishes only if the step named ``other`` runs at the same time."""
    THREADS[me] = threading.get_ident()
    with anyio.fail_after(timeout):
        _async_event(me).set()
        await _async_event(other).wait()
    return me


def sync_rendezvous(key: str, me: str) -> str:
    """Finishes only if another step waits at barrier ``key`` at the same time."""
    THREADS[me] = threading.get_ident()
    TRACE.add("in", me)
    BARRIERS[key].wait()
    return me


def bounded(key: str, me: str) -> str:
    with TRACE.lock:
        IN_FLIGHT["now"] += 1
        IN_FLIGHT["max"] = max(IN_FLIGHT["max"], IN_FLIGHT["now"])
    try:
        BARRIERS[key].wait()
    finally:
        with TRACE.lock:
            IN_FLIGHT["now"] -= 1
    return me


def open_stage(label: str, order: int) -> fs.TrainingStageEntity:
    TRACE.add("run", label)
    return fs.TrainingStageEntity(name=label, kind="sft", order=order, status="running")


def cancel_stage(output: fs.TrainingStageEntity, label: str, order: int) -> fs.TrainingStageEntity:
    TRACE.add("compensate", label, output.version, order)
    return output.evolve(status="cancelled")


def broken_rollback(output: fs.TrainingStageEntity) -> None:
    TRACE.add("compensate", output.name, output.version, None)
    raise RuntimeError(f"rollback of {output.name} failed")


def plain(label: str) -> str:
    TRACE.add("run", label)
    return label


def explode(stage: fs.TrainingStageEntity) -> int:
    TRACE.add("run", "explode")
    raise StepBoom(f"stage {stage.name} exploded")


def fail_now(label: str) -> int:
    TRACE.add("run", "fail_now")
    raise StepBoom(f"{label} failed at once")


def never(x: int) -> int:
    TRACE.add("run", "never")
    return x


def wait_for_gate(key: str) -> fs.ConfigEntity:
    TRACE.add("run", "wait_for_gate")
    assert GATES[key].wait(WAIT)
    return fs.ConfigEntity(name="in-flight")


async def open_gate_and_fail(key: str) -> int:
    TRACE.add("run", "open_gate_and_fail")
    GATES[key].set()
    raise StepBoom("failed while another step was in flight")


def drop_config(output: fs.ConfigEntity) -> fs.ConfigEntity:
    TRACE.add("compensate", output.name)
    return output.evolve(params={"dropped": True})


def needs_extra(output: Any, extra: int) -> None:  # an on_failure that cannot be satisfied
    return None


async def aseed(label: str, value: int) -> fs.ConfigEntity:
    THREADS["aseed"] = threading.get_ident()
    await anyio.lowlevel.checkpoint()
    return fs.ConfigEntity(name=label, params={"value": value})


def sync_add(cfg: fs.ConfigEntity, by: int) -> fs.ConfigEntity:
    THREADS["sync_add"] = threading.get_ident()
    return cfg.evolve(params={"value": cfg.params["value"] + by})


async def aread(cfg: fs.ConfigEntity) -> int:
    THREADS["aread"] = threading.get_ident()
    await anyio.lowlevel.checkpoint()
    return int(cfg.params["value"])


STEP_FUNCTIONS: list[Callable[..., Any]] = [
    make_model, grow, scores_of, join, gather, tokenize, train, export, traced, atraced,
    async_rendezvous, sync_rendezvous, bounded, open_stage, cancel_stage, broken_rollback, plain,
    explode, fail_now, never, wait_for_gate, open_gate_and_fail, drop_config, needs_extra, aseed, sync_add,
    aread,
]  # fmt: skip


def register_all(reg: fs.EntityRegistry) -> None:
    for fn in STEP_FUNCTIONS:
        reg.callables.register(fn)


def heads(reg: fs.EntityRegistry) -> list[tuple[Any, int, Any]]:
    """Every lineage head in the store (type, version, id): equal before and after means
    nothing was written."""
    return sorted(
        (str(r.lineage_id), r.version, str(r.id))
        for r in reg.store.find_heads(sorted(entity_types()))
    )


def ref_json(entity: fs.Entity) -> dict[str, str]:
    return {"$ref": f"{entity.lineage_id}@{entity.version}"}


def only(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


# -- 1. DAG and data flow ----------------------------------------------------------------------


def diamond(name: str = "diamond") -> fs.Workflow:
    """a -> (b, c) -> d: b evolves a's model, c derives Scores from it, d reads all three."""
    wf = fs.Workflow(name)
    a = wf.step(make_model, name="a", label="m", size=8)
    b = wf.step(grow, name="b", m=a, by=1)
    c = wf.step(scores_of, name="c", m=a, n=3)
    wf.step(join, name="d", base=a, grown=b, scores=c)
    return wf


def test_diamond_data_flows_as_the_exact_committed_versions(reg: fs.EntityRegistry) -> None:
    wf = diamond()
    assert [s.depends for s in wf.steps] == [(), ("a",), ("a",), ("a", "b", "c")]
    result = wf.run(reg)
    assert result.ok and result.status == "completed"
    a, b, c, d = (result[n] for n in "abcd")
    # a's model v1, b its next version (same lineage), c a new lineage derived from a v1
    assert (a.version, a.hidden_size) == (1, 8)
    assert (b.lineage_id, b.version, b.hidden_size) == (a.lineage_id, 2, 9)
    assert b.derived_from == (a.ref,)
    assert c.values == (8, 9, 10) and c.derived_from == (a.ref,)
    # d got a at v1 although the lineage's head had moved to v2 before d ran
    assert reg.get(a.lineage_id).version == 2
    assert d["versions"] == [1, 2] and d["same_lineage"] is True and d["sizes"] == [8, 9]
    assert d["scores"].id == c.id and d["model"].id == b.id
    # what each function was given: the stored versions
    assert only(TRACE.of("run")[1:2]) in {("grow", a.ref), ("scores_of", a.ref)}
    assert ("join", a.ref, b.ref, c.ref) in TRACE.of("run")
    for entity in (a, b, c):
        assert reg.get(entity.ref).id == entity.id
    # the run: every step completed, outputs stored as JSON ($ref for entities)
    run = result.run
    assert run.status == "completed" and run.failed_step is None and run.error is None
    assert run.attempts == 1 and run.started_at is not None and run.finished_at is not None
    assert [s.status for s in run.steps] == ["completed"] * 4
    assert [s.callable for s in run.steps] == ["make_model@1", "grow@1", "scores_of@1", "join@1"]
    assert [thaw(run.step(n).output) for n in "abc"] == [ref_json(a), ref_json(b), ref_json(c)]
    assert thaw(run.step("d").output) == {
        "versions": [1, 2],
        "same_lineage": True,
        "sizes": [8, 9],
        "scores": ref_json(c),
        "model": ref_json(b),
    }
    assert reg.get(run.lineage_id).id == run.id  # the result's run is the stored head


def test_step_output_paths_lists_and_dicts_of_steps(mreg: fs.EntityRegistry) -> None:
    wf = diamond("paths")
    a, b, c, d = (wf[n] for n in "abcd")
    e = wf.step(
        gather,
        name="e",
        total=d["sizes"][1],  # dict key, then list index
        first=c["values"][0],  # entity field, then tuple index
        deep=c["meta"]["nested"]["k"][2],  # field, keys, index
        models=[a, b],  # a list of steps as one argument
        named={"grown": b, "n": 3},  # a dict holding a step
        size=d["model"]["hidden_size"],  # dict key holding an entity, then its field
        via_ref=c["derived_from"][0]["hidden_size"],  # a ref on the way is followed
    )
    assert set(e.depends) == {"a", "b", "c", "d"}
    result = wf.run(mreg)
    ma, mb = result["a"], result["b"]
    assert result["e"] == {
        "total": 9,
        "first": 8,
        "deep": 30,
        "models": [[str(ma.lineage_id), 1], [str(mb.lineage_id), 2]],
        "named": {"grown": [str(mb.lineage_id), 2], "n": 3},
        "size": 9,
        "via_ref": 8,
    }
    # the stored spec keeps the references as data
    spec = thaw(mreg.get(result.run.workflow).spec)
    args = next(s for s in spec["steps"] if s["name"] == "e")["args"]
    assert args["deep"] == {"$step": "c", "path": ["meta", "nested", "k", 2]}
    assert args["models"] == [{"$step": "a", "path": []}, {"$step": "b", "path": []}]
    assert args["named"] == {"grown": {"$step": "b", "path": []}, "n": 3}
    # the entities gather read are its call's inputs
    record = mreg.get(result.run.step("e").call)
    assert isinstance(record, fs.CallRecord)
    assert {ma.ref, mb.ref} <= set(record.inputs)


def test_a_bad_output_path_fails_the_step_clearly(mreg: fs.EntityRegistry) -> None:
    wf = fs.Workflow("badpath")
    a = wf.step(make_model, name="a", label="m", size=8)
    wf.step(never, name="b", x=a["no_such_field"])
    with pytest.raises(fs.WorkflowFailedError) as info:
        wf.run(mreg)
    assert info.value.step == "b"
    assert isinstance(info.value.__cause__, fs.NotFoundError)
    assert "no_such_field" in str(info.value.__cause__)
    assert ("never",) not in [i[:1] for i in TRACE.of("run")]


def test_provenance_runs_from_the_first_inputs_to_the_last_output(reg: fs.EntityRegistry) -> None:
    ds = reg.add(fs.DatasetEntity(name="ds", num_examples=100))
    wf = fs.Workflow("pipeline")
    tok = wf.step(tokenize, ds=ds)
    run_step = wf.step(train, data=tok, lr=0.5)
    wf.step(export, run=run_step)
    assert [s.name for s in wf.steps] == ["tokenize", "train", "export"]  # default names
    result = wf.run(reg)
    tokenized, trained, final = result["tokenize"], result["train"], result["export"]
    ancestors = reg.ancestors(final)
    assert {trained.ref, tokenized.ref, ds.ref} <= set(ancestors)
    assert final.ref in reg.descendants(ds)
    assert final.hyperparameters == {"lr": 0.5} and trained.dataset == tokenized.ref
    # one CallRecord per step, referenced by the run and by each step's state
    run = result.run
    states = [run.step(n) for n in ("tokenize", "train", "export")]
    assert run.calls == tuple(s.call for s in states)  # a chain: completion order
    records = [reg.get(s.call) for s in states]
    assert all(isinstance(r, fs.CallRecord) for r in records)
    assert [(r.name, r.function_version, r.status) for r in records] == [
        ("tokenize", 1, "completed"),
        ("train", 1, "completed"),
        ("export", 1, "completed"),
    ]
    assert [r.inputs for r in records] == [(ds.ref,), (tokenized.ref,), (trained.ref,)]
    assert [r.outputs for r in records] == [(tokenized.ref,), (trained.ref,), (final.ref,)]
    assert records[1].arguments["lr"] == 0.5
    assert [len(reg.callables.records(n)) for n in ("tokenize", "train", "export")] == [1, 1, 1]


# -- 2. dependency order -----------------------------------------------------------------------


def test_each_step_starts_only_after_all_its_dependencies_finished(
    mreg: fs.EntityRegistry,
) -> None:
    wf = fs.Workflow("order")
    a = wf.step(traced, name="a", label="a", deps=[])
    b = wf.step(atraced, name="b", label="b", deps=[a])
    c = wf.step(traced, name="c", label="c", deps=[a])
    d = wf.step(atraced, name="d", label="d", deps=[b, c])
    e = wf.step(traced, name="e", label="e", deps=[], after=[a])
    f = wf.step(atraced, name="f", label="f", deps=[d], after=[e])
    g = wf.step(traced, name="g", label="g", deps=[])
    wf.step(atraced, name="h", label="h", deps=[g, f], after=["c"])
    expected = {
        "a": set(), "b": {"a"}, "c": {"a"}, "d": {"b", "c"}, "e": {"a"},
        "f": {"d", "e"}, "g": set(), "h": {"g", "f", "c"},
    }  # fmt: skip
    assert {s.name: set(s.depends) for s in wf.steps} == expected
    result = wf.run(mreg)
    # data dependencies delivered their outputs
    assert result["d"] == "d" and result["h"] == "h"
    events = list(TRACE.items)
    starts = [i[1] for i in events if i[0] == "start"]
    assert sorted(starts) == sorted(expected)  # each step ran exactly once
    position = {(kind, label): i for i, (kind, label) in enumerate(events)}
    for step, deps in expected.items():
        for dep in deps:
            assert position[("end", dep)] < position[("start", step)], (dep, step, events)
    # the run's own record of completion agrees: a dependency's CallRecord is older
    calls = list(result.run.calls)
    for step, deps in expected.items():
        for dep in deps:
            assert calls.index(result.run.step(dep).call) < calls.index(result.run.step(step).call)


# -- 3. concurrency ----------------------------------------------------------------------------


def test_independent_async_steps_run_concurrently(mreg: fs.EntityRegistry) -> None:
    wf = fs.Workflow("async-pair")
    wf.step(async_rendezvous, name="left", me="left", other="right", timeout=WAIT)
    wf.step(async_rendezvous, name="right", me="right", other="left", timeout=WAIT)
    result = wf.run(mreg)  # each waits for the other: it finishes only if both run at once
    assert result.outputs == {"left": "left", "right": "right"}
    assert THREADS["left"] == THREADS["right"]  # on one event loop


def test_independent_sync_steps_run_concurrently_on_worker_threads(
    reg: fs.EntityRegistry,
) -> None:
    BARRIERS["pair"] = threading.Barrier(2, timeout=WAIT)
    wf = fs.Workflow("sync-pair")
    wf.step(sync_rendezvous, name="left", key="pair", me="left")
    wf.step(sync_rendezvous, name="right", key="pair", me="right")
    result = wf.run(reg)
    assert result.ok and result.outputs == {"left": "left", "right": "right"}
    assert THREADS["left"] != THREADS["right"]


def test_max_concurrency_one_runs_one_sync_step_at_a_time(mreg: fs.EntityRegistry) -> None:
    BARRIERS["pair"] = threading.Barrier(2, timeout=SHORT)
    wf = fs.Workflow("serial", max_concurrency=1)
    wf.step(sync_rendezvous, name="left", key="pair", me="left")
    wf.step(sync_rendezvous, name="right", key="pair", me="right")
    with pytest.raises(fs.WorkflowFailedError) as info:
        wf.run(mreg)
    # the first step waited alone at the barrier until it broke; the second never started
    assert isinstance(info.value.__cause__, threading.BrokenBarrierError)
    assert info.value.step == "left"
    assert TRACE.of("in") == [("left",)]
    run = info.value.result.run
    assert [(s.name, s.status) for s in run.steps] == [("left", "failed"), ("right", "skipped")]
    assert run.status == "failed" and run.failed_step == "left"
    assert "BrokenBarrierError" in (run.error or "")


def test_max_concurrency_one_runs_one_async_step_at_a_time(mreg: fs.EntityRegistry) -> None:
    wf = fs.Workflow("aserial", max_concurrency=1)
    wf.step(async_rendezvous, name="left", me="left", other="right", timeout=SHORT)
    wf.step(async_rendezvous, name="right", me="right", other="left", timeout=SHORT)
    result = wf.run(mreg, raise_on_failure=False)
    assert result.status == "failed" and not result.ok
    assert result.run.failed_step == "left"
    assert result.run.step("left").error.startswith("TimeoutError")  # type: ignore[union-attr]
    assert result.run.step("right").status == "skipped" and "right" not in THREADS


def test_max_concurrency_bounds_the_steps_in_flight(mreg: fs.EntityRegistry) -> None:
    BARRIERS["pairs"] = threading.Barrier(2, timeout=WAIT)
    wf = fs.Workflow("bounded", max_concurrency=2)
    for i in range(4):
        wf.step(bounded, name=f"s{i}", key="pairs", me=f"s{i}")
    result = wf.run(mreg)
    assert result.ok and len(result.outputs) == 4
    assert IN_FLIGHT["max"] == 2  # two at once (the barrier needs it), never more


# -- 4. failure and compensation ---------------------------------------------------------------


def failing_stages(name: str = "stages") -> fs.Workflow:
    """a -> b -> c (stages, each with a rollback; b's rollback fails), an independent step,
    then a step that raises and two steps that depend on it."""
    wf = fs.Workflow(name)
    a = wf.step(open_stage, name="a", label="A", order=0, on_failure=cancel_stage)
    b = wf.step(open_stage, name="b", label="B", order=1, after=[a], on_failure=broken_rollback)
    c = wf.step(open_stage, name="c", label="C", order=2, after=[b], on_failure="cancel_stage")
    indep = wf.step(plain, name="indep", label="I")
    boom = wf.step(explode, name="boom", stage=c, after=[indep])
    later = wf.step(never, name="later", x=boom)
    wf.step(plain, name="last", label="L", after=[later])
    return wf


def test_failure_compensates_completed_steps_newest_first(reg: fs.EntityRegistry) -> None:
    register_all(reg)
    with pytest.raises(fs.WorkflowFailedError) as info:
        failing_stages().run(reg)
    exc = info.value
    # the step's exception is the cause; the error names the step and what was compensated
    assert exc.step == "boom"
    assert type(exc.__cause__) is StepBoom and str(exc.__cause__) == "stage C exploded"
    assert "'boom'" in str(exc) and "compensated: c, a" in str(exc)
    result = exc.result
    run = result.run
    assert not result.ok and run.status == "failed" and run.failed_step == "boom"
    assert run.error == "StepBoom: stage C exploded" and run.finished_at is not None
    # compensations ran newest first, each given the step's output and its own arguments
    assert TRACE.of("compensate") == [("C", 1, 2), ("B", 1, None), ("A", 1, 0)]
    assert [i[0] for i in TRACE.of("run")].count("never") == 0
    assert ("L",) not in TRACE.of("run")
    statuses = {s.name: s.status for s in run.steps}
    assert statuses == {
        "a": "compensated",
        "b": "compensation_failed",
        "c": "compensated",
        "indep": "completed",  # completed, with nothing to undo
        "boom": "failed",
        "later": "skipped",
        "last": "skipped",
    }
    assert run.step("b").error == "RuntimeError: rollback of B failed"
    assert run.step("boom").error == "StepBoom: stage C exploded"
    assert run.step("later").call is None and run.step("last").call is None
    # the rollbacks committed the stages' next versions, with their call records
    for name, label in (("a", "A"), ("c", "C")):
        original = result[name]
        assert (original.name, original.version, original.status) == (label, 1, "running")
        head = reg.get(original.lineage_id)
        assert (head.version, head.status) == (2, "cancelled")
        assert original.ref in head.derived_from
        record = reg.get(run.step(name).compensation)
        assert isinstance(record, fs.CallRecord)
        assert (record.name, record.status) == ("cancel_stage", "completed")
        assert record.outputs == (head.ref,) and original.ref in record.inputs
        assert record.arguments["label"] == label
        assert record.ref in run.calls
    b_stage = result["b"]
    assert reg.get(b_stage.lineage_id).version == 1  # its rollback failed: nothing committed
    b_record = reg.get(run.step("b").compensation)
    assert (b_record.name, b_record.status) == ("broken_rollback", "failed")
    assert "rollback of B failed" in (b_record.error or "")
    # the failed step's record
    boom_record = reg.get(run.step("boom").call)
    assert (boom_record.name, boom_record.status) == ("explode", "failed")
    assert "exploded" in (boom_record.error or "")
    assert only(reg.callables.records("explode")).status == "failed"
    assert len(reg.callables.records("cancel_stage")) == 2
    # skipped steps have no output
    with pytest.raises(KeyError, match="skipped"):
        result["later"]
    # the failure event: persisted, about the final version, naming what was compensated
    assert reg.get(run.lineage_id).id == run.id
    failed = only([e.event for e in reg.events(topic=fs.WorkflowFailed)])
    assert failed.subject == run.ref
    assert (failed.workflow, failed.step, failed.compensated) == ("stages", "boom", ("c", "a"))
    assert "exploded" in failed.error
    assert reg.events(topic=fs.WorkflowCompleted) == []


def test_raise_on_failure_false_returns_the_failed_result(mreg: fs.EntityRegistry) -> None:
    register_all(mreg)  # failing_stages names cancel_stage by its registered name
    result = failing_stages().run(mreg, raise_on_failure=False)
    assert result.status == "failed" and not result.ok
    assert result.run.failed_step == "boom"
    assert [c[0] for c in TRACE.of("compensate")] == ["C", "B", "A"]
    assert set(result.outputs) == {"a", "b", "c", "indep"}
    assert result["indep"] == "I"


def test_a_step_in_flight_when_another_fails_completes_and_is_compensated(
    mreg: fs.EntityRegistry,
) -> None:
    GATES["go"] = threading.Event()
    wf = fs.Workflow("inflight")
    wf.step(wait_for_gate, name="slow", key="go", on_failure=drop_config)
    wf.step(open_gate_and_fail, name="fails", key="go")
    with pytest.raises(fs.WorkflowFailedError) as info:
        wf.run(mreg)
    run = info.value.result.run
    assert info.value.step == "fails" and isinstance(info.value.__cause__, StepBoom)
    assert run.step("slow").status == "compensated" and run.step("fails").status == "failed"
    config = info.value.result["slow"]
    assert mreg.get(config.lineage_id).params == {"dropped": True}
    assert TRACE.of("compensate") == [("in-flight",)]


def test_steps_not_started_when_a_step_fails_are_skipped(mreg: fs.EntityRegistry) -> None:
    wf = fs.Workflow("queue", max_concurrency=1)
    wf.step(fail_now, name="boom", label="B")  # added first: it takes the only slot first
    for i in range(3):
        wf.step(plain, name=f"queued{i}", label=f"Q{i}")  # independent, waiting for a slot
    result = wf.run(mreg, raise_on_failure=False)
    assert result.run.failed_step == "boom"
    ran = [i[1] for i in TRACE.items if i[0] == "run"]
    assert ran[-1] == "fail_now"  # nothing started after the failure
    for i in range(3):
        state = result.run.step(f"queued{i}")
        assert state.status == ("completed" if f"Q{i}" in ran else "skipped")
        assert (state.call is None) == (state.status == "skipped")
    assert ran == ["fail_now"]  # the slot went to the failing step first


# -- 5. validation before anything is written --------------------------------------------------


def _no_such(wf: fs.Workflow) -> None:
    wf.step("no.such.function", name="x", value=1)


def _unknown_version(wf: fs.Workflow) -> None:
    wf.step("make_model@99", name="x", label="m", size=1)


def _unknown_argument(wf: fs.Workflow) -> None:
    a = wf.step(make_model, name="a", label="m", size=1)
    wf.step(grow, name="b", m=a, by=1, typo=2)


def _missing_argument(wf: fs.Workflow) -> None:
    a = wf.step(make_model, name="a", label="m", size=1)
    wf.step(grow, name="b", m=a)


def _unsatisfiable_on_failure(wf: fs.Workflow) -> None:
    wf.step(make_model, name="a", label="m", size=1, on_failure=needs_extra)


def _unknown_on_failure(wf: fs.Workflow) -> None:
    wf.step(make_model, name="a", label="m", size=1, on_failure="no.such.rollback")


def _object_constant(wf: fs.Workflow) -> None:
    a = wf.step(make_model, name="a", label="m", size=1)
    wf.step(gather, name="b", total=1, first=1, deep=1, models=[a], named={"o": object()},
            size=1, via_ref=1)  # fmt: skip


def _reserved_key(wf: fs.Workflow) -> None:
    wf.step(plain, name="a", label={"$ref": "not-a-ref"})


def _empty(wf: fs.Workflow) -> None:
    pass


INVALID_AT_RUN = [
    (_no_such, fs.NotFoundError, "no.such.function"),
    (_unknown_version, fs.NotFoundError, "make_model@99"),
    (_unknown_argument, fs.ValidationError, "typo"),
    (_missing_argument, fs.ValidationError, "by"),
    (_unsatisfiable_on_failure, fs.ValidationError, "extra"),
    (_unknown_on_failure, fs.NotFoundError, "no.such.rollback"),
    (_object_constant, fs.ValidationError, "object"),
    (_reserved_key, fs.ValidationError, "reserved"),
    (_empty, fs.ValidationError, "no steps"),
]


@pytest.mark.parametrize(
    ("build", "error", "mentions"), INVALID_AT_RUN, ids=[c[0].__name__ for c in INVALID_AT_RUN]
)
def test_invalid_workflows_fail_before_anything_runs_or_is_written(
    mreg: fs.EntityRegistry, build: Callable[[fs.Workflow], None], error: type, mentions: str
) -> None:
    register_all(mreg)
    before, events_before = heads(mreg), len(mreg.events())
    wf = fs.Workflow("invalid")
    build(wf)
    with pytest.raises(error, match=None) as info:
        wf.run(mreg)
    assert not isinstance(info.value, fs.WorkflowFailedError)
    assert mentions in str(info.value)
    assert heads(mreg) == before and len(mreg.events()) == events_before
    assert TRACE.items == []  # no step function ran
    assert mreg.find(fs.WorkflowRunEntity) == [] and mreg.find(WorkflowEntity) == []


def test_invalid_workflow_changes_nothing_on_every_backend(reg: fs.EntityRegistry) -> None:
    register_all(reg)
    before = heads(reg)
    for build in (_unknown_argument, _unsatisfiable_on_failure, _object_constant):
        wf = fs.Workflow("invalid")
        build(wf)
        with pytest.raises(fs.ValidationError):
            wf.run(reg)
    assert heads(reg) == before and TRACE.items == []


def test_invalid_workflow_with_unregistered_functions_writes_nothing(
    mreg: fs.EntityRegistry,
) -> None:
    """Functions given as objects are registered only once every step passed its checks."""
    before = heads(mreg)
    wf = fs.Workflow("invalid")
    a = wf.step(make_model, name="a", label="m", size=1)  # not registered yet
    wf.step(grow, name="b", m=a, by=1, typo=2)
    with pytest.raises(fs.ValidationError, match="typo"):
        wf.run(mreg)
    assert heads(mreg) == before and mreg.callables.names() == []
    wf_ok = fs.Workflow("valid")
    wf_ok.step(make_model, name="a", label="m", size=1)
    result = wf_ok.run(mreg)  # a valid workflow registers them
    assert result.ok and mreg.callables.names() == ["make_model"]


def test_unstored_entity_arguments_are_refused_before_anything_is_written(
    mreg: fs.EntityRegistry,
) -> None:
    register_all(mreg)
    stored = mreg.add(fs.ModelEntity(name="stored", hidden_size=1))
    before = heads(mreg)
    unstored: list[Any] = [
        fs.ModelEntity(name="never-added", hidden_size=1),
        stored.evolve(hidden_size=2),  # an uncommitted draft
    ]
    for entity in unstored:
        alone = fs.Workflow("unstored")
        alone.step(grow, name="g", m=entity, by=1)
        in_list = fs.Workflow("unstored")
        in_list.step(gather, name="g", total=1, first=1, deep=1, models=[stored, entity],
                     named={}, size=1, via_ref=1)  # fmt: skip
        for wf in (alone, in_list):
            with pytest.raises(fs.ValidationError, match="not stored"):
                wf.run(mreg)
    assert heads(mreg) == before and TRACE.items == []
    assert mreg.find(fs.WorkflowRunEntity) == []


def test_definition_errors_are_raised_when_the_step_is_added() -> None:
    other = fs.Workflow("other")
    foreign = other.step(plain, name="a", label="x")
    wf = fs.Workflow("wf")
    with pytest.raises(fs.ValidationError, match="not an earlier step"):
        wf.step(never, name="b", x=foreign)  # no step 'a' here
    wf.step(plain, name="a", label="y")
    with pytest.raises(fs.ValidationError, match="another workflow"):
        wf.step(never, name="b", x=foreign)  # an 'a' here, but not this one
    with pytest.raises(fs.ValidationError, match="another workflow"):
        wf.step(plain, name="b", label="z", after=[foreign])
    with pytest.raises(fs.ValidationError, match="got 42"):
        wf.step(42, name="x")  # type: ignore[arg-type]
    with pytest.raises(fs.ValidationError, match="not an earlier step"):
        wf.step(plain, name="b", label="z", after=["missing"])
    with pytest.raises(fs.ValidationError, match="already has a step 'a'"):
        wf.step(plain, name="a", label="dup")
    wf.step(plain, label="p")  # named after the function
    with pytest.raises(fs.ValidationError, match="already has a step 'plain'"):
        wf.step(plain, label="q")
    with pytest.raises(fs.ValidationError, match="step name"):
        wf.step(plain, name="has space", label="x")
    with pytest.raises(fs.ValidationError, match="callable"):
        wf.step(42)  # type: ignore[arg-type]
    with pytest.raises(fs.ValidationError, match="on_failure"):
        wf.step(plain, name="c", label="x", on_failure=42)  # type: ignore[arg-type]
    with pytest.raises(fs.ValidationError):
        wf["a"][1.5]  # type: ignore[index]
    with pytest.raises(fs.ValidationError):
        wf["a"][True]
    assert [s.name for s in wf.steps] == ["a", "plain"]  # refused steps were not added
    assert len(wf) == 2 and "Workflow('wf'" in repr(wf)


@pytest.mark.parametrize("name", ["", "1abc", "has space", "a/b", "x" * 129, None, 7])
def test_bad_workflow_names_are_refused(name: Any) -> None:
    with pytest.raises(fs.ValidationError):
        fs.Workflow(name)


@pytest.mark.parametrize("limit", [0, -1, True, 1.5, "2"])
def test_bad_max_concurrency_is_refused(limit: Any) -> None:
    with pytest.raises(fs.ValidationError):
        fs.Workflow("ok", max_concurrency=limit)


# -- 6. persisted state ------------------------------------------------------------------------


def test_run_state_persists_per_step_and_reloads_in_a_new_registry(
    persistent_url: str, tmp_path: Any
) -> None:
    first = fs.open(persistent_url, blob_dir=tmp_path / "blobs")
    try:
        result = diamond("persisted").run(first)
        outputs = result.outputs
    finally:
        first.close()
    reg = fs.open(persistent_url, blob_dir=tmp_path / "blobs")
    try:
        run = only(reg.find(fs.WorkflowRunEntity, name="persisted"))
        assert run.id == result.run.id and run.status == "completed" and run.attempts == 1
        assert [(s.name, s.status, s.callable) for s in run.steps] == [
            ("a", "completed", "make_model@1"),
            ("b", "completed", "grow@1"),
            ("c", "completed", "scores_of@1"),
            ("d", "completed", "join@1"),
        ]
        a, b, c = outputs["a"], outputs["b"], outputs["c"]
        assert [thaw(run.step(n).output) for n in "abc"] == [ref_json(a), ref_json(b), ref_json(c)]
        assert thaw(run.step("d").output)["scores"] == ref_json(c)
        for entity in (a, b, c):
            assert reg.get(entity.ref).id == entity.id
        for state in run.steps:
            record = reg.get(state.call)
            assert isinstance(record, fs.CallRecord) and record.status == "completed"
            assert f"{record.name}@{record.function_version}" == state.callable
        assert set(run.calls) == {s.call for s in run.steps}
        # the definition the run used, stored as its own entity
        definition = reg.get(run.workflow)
        assert isinstance(definition, WorkflowEntity) and definition.name == "persisted"
        spec = thaw(definition.spec)
        assert [s["callable"] for s in spec["steps"]] == [s.callable for s in run.steps]
        assert spec["steps"][3]["depends"] == ["a", "b", "c"]
        # one version to start, two per step (running, completed), one to finish
        history = reg.history(run.lineage_id)
        assert len(history) == 1 + 2 * len(run.steps) + 1
        assert history[-1].id == run.id
        assert history[0].status == "running" and {s.status for s in history[0].steps} == {
            "pending"
        }
        for older, newer in itertools.pairwise(history):
            changed = [o.name for o, n in zip(older.steps, newer.steps, strict=True) if o != n]
            assert len(changed) <= 1, changed  # each version records one step's progress
            assert set(older.calls) <= set(newer.calls)
        ladder = {"pending": 0, "running": 1, "completed": 2}
        for i in range(len(run.steps)):
            seen = [h.steps[i].status for h in history]
            assert seen == sorted(seen, key=ladder.__getitem__)  # never goes backwards
            assert seen.count("running") >= 1
        # resuming a completed run (code registered here) returns it as it is
        register_all(reg)
        again = fs.Workflow.resume(reg, run)
        assert again.run.id == run.id and again.ok
        assert {k: v.id for k, v in again.outputs.items() if isinstance(v, fs.Entity)} == {
            k: v.id for k, v in outputs.items() if isinstance(v, fs.Entity)
        }
        assert len(reg.history(run.lineage_id)) == len(history)
    finally:
        reg.close()


def test_a_definition_is_stored_once_per_distinct_spec(mreg: fs.EntityRegistry) -> None:
    def build(size: int) -> fs.Workflow:
        wf = fs.Workflow("versioned")
        wf.step(make_model, name="a", label="m", size=size)
        return wf

    r1 = build(1).run(mreg)
    r2 = build(1).run(mreg)
    r3 = build(2).run(mreg)
    assert r1.run.lineage_id != r2.run.lineage_id  # each run is its own lineage
    assert r1.run.workflow == r2.run.workflow  # the same definition
    assert r3.run.workflow.lineage_id == r1.run.workflow.lineage_id
    assert r3.run.workflow.version == r1.run.workflow.version + 1
    assert len(mreg.find(fs.WorkflowRunEntity, name="versioned")) == 3
    assert only(mreg.find(WorkflowEntity, name="versioned")).version == 2
    assert r3["a"].hidden_size == 2


# -- 8. async --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_arun_with_async_and_sync_steps() -> None:
    areg = await fs.aopen("memory://")
    try:
        wf = fs.Workflow("mixed")
        s = wf.step(aseed, label="cfg", value=1)
        added = wf.step(sync_add, cfg=s, by=2)
        wf.step(aread, cfg=added)
        wf.step(async_rendezvous, name="left", me="left", other="right", timeout=WAIT)
        wf.step(async_rendezvous, name="right", me="right", other="left", timeout=WAIT)
        result = await wf.arun(areg)
        assert result.ok and result["aread"] == 3
        assert result["sync_add"].version == 2
        here = threading.get_ident()
        assert THREADS["aseed"] == here and THREADS["aread"] == here and THREADS["left"] == here
        assert THREADS["sync_add"] != here  # a sync step runs on a worker thread
        stored = await areg.get(result.run.lineage_id)
        assert stored.status == "completed"
        again = await fs.Workflow.aresume(areg, result.run)
        assert again.run.id == result.run.id
    finally:
        await areg.close()


@pytest.mark.anyio
async def test_sync_run_works_inside_a_running_event_loop(mreg: fs.EntityRegistry) -> None:
    wf = fs.Workflow("inside-loop")
    s = wf.step(aseed, label="cfg", value=5)
    wf.step(aread, cfg=s)
    result = wf.run(mreg)  # not awaited: it runs on the registry's own loop thread
    assert result["aread"] == 5
    assert THREADS["aseed"] != threading.get_ident()
    register_all(mreg)
    with pytest.raises(fs.WorkflowFailedError):
        failing_stages().run(mreg)


# -- 9. events -------------------------------------------------------------------------------


def test_events_of_a_run_in_order_and_in_the_log(reg: fs.EntityRegistry) -> None:
    seen: list[fs.Event] = []
    for topic in (fs.WorkflowStarted, fs.WorkflowCompleted, fs.CallStarted, fs.CallCompleted):
        reg.bus.subscribe(topic, seen.append)
    wf = fs.Workflow("evented")
    a = wf.step(make_model, name="a", label="m", size=4)
    wf.step(grow, name="b", m=a, by=1)
    result = wf.run(reg)
    run = result.run
    history = reg.history(run.lineage_id)
    assert [type(e) for e in seen] == [
        fs.WorkflowStarted,
        fs.CallStarted,
        fs.CallCompleted,
        fs.CallStarted,
        fs.CallCompleted,
        fs.WorkflowCompleted,
    ]
    started, a_start, a_done, b_start, b_done, completed = seen
    assert started.subject == history[0].ref and history[0].version == 1
    assert (started.workflow, started.attempt, started.steps) == ("evented", 1, 2)
    assert completed.subject == run.ref and completed.workflow == "evented"
    assert completed.duration_s >= 0
    assert a_start.subject == a_done.subject == run.step("a").call
    assert b_start.subject == b_done.subject == run.step("b").call
    assert (a_start.function, b_start.function) == ("make_model@1", "grow@1")
    assert b_start.inputs == (result["a"].ref,) and b_done.outputs == (result["b"].ref,)
    # each event's subject is a stored version in the state the event announces
    assert reg.get(started.subject).status == "running"
    assert reg.get(completed.subject).status == "completed"
    # the log: the same events, in the same order, persisted
    reg.flush_events()
    logged = [
        s.event
        for s in reg.events()
        if isinstance(
            s.event, (fs.WorkflowStarted, fs.WorkflowCompleted, fs.CallStarted, fs.CallCompleted)
        )
    ]
    assert [e.id for e in logged] == [e.id for e in seen]
    assert only(reg.events(topic=fs.WorkflowCompleted)).event.subject == run.ref
    on_run = [s.event.topic for s in reg.events(subject=run.lineage_id)]
    assert [t for t in on_run if t.startswith("forseti.Workflow")] == [
        "forseti.WorkflowStarted",
        "forseti.WorkflowCompleted",
    ]


def test_step_state_and_result_helpers(mreg: fs.EntityRegistry) -> None:
    result = diamond("helpers").run(mreg)
    with pytest.raises(KeyError, match="no step"):
        result["zzz"]
    with pytest.raises(KeyError):
        result.run.step("zzz")
    assert isinstance(result.run.step("a"), StepState)
    updated = result.run.with_step("a", status="failed")
    assert [s.status for s in updated][:2] == ["failed", "completed"]
    assert result.run.step("a").status == "completed"  # the entity itself is unchanged


# -- arguments named like Workflow.step's own keywords; **kwargs compensations; completed resume ---


def label_with(name: str, after: int, on_failure: str) -> str:
    return f"{name}/{after}/{on_failure}"


def fail_after(x: str) -> None:
    raise RuntimeError(f"failed after {x}")


def undo_all(**kwargs: object) -> str:
    TRACE.items.append(("undo", tuple(sorted(kwargs))))
    return "undone"


def test_inputs_pass_arguments_named_like_step_keywords(mreg: fs.EntityRegistry) -> None:
    wf = fs.Workflow("reserved-names")
    step = wf.step(
        label_with, name="lab", inputs={"name": "n", "after": 3, "on_failure": "x"}
    )
    assert wf.run(mreg)[step.name] == "n/3/x"
    with pytest.raises(fs.ValidationError, match="both in inputs and by keyword"):
        wf.step(fail_after, name="dup", inputs={"x": "a"}, x="b")


def test_a_kwargs_compensation_gets_the_step_arguments_and_output(mreg: fs.EntityRegistry) -> None:
    wf = fs.Workflow("kwargs-undo")
    first = wf.step(label_with, name="lab", on_failure=undo_all, inputs={"name": "n", "after": 1, "on_failure": "y"})
    wf.step(fail_after, name="boom", x=first)
    result = wf.run(mreg, raise_on_failure=False)
    assert result.run.step("lab").status == "compensated"
    assert ("undo", ("after", "name", "on_failure", "output")) in TRACE.items


def test_resuming_a_completed_run_needs_no_functions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'done.db'}"
    with fs.open(url) as first:
        wf = fs.Workflow("done")
        wf.step(label_with, name="lab", inputs={"name": "n", "after": 1, "on_failure": "z"})
        run = wf.run(first).run
    with fs.open(url) as second:  # nothing registered here
        result = fs.Workflow.resume(second, run.lineage_id)
        assert result.run == second.get(run.lineage_id) and result["lab"] == "n/1/z"
