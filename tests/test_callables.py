"""The CallableRegistry: registered, versioned functions called with provenance.

``reg.call(...)`` binds entities, refs, ids and ``"@"`` addresses; commits what the function
returns with ``derived_from`` edges to the exact inputs; keeps a :class:`CallRecord` per call;
emits ``CallStarted``/``CallCompleted``/``CallFailed``; hot-swaps function versions. Bad input
fails clearly and changes nothing. The core semantics run on every backend (memory, SQLite,
PostgreSQL) through the ``reg`` fixture.
"""

from __future__ import annotations

import functools
import sys
import threading
import types
from collections.abc import Callable
from typing import Any, ClassVar
from uuid import UUID, uuid4

import anyio
import pytest
from pydantic import Field
from registries import memory

import forseti as fs
from forseti.entities import JSONMap, entity_types

WAIT = 30  # seconds a barrier / event waits before the test fails instead of hanging


# -- module-level types (annotations of the registered functions resolve here) -----------------


class Counter(fs.Entity):
    entity_type: ClassVar[str] = "tests.callables.Counter"

    name: str = "c"
    n: int = 0


class Note(fs.Entity):
    entity_type: ClassVar[str] = "tests.callables.Note"

    text: str = ""
    about: tuple[fs.EntityRef, ...] = ()
    data: JSONMap = Field(default_factory=dict)


class Ping(fs.Event, frozen=True):
    topic = "tests.callables.Ping"
    n: int = 0


class Boom(Exception):
    """A failure raised by a registered function."""


# -- module-level marked functions (for include(module)) ---------------------------------------


@fs.callable("tests.mod.double")
def mod_double(counter: Counter) -> Counter:
    return counter.evolve(n=counter.n * 2)


@fs.callable(description="adds k")
def mod_add(counter: Counter, k: int = 1) -> Counter:
    return counter.evolve(n=counter.n + k)


@fs.callable
def mod_plain(x: int) -> int:
    return x + 1


def not_marked(counter: Counter) -> Counter:
    return counter


# hot-swap implementations: different code under one name
def swap_v1(counter: Counter) -> Counter:
    return counter.evolve(n=counter.n + 1)


def swap_v2(counter: Counter) -> Counter:
    return counter.evolve(n=counter.n + 10)


def swap_v3(counter: Counter) -> Counter:
    return counter.evolve(n=counter.n + 100)


def same_code_factory() -> Callable[[Counter], Counter]:
    """A fresh function object each time, with the same source (a notebook cell run twice)."""

    def impl(counter: Counter) -> Counter:
        return counter.evolve(n=counter.n + 10)

    return impl


def increment(counter: Counter) -> Counter:
    return counter.evolve(n=counter.n + 1)




# -- helpers -----------------------------------------------------------------------------------


def state(reg: fs.EntityRegistry) -> tuple[list[tuple[UUID, int, UUID]], int]:
    """Every lineage head (lineage, version, id) and the number of logged events."""
    reg.flush_events()
    heads = reg.store.find_heads(sorted(entity_types()))
    return sorted((h.lineage_id, h.version, h.id) for h in heads), len(reg.events())


def head_lineages(reg: fs.EntityRegistry) -> set[UUID]:
    return {h.lineage_id for h in reg.store.find_heads(sorted(entity_types()))}


def only_record(reg: fs.EntityRegistry, name: str) -> fs.CallRecord:
    records = reg.callables.records(name)
    assert len(records) == 1, records
    return records[0]


# -- 1. registration ---------------------------------------------------------------------------


def test_decorator_marks_and_include_registers_functions_and_modules() -> None:
    reg = memory()
    assert mod_double.__forseti_callable__.name == "tests.mod.double"
    assert mod_add.__forseti_callable__.name == "mod_add"  # default: the qualname
    assert mod_add.__forseti_callable__.description == "adds k"
    assert mod_plain.__forseti_callable__.name == "mod_plain"  # bare @fs.callable
    assert mod_plain(1) == 2  # the decorator returns the function unchanged
    assert len(reg.callables) == 0

    specs = reg.callables.include(mod_double)  # one function
    assert [s.name for s in specs] == ["tests.mod.double"]
    assert "tests.mod.double" in reg.callables and "mod_add" not in reg.callables

    specs = reg.callables.include(sys.modules[__name__])  # a module: every marked function
    names = {s.name for s in specs}
    assert names == {"tests.mod.double", "mod_add", "mod_plain"}
    assert "not_marked" not in reg.callables
    assert reg.callables.names() == sorted(names)
    assert len(reg.callables) == 3
    assert [s.name for s in reg.callables] == sorted(names)
    assert reg.callables.get("mod_add").description == "adds k"
    # re-including changes nothing: same versions, one FunctionEntity version each
    again = reg.callables.include(types.SimpleNamespace(a=mod_add, b=mod_double, c=not_marked))
    assert {(s.name, s.version) for s in again} == {("mod_add", 1), ("tests.mod.double", 1)}
    assert [len(reg.callables.history(n)) for n in sorted(names)] == [1, 1, 1]

    c = reg.add(Counter(n=3))
    c = reg.call("tests.mod.double", c)
    assert c.n == 6
    assert reg.call("mod_add", c, k=4).n == 10
    assert reg.call("mod_plain", 41) == 42


def test_register_with_explicit_name_and_description() -> None:
    reg = memory()
    spec = reg.callables.register(mod_double, "renamed", description="twice")
    assert (spec.name, spec.version, spec.label) == ("renamed", 1, "renamed@1")
    assert spec.fn is mod_double and not spec.is_async
    assert spec.description == "twice"
    assert "renamed" in reg.callables and "renamed@1" in reg.callables
    assert "tests.mod.double" not in reg.callables  # the explicit name wins over the mark
    fn_entity = reg.get(spec.function_ref)
    assert isinstance(fn_entity, fs.FunctionEntity)
    assert fn_entity.name == "renamed" and fn_entity.code_hash == spec.code_hash
    assert fn_entity.qualname == "mod_double" and fn_entity.module == __name__
    assert "counter" in fn_entity.signature and fn_entity.description == "twice"
    c = reg.add(Counter(n=2))
    assert reg.call("renamed", c).n == 4


def test_activate_registers_decorated_functions_at_once() -> None:
    reg = memory()
    other = memory()
    with reg.activate():

        @fs.callable("tests.active")
        def active(counter: Counter) -> Counter:
            return counter.evolve(n=counter.n + 1)

    assert "tests.active" in reg.callables
    assert reg.callables.get("tests.active").fn is active
    assert "tests.active" not in other.callables  # only the active registry
    assert reg.find(fs.FunctionEntity, name="tests.active")

    @fs.callable("tests.inactive")
    def inactive(counter: Counter) -> Counter:
        return counter

    assert "tests.inactive" not in reg.callables  # no active registry: marked only
    assert reg.call(active, reg.add(Counter())).n == 1


def test_call_with_a_function_registers_it_on_first_use() -> None:
    reg = memory()

    def bump(counter: Counter, by: int = 1) -> Counter:
        return counter.evolve(n=counter.n + by)

    c = reg.add(Counter())
    out = reg.call(bump, c, by=2)
    assert out.n == 2
    assert "bump" in reg.callables  # the qualname without "<locals>."
    spec = reg.callables.get("bump")
    assert spec.fn is bump and spec.version == 1
    out = reg.call(bump, out)  # the same function object: no new version, no re-registration
    assert out.n == 3 and reg.callables.get("bump") is spec
    assert len(reg.callables.history("bump")) == 1
    assert [r.function_version for r in reg.callables.records("bump")] == [1, 1]
    # a marked function called directly uses its mark's name
    reg.call(mod_double, out)
    assert "tests.mod.double" in reg.callables and "mod_double" not in reg.callables


@pytest.mark.parametrize(
    "name",
    ["", "1abc", "a b", "a@1", "x" * 201, "-lead", "tab\t", "ünï", "a\nb", "semi;colon"],
)
def test_bad_names_are_refused(name: str) -> None:
    reg = memory()
    before = state(reg)
    with pytest.raises(fs.ValidationError, match="name"):
        reg.callables.register(mod_double, name)
    with pytest.raises(fs.ValidationError):
        fs.callable(name)(not_marked)
    assert not hasattr(not_marked, "__forseti_callable__")
    assert len(reg.callables) == 0 and state(reg) == before


def test_good_names_and_non_string_names() -> None:
    reg = memory()
    for name in ["a", "_x", "pkg.mod:fn", "team/train-v2", "A" * 200]:
        assert reg.callables.register(not_marked, name).name == name
    for bad in [5, b"bytes", ""]:
        with pytest.raises(fs.ValidationError):
            reg.callables.register(not_marked, bad)  # type: ignore[arg-type]
    with pytest.raises(fs.ValidationError):
        reg.callables.register("not a function")  # type: ignore[arg-type]
    with pytest.raises(fs.ValidationError):
        fs.callable("ok")(42)  # type: ignore[type-var]
    with pytest.raises(fs.ValidationError):
        reg.call(42)  # type: ignore[arg-type]


def test_unresolvable_annotations_are_a_validation_error_and_store_nothing() -> None:
    reg = memory()

    def needs_missing(x: NoSuchType) -> int:  # type: ignore[name-defined]  # noqa: F821
        return 1

    before = state(reg)
    with pytest.raises(fs.ValidationError, match="NoSuchType"):
        reg.callables.register(needs_missing, "tests.missing")
    with pytest.raises(fs.ValidationError, match="NoSuchType"):
        reg.call(needs_missing, 1)
    assert "tests.missing" not in reg.callables and len(reg.callables) == 0
    assert state(reg) == before  # no FunctionEntity


def test_lookups_get_versions_and_history() -> None:
    reg = memory()
    reg.callables.register(swap_v1, "tests.swap")
    reg.callables.register(swap_v2, "tests.swap")
    assert reg.callables.get("tests.swap").version == 2
    assert reg.callables.get("tests.swap@1").fn is swap_v1
    assert reg.callables.get("tests.swap", 1).fn is swap_v1
    assert reg.callables.get("tests.swap", 2).fn is swap_v2
    assert [s.version for s in reg.callables.versions("tests.swap")] == [1, 2]
    assert [s.fn for s in reg.callables.versions("tests.swap")] == [swap_v1, swap_v2]
    assert reg.callables.versions("nope") == []
    history = reg.callables.history("tests.swap")
    assert [f.version for f in history] == [1, 2]
    assert all(isinstance(f, fs.FunctionEntity) for f in history)
    assert history[0].code_hash != history[1].code_hash
    assert [f.qualname for f in history] == ["swap_v1", "swap_v2"]
    assert history[1].ref == reg.callables.get("tests.swap").function_ref
    assert history[0].ref == reg.callables.get("tests.swap@1").function_ref

    with pytest.raises(fs.NotFoundError, match="no callable named 'nope'.*tests.swap"):
        reg.callables.get("nope")
    with pytest.raises(fs.NotFoundError, match="nope"):
        reg.callables.history("nope")
    with pytest.raises(fs.ValidationError, match="number"):
        reg.callables.get("tests.swap@x")
    with pytest.raises(fs.ValidationError, match="number"):
        reg.callables.get("tests.swap@")
    with pytest.raises(fs.ValidationError, match="names a version already"):
        reg.callables.get("tests.swap@1", 1)
    with pytest.raises(fs.ValidationError):
        reg.callables.get(5)  # type: ignore[arg-type]
    assert "tests.swap" in reg.callables and "nope" not in reg.callables and 5 not in reg.callables
    assert "tests.swap" in repr(reg.callables)


# -- 2. hot swap ---------------------------------------------------------------------------------


def test_hot_swap_records_the_version_that_ran(reg: fs.EntityRegistry) -> None:
    c = reg.add(Counter(n=0))
    assert reg.callables.register(swap_v1, "tests.swap").version == 1
    c = reg.call("tests.swap", c)
    assert c.n == 1

    assert reg.callables.register(swap_v2, "tests.swap").version == 2  # different code
    c = reg.call("tests.swap", c)
    assert c.n == 11
    # the same object again, and a fresh object with the same source: stays version 2
    assert reg.callables.register(swap_v2, "tests.swap").version == 2
    fresh = same_code_factory()
    other_fresh = same_code_factory()
    assert fresh is not other_fresh
    assert reg.callables.register(fresh, "tests.factory").version == 1
    assert reg.callables.register(other_fresh, "tests.factory").version == 1
    assert reg.callables.get("tests.factory").fn is other_fresh
    assert len(reg.callables.history("tests.factory")) == 1

    # name@1 still runs the old code, and its record says so
    c = reg.call("tests.swap@1", c)
    assert c.n == 12
    c = reg.call("tests.swap@2", c)
    assert c.n == 22
    records = reg.callables.records("tests.swap")
    assert [r.function_version for r in records] == [1, 2, 1, 2]
    history = reg.callables.history("tests.swap")
    assert [f.version for f in history] == [1, 2]
    assert [r.function for r in records] == [history[0].ref, history[1].ref] * 2

    # swapping version 1's code back in makes version 1 current again: a version is its code
    assert reg.callables.register(swap_v1, "tests.swap").version == 1
    assert reg.callables.get("tests.swap").fn is swap_v1
    c = reg.call("tests.swap", c)
    assert c.n == 23 and reg.callables.records("tests.swap")[-1].function_version == 1
    assert [f.version for f in reg.callables.history("tests.swap")] == [1, 2]  # nothing new


def test_unknown_version_is_a_clear_not_found_error(reg: fs.EntityRegistry) -> None:
    reg.callables.register(swap_v1, "tests.swap")
    c = reg.add(Counter())
    before = state(reg)
    with pytest.raises(fs.NotFoundError, match=r"tests\.swap@99.*loaded: tests\.swap@1"):
        reg.call("tests.swap@99", c)
    with pytest.raises(fs.NotFoundError, match="no callable named 'tests.nope'"):
        reg.call("tests.nope@1", c)
    with pytest.raises(fs.NotFoundError, match="no callable named 'tests.nope'"):
        reg.call("tests.nope", c)
    assert state(reg) == before


def test_versions_persist_across_registries(persistent_url: str, tmp_path: Any) -> None:
    with fs.open(persistent_url, blob_dir=tmp_path / "b1") as first:
        assert first.callables.register(swap_v1, "tests.swap").version == 1
        assert first.callables.register(same_code_factory(), "tests.swap").version == 2
        c = first.add(Counter())
        first.call("tests.swap", c)

    with fs.open(persistent_url, blob_dir=tmp_path / "b2") as second:
        assert len(second.callables) == 0  # code is never loaded from the store
        # the same code as the stored head: the same version number
        spec = second.callables.register(same_code_factory(), "tests.swap")
        assert spec.version == 2
        assert [f.version for f in second.callables.history("tests.swap")] == [1, 2]
        # version 1 is recorded, but its code is not registered in this process
        with pytest.raises(fs.NotFoundError, match="not loaded in this process"):
            second.callables.get("tests.swap@1")
        # different code: the next version
        assert second.callables.register(swap_v3, "tests.swap").version == 3
        assert [f.qualname for f in second.callables.history("tests.swap")] == [
            "swap_v1",
            "same_code_factory.<locals>.impl",
            "swap_v3",
        ]
        c = second.find(Counter)[0]
        assert second.call("tests.swap", c).n == c.n + 100
        assert [r.function_version for r in second.callables.records("tests.swap")] == [2, 3]


def test_concurrent_registration_of_one_name_agrees_on_the_version(
    reg: fs.EntityRegistry,
) -> None:
    barrier = threading.Barrier(6, timeout=WAIT)
    versions: list[int] = []
    errors: list[BaseException] = []

    def register() -> None:
        try:
            barrier.wait()
            versions.append(reg.callables.register(same_code_factory(), "tests.race").version)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert errors == [] and versions == [1] * 6
    assert len(reg.callables.history("tests.race")) == 1


def test_hot_swap_during_a_call_keeps_the_running_version(reg: fs.EntityRegistry) -> None:
    def first(counter: Counter) -> int:
        reg.callables.register(second, "tests.live")  # swapped while this call runs
        return 1

    def second(counter: Counter) -> int:
        return 2

    reg.callables.register(first, "tests.live")
    c = reg.add(Counter())
    assert reg.call("tests.live", c) == 1
    assert reg.call("tests.live", c) == 2
    assert [(r.function_version, r.result) for r in reg.callables.records("tests.live")] == [
        (1, 1),
        (2, 2),
    ]


class Adder:
    def __call__(self, counter: Counter, k: int = 1) -> Counter:
        return counter.evolve(n=counter.n + k)

    def read(self, counter: Counter) -> int:
        return counter.n


def add_k(counter: Counter, k: int) -> Counter:
    return counter.evolve(n=counter.n + k)


def test_methods_and_lambdas_register() -> None:
    reg = memory()
    c = reg.add(Counter(n=4))
    spec = reg.callables.register(Adder().read, "tests.method")
    assert [p.name for p in spec.params] == ["counter"]  # no self
    assert reg.call("tests.method", c.lineage_id) == 4
    with pytest.raises(fs.ValidationError, match="name"):
        reg.callables.register(lambda counter: counter.n)  # "<lambda>" is no name
    reg.callables.register(lambda counter: counter.n * 10, "tests.lambda")
    assert reg.call("tests.lambda", c) == 40
    assert only_record(reg, "tests.lambda").inputs == (c.ref,)


@pytest.mark.parametrize("kind", ["instance", "partial"])
def test_callable_objects_and_partials_register(kind: str) -> None:
    reg = memory()
    fn: Any = Adder() if kind == "instance" else functools.partial(add_k, k=1)
    spec = reg.callables.register(fn, "tests.obj")
    assert spec.by_name["counter"].entity_types == (Counter,)
    assert reg.call("tests.obj", reg.add(Counter())).n == 1


def test_nested_calls_are_caused_by_the_outer_call(reg: fs.EntityRegistry) -> None:
    started: list[fs.CallStarted] = []
    reg.bus.subscribe(fs.CallStarted, started.append)

    def inner(counter: Counter) -> Counter:
        return counter.evolve(n=counter.n + 1)

    def outer(counter: Counter) -> Note:
        bumped = reg.call(inner, counter)
        return Note(text="done", about=(bumped.ref,))

    c = reg.add(Counter())
    note = reg.call(outer, c)
    assert [s.function for s in started] == ["outer@1", "inner@1"]
    assert started[1].causation_id == started[0].id
    inner_rec = only_record(reg, "inner")
    outer_rec = only_record(reg, "outer")
    bumped_ref = inner_rec.outputs[0]
    assert reg.get(c.lineage_id).ref == bumped_ref
    assert outer_rec.outputs == (note.ref,) and note.about == (bumped_ref,)
    assert set(reg.ancestors(note)) >= {c.ref, bumped_ref}


# -- 3. inputs ---------------------------------------------------------------------------------


def test_every_kind_of_entity_argument_resolves_to_the_exact_version(
    reg: fs.EntityRegistry,
) -> None:
    seen: list[Counter] = []

    def look(counter: Counter) -> int:
        seen.append(counter)
        return counter.n

    c1 = reg.add(Counter(n=1))
    c2 = reg.commit(c1.evolve(n=2))
    c3 = reg.commit(c2.evolve(n=3))
    lid = c1.lineage_id
    cases: list[tuple[Any, Counter]] = [
        (c2, c2),  # a stored (older) version object: that version, not the head
        (c1.ref, c1),  # an EntityRef: exactly that version
        (fs.EntityRef(lid, 2), c2),
        (lid, c3),  # a lineage id (UUID): the head
        (str(lid), c3),  # ... as a string
        (c2.id, c2),  # a version id
        (str(c1.id), c1),
        (f"@{lid}", c3),  # addresses
        (f"@{c1.id}", c1),
        (f"@{lid.hex}", c3),
        (f"@{str(c2.id).upper()}", c2),
    ]
    for arg, expected in cases:
        assert reg.call(look, arg) == expected.n, arg
        assert seen[-1] == expected and seen[-1].id == expected.id
        record = reg.callables.records("look")[-1]
        assert record.inputs == (expected.ref,), arg
        assert record.result == expected.n
        shown = record.arguments["counter"]
        assert shown == (arg if isinstance(arg, str) and arg.startswith("@") else str(expected.ref))
    assert len(reg.callables.records("look", status="completed")) == len(cases)


def test_addressed_fields_are_values_and_their_versions_are_inputs(
    reg: fs.EntityRegistry,
) -> None:
    cfg = reg.add(fs.ConfigEntity(name="cfg", params={"opt": {"lr": 0.01, "betas": [0.9, 0.99]}}))
    cfg2 = reg.commit(cfg.evolve(params={"opt": {"lr": 0.5, "betas": [0.1, 0.2]}}))
    stage = reg.add(fs.TrainingStageEntity(name="pretrain", kind="sft", config=cfg.ref))
    pipe = reg.add(fs.PipelineEntity(name="pipe", stages=(stage.ref,)))

    def use(lr: float, beta: float, name: str, whole: Any) -> dict[str, Any]:
        return {"lr": lr, "beta": beta, "name": name, "whole": whole}

    out = reg.call(
        use,
        lr=f"@{cfg.id}.params.opt.lr",  # an older version, by version id
        beta=f"@{cfg.lineage_id}.params.opt.betas.1",  # the head, by lineage
        name=f"@{pipe.lineage_id}.stages.0.name",  # through an EntityRef into the stage
        whole=f"@{pipe.lineage_id}.stages.0.config.params.opt",  # two refs followed
    )
    assert out == {"lr": 0.01, "beta": 0.2, "name": "pretrain", "whole": cfg.params["opt"]}
    record = only_record(reg, "use")
    assert set(record.inputs) == {cfg.ref, cfg2.ref, pipe.ref, stage.ref}
    assert len(record.inputs) == 4  # each version once
    assert record.arguments["lr"] == f"@{cfg.id}.params.opt.lr"  # the address as given
    assert record.result == out

    # an entity parameter given a path that ends on an EntityRef gets the referenced entity
    def stage_name(stage: fs.TrainingStageEntity) -> str:
        return stage.name

    assert reg.call(stage_name, f"@{pipe.lineage_id}.stages.0") == "pretrain"
    record = only_record(reg, "stage_name")
    assert pipe.ref in record.inputs and stage.ref in record.inputs


def test_list_optional_ref_and_variadic_parameters(reg: fs.EntityRegistry) -> None:
    a = reg.add(Counter(n=1))
    b = reg.add(Counter(n=2))
    b2 = reg.commit(b.evolve(n=20))
    c = reg.add(Counter(n=3))

    def total(counters: list[Counter], extra: Counter | None = None) -> int:
        # the container given (list or tuple), holding the resolved entities
        assert isinstance(counters, list | tuple) and all(isinstance(x, Counter) for x in counters)
        return sum(x.n for x in counters) + (extra.n if extra is not None else 0)

    assert reg.call(total, [a, b.ref, f"@{c.id}"]) == 1 + 2 + 3
    rec = reg.callables.records("total")[-1]
    assert rec.inputs == (a.ref, b.ref, c.ref)
    assert rec.arguments["counters"] == (str(a.ref), str(b.ref), str(c.ref))
    assert reg.call(total, (b.lineage_id,), extra=None) == 20
    assert reg.callables.records("total")[-1].arguments["extra"] is None
    assert reg.call(total, [], extra=a) == 1
    assert reg.callables.records("total")[-1].inputs == (a.ref,)

    def as_ref(target: fs.EntityRef) -> int:
        assert isinstance(target, fs.EntityRef)
        return target.version

    assert reg.call(as_ref, b.lineage_id) == 2  # checked to exist, passed as the head's ref
    assert reg.call(as_ref, b.ref) == 1
    assert reg.callables.records("as_ref")[-1].inputs == (b.ref,)

    def many(*counters: Counter, **scales: int) -> dict[str, int]:
        return {"sum": sum(x.n for x in counters), **scales}

    assert reg.call(many, a, b2.ref, f"@{c.lineage_id}", x="3", y=4) == {
        "sum": 1 + 20 + 3,
        "x": 3,
        "y": 4,
    }
    rec = reg.callables.records("many")[-1]
    assert rec.inputs == (a.ref, b2.ref, c.ref)
    assert rec.arguments["counters[1]"] == str(b2.ref) and rec.arguments["x"] == "3"


def test_plain_values_are_validated_and_coerced(reg: fs.EntityRegistry) -> None:
    got: list[Any] = []

    def scale(
        counter: Counter, factor: int, label: str = "x", weights: tuple[float, ...] = ()
    ) -> Counter:
        got.append((factor, label, weights))
        return counter.evolve(n=counter.n * factor)

    c = reg.add(Counter(n=2))
    out = reg.call(scale, c, "5", weights=[1, "2.5"])  # pydantic lax mode
    assert out.n == 10 and got[-1] == (5, "x", (1.0, 2.5))
    assert type(got[-1][0]) is int
    record = reg.callables.records("scale")[-1]
    assert record.arguments["factor"] == "5"  # as given
    assert record.arguments["weights"] == (1, "2.5")


def test_unannotated_parameter_takes_an_entity_as_an_input(reg: fs.EntityRegistry) -> None:
    c = reg.add(Counter(n=4))

    def anything(x, y: Any = None):  # type: ignore[no-untyped-def]
        return (type(x).__name__, y)

    assert reg.call(anything, c, y=[1, 2]) == ("Counter", [1, 2])
    record = only_record(reg, "anything")
    assert record.inputs == (c.ref,) and record.arguments["x"] == str(c.ref)
    assert record.result == ("Counter", (1, 2))


def test_entity_for_a_plain_int_parameter_is_refused() -> None:
    reg = memory()
    ran: list[int] = []

    def plain(n: int) -> int:
        ran.append(n)
        return n

    reg.callables.register(plain)
    c = reg.add(Counter(n=4))
    before = state(reg)
    with pytest.raises(fs.ValidationError, match="'n'"):
        reg.call("plain", c)
    assert ran == [] and state(reg) == before


def _bad_input_cases(
    reg: fs.EntityRegistry,
) -> list[tuple[str, tuple[Any, ...], dict[str, Any], type[Exception], str]]:
    c = reg.add(Counter(n=1))
    c2 = reg.commit(c.evolve(n=2))
    m = reg.add(fs.ModelEntity(name="m"))
    cfg = reg.add(fs.ConfigEntity(name="cfg", params={"k": 1}))
    missing = uuid4()
    forged = c2.model_copy(update={"id": uuid4()})
    V, N = fs.ValidationError, fs.NotFoundError
    return [
        # (case, args, kwargs, error, message regex)
        ("bad int", (c, "abc"), {}, V, "factor"),
        ("None for int", (c, None), {}, V, "factor"),
        ("unknown kwarg", (c, 2), {"nope": 1}, V, "no parameter.*nope"),
        ("missing required", (c,), {}, V, "missing the required argument 'factor'"),
        ("missing entity", (), {"factor": 2}, V, "missing the required argument 'counter'"),
        ("too many positionals", (c, 2, "lbl", 4), {}, V, "takes 3 positional argument"),
        ("duplicate value", (c, 2), {"factor": 3}, V, "several values for argument 'factor'"),
        ("duplicate entity", (c,), {"counter": c, "factor": 1}, V, "several values"),
        ("wrong entity type", (m, 2), {}, V, "takes Counter, got a ModelEntity"),
        ("wrong type by id", (m.lineage_id, 2), {}, V, "takes Counter, got a ModelEntity"),
        ("wrong type by address", (f"@{cfg.id}", 2), {}, V, "takes Counter"),
        ("address names a value", (f"@{c.id}.n", 2), {}, V, "names a int"),
        ("new entity", (Counter(n=5), 2), {}, V, "not stored"),
        ("uncommitted draft", (c2.evolve(n=3), 2), {}, V, "not stored"),
        ("forged version", (forged, 2), {}, V, "not stored"),
        ("None for entity", (None, 2), {}, V, "counter"),
        ("not an id", ("not-a-uuid", 2), {}, V, "not a lineage id"),
        ("a number for entity", (42, 2), {}, V, "got int"),
        ("unknown uuid", (missing, 2), {}, N, str(missing)),
        ("unknown uuid str", (str(missing), 2), {}, N, str(missing)),
        ("unknown address", (f"@{missing}", 2), {}, N, str(missing)),
        ("unknown ref", (fs.EntityRef(c.lineage_id, 9), 2), {}, N, "no version 9"),
        ("missing field", (c, f"@{cfg.id}.params.nope"), {}, N, "no key 'nope'"),
        ("malformed address", (f"@{c.id}..n", 2), {}, V, "not a field name"),
        ("bad address for int", (c, f"@{cfg.id}.name"), {}, V, "factor"),
        ("list param not a list", (c, 2), {"others": c}, V, "takes a list"),
        ("list item unknown", (c, 2), {"others": [c, missing]}, N, str(missing)),
        ("list item wrong type", (c, 2), {"others": [m]}, V, r"others\[0\]"),
    ]


def test_invalid_inputs_fail_clearly_run_nothing_and_change_nothing(
    reg: fs.EntityRegistry,
) -> None:
    ran: list[Any] = []

    def scale(
        counter: Counter, factor: int, label: str = "", *, others: tuple[Counter, ...] = ()
    ) -> Counter:
        ran.append(counter)
        return counter.evolve(n=counter.n * factor)

    reg.callables.register(scale, "tests.scale")
    cases = _bad_input_cases(reg)
    seen: list[fs.CallStarted] = []
    reg.bus.subscribe(fs.CallStarted, seen.append)
    before = state(reg)
    for case, args, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            reg.call("tests.scale", *args, **kwargs)
        assert ran == [], case
        assert state(reg) == before, case
    assert seen == []  # nothing even started
    assert reg.callables.records() == []


def test_address_input_errors_name_the_call(reg: fs.EntityRegistry) -> None:
    def f(counter: Counter) -> int:
        return counter.n

    reg.callables.register(f, "tests.f")
    c = reg.add(Counter())
    before = state(reg)
    with pytest.raises(fs.ValidationError, match=r"tests\.f@1: argument 'counter'"):
        reg.call("tests.f", reg.add(fs.ModelEntity(name="m")))
    before = state(reg)
    with pytest.raises(fs.NotFoundError, match="has no field 'nope'"):
        reg.call("tests.f", f"@{c.id}.nope")
    assert state(reg) == before


# -- 4. outputs --------------------------------------------------------------------------------


def test_evolved_input_becomes_the_next_version_with_provenance(reg: fs.EntityRegistry) -> None:
    def merge(target: Counter, source: Counter, cfg: fs.ConfigEntity) -> Counter:
        return target.evolve(n=target.n + source.n * cfg.params["k"])

    t = reg.add(Counter(name="t", n=1))
    s1 = reg.add(Counter(name="s", n=5))
    s2 = reg.commit(s1.evolve(n=7))
    cfg = reg.add(fs.ConfigEntity(name="cfg", params={"k": 3}))
    out = reg.call(merge, t, s1.ref, cfg.lineage_id)  # s1: the older version on purpose
    assert out.n == 1 + 5 * 3
    assert out.lineage_id == t.lineage_id and out.version == 2 and out.previous_id == t.id
    assert reg.get(t.lineage_id) == out  # the head now
    assert set(out.derived_from) >= {t.ref, s1.ref, cfg.ref}
    assert s2.ref not in out.derived_from
    record = only_record(reg, "merge")
    assert record.outputs == (out.ref,) and record.inputs == (t.ref, s1.ref, cfg.ref)
    assert set(reg.ancestors(out)) >= {t.ref, s1.ref, cfg.ref}
    assert out.ref in reg.descendants(s1) and s2.ref not in reg.ancestors(out)


def test_new_entity_starts_a_lineage_derived_from_the_inputs(reg: fs.EntityRegistry) -> None:
    def summarize(a: Counter, b: Counter) -> Note:
        return Note(text=f"{a.n}+{b.n}", about=(a.ref,))

    a = reg.add(Counter(n=1))
    b = reg.add(Counter(n=2))
    note = reg.call(summarize, a, b)
    assert isinstance(note, Note) and note.version == 1 and note.text == "1+2"
    assert note.derived_from == (a.ref, b.ref)
    assert reg.get(note.lineage_id) == note
    record = only_record(reg, "summarize")
    assert record.outputs == (note.ref,) and record.result is None
    assert set(reg.ancestors(note)) == {a.ref, b.ref}


def test_returning_an_input_unchanged_commits_nothing_new(reg: fs.EntityRegistry) -> None:
    def same(counter: Counter) -> Counter:
        return counter

    c = reg.add(Counter(n=3))
    out = reg.call(same, c)
    assert out == c and out.version == 1
    assert [e.version for e in reg.history(c.lineage_id)] == [1]
    record = only_record(reg, "same")
    assert record.outputs == (c.ref,) and record.inputs == (c.ref,)


def test_collections_of_outputs_are_committed_and_mirrored(reg: fs.EntityRegistry) -> None:
    def fan(a: Counter, b: Counter) -> Any:
        new = Note(text="new")
        bumped = a.evolve(n=a.n + 1)
        return (bumped, [new, b, 7], {"again": bumped, "s": "text", "nested": {"x": new}})

    a = reg.add(Counter(n=1))
    b = reg.add(Counter(n=2))
    out = reg.call(fan, a, b)
    assert type(out) is tuple and type(out[1]) is list and type(out[2]) is dict
    bumped, (new, same_b, seven), mapping = out
    assert seven == 7 and mapping["s"] == "text" and same_b == b
    assert mapping["again"] is bumped and mapping["nested"]["x"] is new  # one object each
    assert bumped.version == 2 and reg.get(a.lineage_id) == bumped
    assert new.version == 1 and reg.get(new.lineage_id) == new
    assert [e.version for e in reg.history(a.lineage_id)] == [1, 2]  # committed once
    assert [e.version for e in reg.history(b.lineage_id)] == [1]
    for entity in (bumped, new):
        assert set(entity.derived_from) == {a.ref, b.ref}
    record = only_record(reg, "fan")
    assert record.outputs == (bumped.ref, new.ref, b.ref)
    assert record.result is None  # the return value holds entities

    def listed(a: Counter) -> list[Any]:
        return [a.evolve(n=50), Note(text="x")]

    got = reg.call(listed, bumped)
    assert type(got) is list and got[0].version == 3 and got[1].version == 1
    assert reg.get(a.lineage_id).n == 50


@pytest.mark.parametrize(
    "value",
    [42, 2.5, "text", True, None, [1, "a", None], {"a": [1, {"b": 2.0}], "c": None}],
)
def test_plain_return_values_are_kept_in_the_record(value: Any) -> None:
    reg = memory()

    def give() -> Any:
        return value

    assert reg.call(give) == value
    record = only_record(reg, "give")
    assert record.outputs == () and record.inputs == () and record.status == "completed"
    assert fs.FrozenDict({"v": record.result}) == {"v": value}
    assert fs.CallRecord.model_validate(record.to_state()) == record


def test_non_json_return_value_is_recorded_as_its_repr() -> None:
    reg = memory()

    class Thing:
        def __repr__(self) -> str:
            return "Thing()"

    thing = Thing()

    def give() -> Any:
        return thing

    assert reg.call(give) is thing
    assert only_record(reg, "give").result == "Thing()"


def test_declared_return_type_is_enforced(reg: fs.EntityRegistry) -> None:
    def wrong(counter: Counter) -> Counter:
        return fs.ModelEntity(name="not a counter")  # type: ignore[return-value]

    def plain_for_entity(counter: Counter) -> Counter:
        return 5  # type: ignore[return-value]

    c = reg.add(Counter())
    for fn in (wrong, plain_for_entity):
        reg.callables.register(fn)
        failed: list[fs.CallFailed] = []
        sub = reg.bus.subscribe(fs.CallFailed, failed.append)
        lineages = head_lineages(reg)
        with pytest.raises(fs.ValidationError, match="declared to return Counter"):
            reg.call(fn, c)
        reg.bus.unsubscribe(sub)
        record = only_record(reg, fn.__name__)
        assert record.status == "failed" and "declared to return Counter" in (record.error or "")
        assert record.outputs == ()
        assert head_lineages(reg) - lineages == {record.lineage_id}  # the record, nothing else
        assert failed and failed[0].error_type == "ValidationError"
    assert reg.find(fs.ModelEntity) == []
    assert [e.version for e in reg.history(c.lineage_id)] == [1]


def test_declared_list_of_entities_return_is_accepted() -> None:
    reg = memory()

    def split(counter: Counter) -> list[Counter]:
        return [counter.evolve(n=1)]

    out = reg.call(split, reg.add(Counter()))
    assert out[0].version == 2


def test_declared_optional_entity_return_accepts_none() -> None:
    reg = memory()

    def maybe(counter: Counter) -> Counter | None:
        return None

    assert reg.call(maybe, reg.add(Counter())) is None
    assert only_record(reg, "maybe").status == "completed"


def test_outputs_commit_atomically(reg: fs.EntityRegistry) -> None:
    def two(a: Counter, b: Counter) -> tuple[Counter, Counter]:
        stale = b.evolve(n=-1)
        reg.commit(b.evolve(n=b.n + 1))  # somebody moves b's head meanwhile
        return a.evolve(n=a.n + 1), stale

    a = reg.add(Counter(name="a", n=1))
    b = reg.add(Counter(name="b", n=1))
    with pytest.raises(fs.ConflictError):
        reg.call(two, a, b)
    assert [e.version for e in reg.history(a.lineage_id)] == [1]  # a's new version: not written
    assert [e.n for e in reg.history(b.lineage_id)] == [1, 2]  # only the body's own commit
    record = only_record(reg, "two")
    assert record.status == "failed" and "ConflictError" in (record.error or "")
    assert record.outputs == ()


def test_failed_function_commits_nothing_it_returned_and_propagates(
    reg: fs.EntityRegistry,
) -> None:
    raised: list[Boom] = []

    def explode(counter: Counter) -> Counter:
        counter.evolve(n=99)
        raised.append(Boom("no luck"))
        raise raised[-1]

    c = reg.add(Counter())
    lineages = head_lineages(reg)
    with pytest.raises(Boom) as info:
        reg.call(explode, c)
    assert info.value is raised[0]  # the very exception, unchanged
    assert [e.version for e in reg.history(c.lineage_id)] == [1]
    record = only_record(reg, "explode")
    assert head_lineages(reg) - lineages == {record.lineage_id, record.function.lineage_id}
    assert record.status == "failed" and record.error == "Boom: no luck"
    assert record.inputs == (c.ref,) and record.outputs == () and record.result is None
    assert record.duration_s >= 0


# -- 5. call records ---------------------------------------------------------------------------


def test_call_record_fields(reg: fs.EntityRegistry) -> None:
    def work(counter: Counter, cfg: fs.ConfigEntity, tag: str, opts: dict[str, Any]) -> Counter:
        return counter.evolve(n=counter.n + cfg.params["k"])

    spec = reg.callables.register(work, "tests.work")
    c = reg.add(Counter(n=1))
    cfg = reg.add(fs.ConfigEntity(name="cfg", params={"k": 2}))
    out = reg.call("tests.work", c, cfg.lineage_id, tag="t", opts={"a": [1, 2], "b": {"c": None}})
    record = only_record(reg, "tests.work")
    assert isinstance(record, fs.CallRecord) and record.version == 1
    assert record.name == "tests.work" and record.function_version == 1
    assert record.function == spec.function_ref
    assert reg.get(record.function).code_hash == spec.code_hash
    assert record.inputs == (c.ref, cfg.ref)
    assert record.outputs == (out.ref,)
    assert record.arguments == {
        "counter": str(c.ref),
        "cfg": str(cfg.ref),
        "tag": "t",
        "opts": {"a": [1, 2], "b": {"c": None}},
    }
    assert record.status == "completed" and record.error is None and record.result is None
    assert record.duration_s > 0
    assert record.started_at is not None and record.started_at <= record.created_at
    assert record.started_at.utcoffset() is not None
    # records are built without validation (for speed): they must validate all the same
    assert fs.CallRecord.model_validate(record.to_state()) == record
    assert reg.get(record.lineage_id) == record
    # a record is a provenance node: inputs are its ancestors
    assert set(reg.ancestors(record)) >= {c.ref, cfg.ref, spec.function_ref}
    assert record.ref in reg.descendants(c)


def test_records_filter_by_name_and_status(reg: fs.EntityRegistry) -> None:
    def ok(x: int) -> int:
        return x

    def bad(x: int) -> int:
        raise Boom(str(x))

    for i in range(3):
        reg.call(ok, i)
    for i in range(2):
        with pytest.raises(Boom):
            reg.call(bad, i)
    assert [r.result for r in reg.callables.records("ok")] == [0, 1, 2]
    assert len(reg.callables.records()) == 5
    assert [r.error for r in reg.callables.records("bad")] == ["Boom: 0", "Boom: 1"]
    assert [r.name for r in reg.callables.records(status="failed")] == ["bad", "bad"]
    assert len(reg.callables.records(status="completed")) == 3
    assert reg.callables.records("ok", status="failed") == []
    assert reg.callables.records("nobody") == []
    for r in reg.callables.records():
        assert fs.CallRecord.model_validate(r.to_state()) == r


def test_records_validate_for_every_kind_of_argument() -> None:
    reg = memory()

    def mixed(
        items: list[Counter],
        maybe: Counter | None = None,
        big: int = 0,
        obj: Any = None,
        *rest: Any,
        **kw: Any,
    ) -> Any:
        raise Boom("x" * 10_000)

    a = reg.add(Counter())
    with pytest.raises(Boom):
        reg.call(mixed, [a, a.lineage_id], None, 2**40, object(), f"@{a.id}", (1, 2), z={1, 2})
    record = only_record(reg, "mixed")
    assert record.status == "failed" and len(record.error or "") <= 4000
    assert record.arguments["items"] == (str(a.ref), str(a.ref))
    assert record.arguments["maybe"] is None and record.arguments["big"] == 2**40
    assert record.arguments["obj"].startswith("<object object")  # not JSON: its repr
    assert record.arguments["rest[0]"] == f"@{a.id}" and record.arguments["rest[1]"] == (1, 2)
    assert record.arguments["z"] == "{1, 2}"
    assert fs.CallRecord.model_validate(record.to_state()) == record
    assert record.inputs == (a.ref,)


@pytest.mark.parametrize("where", ["argument", "result"])
def test_an_int_too_big_for_the_store_does_not_break_the_call(where: str) -> None:
    reg = memory()

    def big(x: int) -> int:
        return x * 2**70 if where == "result" else 1

    assert reg.call(big, 2**70 if where == "argument" else 1) == (2**70 if where == "result" else 1)
    record = only_record(reg, "big")
    assert record.status == "completed"
    assert fs.CallRecord.model_validate(record.to_state()) == record


def test_records_persist_and_reload(persistent_url: str, tmp_path: Any) -> None:
    with fs.open(persistent_url, blob_dir=tmp_path / "b1") as first:
        reg = first
        c = reg.add(Counter(n=1))
        out = reg.call(increment, c)
        with pytest.raises(fs.ValidationError):
            reg.call(increment, Counter())  # bad input: no record
        wanted = [r.to_state() for r in reg.callables.records()]
    assert len(wanted) == 1

    with fs.open(persistent_url, blob_dir=tmp_path / "b2") as second:
        records = second.callables.records("increment")
        assert [r.to_state() for r in records] == wanted
        record = records[0]
        assert record.outputs == (out.ref,) and record.inputs == (c.ref,)
        assert second.get(record.function).name == "increment"
        assert record.ref in second.descendants(c)
        assert fs.CallRecord.model_validate(record.to_state()) == record


# -- 6. provenance -----------------------------------------------------------------------------


def test_provenance_answers_which_run_config_and_dataset_made_a_checkpoint(
    reg: fs.EntityRegistry,
) -> None:
    weights = reg.put_blob(b"\x00" * 64, format="safetensors")

    @fs.callable("tests.start_run")
    def start_run(
        model: fs.ModelEntity, data: fs.DatasetEntity, config: fs.ConfigEntity
    ) -> fs.TrainingRunEntity:
        return fs.TrainingRunEntity(
            name=f"train-{model.name}",
            algorithm="sgd",
            model=model.ref,
            config=config.ref,
            dataset=data.ref,
            status="running",
            total_steps=int(config.params["steps"]),
        )

    @fs.callable("tests.train")
    def train(run: fs.TrainingRunEntity, model: fs.ModelEntity) -> tuple[Any, ...]:
        ck = fs.CheckpointEntity(
            run=run.ref, model=model.ref, step=run.total_steps or 0, weights=weights
        )
        done = run.evolve(status="completed", step=run.total_steps, metrics={"loss": 0.1})
        return ck, done

    reg.callables.include(start_run, train)
    m1 = reg.add(fs.ModelEntity(name="tiny", hidden_size=8))
    m2 = reg.commit(m1.evolve(hidden_size=16))
    m3 = reg.commit(m2.evolve(hidden_size=32))  # the head moves on; we train version 2
    data = reg.add(fs.DatasetEntity(name="digits", num_examples=100))
    cfg = reg.add(fs.ConfigEntity(name="cfg", params={"steps": 10, "lr": 0.1}))
    other_data = reg.add(fs.DatasetEntity(name="unrelated"))

    run = reg.call("tests.start_run", m2.ref, f"@{data.lineage_id}", config=cfg.lineage_id)
    cfg2 = reg.commit(cfg.evolve(params={"steps": 99}))  # later edits must not leak in
    ck, finished = reg.call("tests.train", run, model=m2.ref)

    assert isinstance(ck, fs.CheckpointEntity) and ck.version == 1
    assert finished.lineage_id == run.lineage_id and finished.version == 2
    assert finished.status == "completed"
    # "which run, config and dataset produced this checkpoint?"
    ancestors = set(reg.ancestors(ck))
    assert {run.ref, cfg.ref, data.ref, m2.ref} <= ancestors
    assert not {m3.ref, cfg2.ref, other_data.ref, finished.ref} & ancestors
    produced_by = [e for e in map(reg.get, ancestors) if isinstance(e, fs.TrainingRunEntity)]
    assert produced_by == [run]
    assert reg.get(produced_by[0].config) == cfg and reg.get(produced_by[0].dataset) == data
    # and the calls that made it
    start_rec = only_record(reg, "tests.start_run")
    train_rec = only_record(reg, "tests.train")
    assert start_rec.outputs == (run.ref,)
    assert set(start_rec.inputs) == {m2.ref, data.ref, cfg.ref}
    assert train_rec.inputs == (run.ref, m2.ref)
    assert train_rec.outputs == (ck.ref, finished.ref)
    assert [r for r in reg.callables.records() if ck.ref in r.outputs] == [train_rec]
    # downstream of the dataset: the run, the checkpoint and both call records
    descendants = set(reg.descendants(data))
    assert {run.ref, finished.ref, ck.ref, start_rec.ref, train_rec.ref} <= descendants
    assert other_data.ref not in descendants and m3.ref not in descendants
    assert set(reg.descendants(other_data)) == set()


# -- 7. events ---------------------------------------------------------------------------------


def test_call_events_order_and_causation(reg: fs.EntityRegistry) -> None:
    log: list[fs.Event] = []
    for topic in (fs.CallStarted, fs.CallCompleted, fs.CallFailed, Ping):
        reg.bus.subscribe(topic, log.append)

    @fs.callable("tests.pinger")
    def pinger(counter: Counter) -> Counter:
        reg.bus.publish(Ping(n=1))
        reg.bus.publish(Ping(n=2))
        return counter.evolve(n=counter.n + 1)

    reg.callables.include(pinger)
    c = reg.add(Counter())
    out = reg.call("tests.pinger", c)
    record = only_record(reg, "tests.pinger")
    assert [type(e) for e in log] == [fs.CallStarted, Ping, Ping, fs.CallCompleted]
    started, p1, p2, completed = log
    assert isinstance(started, fs.CallStarted) and isinstance(completed, fs.CallCompleted)
    assert started.function == completed.function == "tests.pinger@1"
    assert started.subject == record.ref and started.inputs == (c.ref,)
    assert p1.causation_id == started.id and p2.causation_id == started.id
    assert completed.causation_id == started.id
    assert completed.subject == record.ref
    assert completed.outputs == record.outputs == (out.ref,)
    assert completed.result == out.ref
    assert completed.duration_s == pytest.approx(record.duration_s)
    # outside the call, events are no longer caused by it
    reg.bus.publish(Ping(n=3))
    assert log[-1].causation_id != started.id

    reg.flush_events()
    logged = reg.events(topic=fs.CallCompleted)
    assert len(logged) == 1 and logged[0].event.id == completed.id
    assert logged[0].event.subject == record.ref
    assert logged[0].event.subject.lineage_id == record.lineage_id
    about_record = [e.event.topic for e in reg.events(subject=record.lineage_id)]
    assert about_record.count(fs.CallStarted.topic) == 1  # logged once, though delivered first
    assert about_record.index(fs.CallStarted.topic) < about_record.index(fs.CallCompleted.topic)
    assert [e.event.id for e in reg.events(topic=fs.CallStarted)] == [started.id]
    assert [e.event.n for e in reg.events(topic=Ping)] == [1, 2, 3]


def test_failure_emits_call_failed_and_propagates_the_same_exception(
    reg: fs.EntityRegistry,
) -> None:
    log: list[fs.Event] = []
    for topic in (fs.CallStarted, fs.CallCompleted, fs.CallFailed):
        reg.bus.subscribe(topic, log.append)

    class LocalError(KeyError):
        pass

    def fails(counter: Counter) -> Counter:
        raise LocalError("missing thing")

    c = reg.add(Counter())
    with pytest.raises(LocalError) as info:
        reg.call(fails, c)
    assert type(info.value) is LocalError
    record = only_record(reg, "fails")
    assert [type(e) for e in log] == [fs.CallStarted, fs.CallFailed]
    started, failed = log
    assert isinstance(failed, fs.CallFailed)
    assert failed.error_type == "LocalError" and "missing thing" in failed.error_message
    assert failed.subject == record.ref == started.subject
    assert failed.causation_id == started.id and failed.function == "fails@1"
    assert record.status == "failed" and (record.error or "").startswith("LocalError:")
    reg.flush_events()
    logged = reg.events(topic=fs.CallFailed)
    assert [e.event.id for e in logged] == [failed.id]
    assert logged[0].event.subject.lineage_id == record.lineage_id
    assert reg.events(topic=fs.CallCompleted) == []


def test_persisted_log_keeps_one_calls_events_in_publication_order(tmp_path: Any) -> None:
    # a long writer interval: the buffered events are written only at flush (deterministic)
    reg = memory(event_interval=3600)
    try:

        def pinger(counter: Counter) -> Counter:
            reg.bus.publish(Ping(n=1))
            return counter.evolve(n=1)

        reg.call(pinger, reg.add(Counter()))
        reg.flush_events()
        topics = [
            e.event.topic
            for e in reg.events()
            if e.event.topic in (fs.CallStarted.topic, Ping.topic, fs.CallCompleted.topic)
        ]
        assert topics == [fs.CallStarted.topic, Ping.topic, fs.CallCompleted.topic]
    finally:
        reg.close()


# -- 8. async ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_call_with_async_and_sync_functions(reg: fs.EntityRegistry) -> None:
    areg = fs.AsyncEntityRegistry(reg)
    log: list[fs.Event] = []
    for topic in (fs.CallStarted, Ping, fs.CallCompleted):
        reg.bus.subscribe(topic, log.append)
    threads: dict[str, int] = {}

    async def abump(counter: Counter, by: int = 1) -> Counter:
        threads["async"] = threading.get_ident()
        await anyio.lowlevel.checkpoint()
        reg.bus.publish(Ping(n=1))
        return counter.evolve(n=counter.n + by)

    def sbump(counter: Counter, by: int = 1) -> Counter:
        threads["sync"] = threading.get_ident()
        reg.bus.publish(Ping(n=2))
        return counter.evolve(n=counter.n + by)

    c = reg.add(Counter())
    c = await areg.call(abump, c, by="2")
    assert c.n == 2 and c.version == 2
    assert threads["async"] == threading.get_ident()  # awaited on this loop
    c = await areg.call(sbump, c.lineage_id, by=3)
    assert c.n == 5 and c.version == 3
    assert threads["sync"] != threading.get_ident()  # ran on a worker thread
    assert reg.callables.get("abump").is_async and not reg.callables.get("sbump").is_async
    assert [r.status for r in reg.callables.records()] == ["completed", "completed"]
    assert [r.outputs for r in reg.callables.records()] == [
        (fs.EntityRef(c.lineage_id, 2),),
        (c.ref,),
    ]
    # causation crosses the await and the worker thread
    starts = [e for e in log if isinstance(e, fs.CallStarted)]
    pings = [e for e in log if isinstance(e, Ping)]
    assert [p.causation_id for p in pings] == [s.id for s in starts]
    assert [type(e) for e in log] == [fs.CallStarted, Ping, fs.CallCompleted] * 2
    # named calls and address resolution
    assert (await areg.call("abump", f"@{c.lineage_id}")).n == 6
    assert await areg.resolve(f"@{c.lineage_id}.n") == 6
    assert areg.callables is reg.callables


@pytest.mark.anyio
async def test_aopen_call_and_errors(store_url: str, tmp_path: Any) -> None:
    areg = await fs.aopen(store_url, blob_dir=tmp_path / "blobs")
    try:

        async def fails(counter: Counter) -> Counter:
            await anyio.lowlevel.checkpoint()
            raise Boom("async boom")

        c = await areg.add(Counter())
        with pytest.raises(Boom, match="async boom"):
            await areg.call(fails, c)
        with pytest.raises(fs.ValidationError):
            await areg.call(fails, Counter())
        with pytest.raises(fs.NotFoundError):
            await areg.call("nope")
        records = areg.sync.callables.records()
        assert [(r.status, r.error) for r in records] == [("failed", "Boom: async boom")]
        assert [e.event.topic for e in await areg.events(topic=fs.CallFailed)] == [
            fs.CallFailed.topic
        ]
    finally:
        await areg.close()


@pytest.mark.anyio
async def test_sync_call_of_an_async_function_inside_a_running_loop(
    reg: fs.EntityRegistry,
) -> None:
    loop_thread = threading.get_ident()
    ran_on: list[int] = []
    log: list[fs.Event] = []
    for topic in (fs.CallStarted, Ping):
        reg.bus.subscribe(topic, log.append)

    async def abump(counter: Counter) -> Counter:
        ran_on.append(threading.get_ident())
        await anyio.lowlevel.checkpoint()
        reg.bus.publish(Ping(n=1))
        return counter.evolve(n=counter.n + 1)

    c = reg.add(Counter())
    out = reg.call(abump, c)  # no await: the notebook case
    assert out.n == 1 and out.version == 2 and reg.get(c.lineage_id) == out
    assert ran_on and ran_on[0] != loop_thread  # on the registry's private loop thread
    assert only_record(reg, "abump").function_version == 1
    assert log[1].causation_id == log[0].id  # context travelled to the loop thread


def test_sync_call_of_an_async_function_without_a_loop() -> None:
    reg = memory()

    async def abump(counter: Counter) -> Counter:
        await anyio.lowlevel.checkpoint()
        return counter.evolve(n=counter.n + 1)

    async def afail(counter: Counter) -> Counter:
        raise Boom("x")

    c = reg.add(Counter())
    assert reg.call(abump, c).n == 1
    with pytest.raises(Boom):
        reg.call(afail, c)
    assert [r.status for r in reg.callables.records()] == ["completed", "failed"]
    reg.close()  # stops the loop thread
    with pytest.raises(fs.StoreClosedError):
        reg.call(abump, c)


@pytest.mark.anyio
async def test_concurrent_async_calls_on_different_lineages_all_commit(
    reg: fs.EntityRegistry,
) -> None:
    areg = fs.AsyncEntityRegistry(reg)
    n = 8
    counters = [reg.add(Counter(name=f"c{i}")) for i in range(n)]
    entered = 0
    all_in = anyio.Event()

    async def gather(counter: Counter) -> Counter:
        nonlocal entered
        entered += 1
        if entered == n:
            all_in.set()
        await all_in.wait()  # every call is in flight at once, or this never returns
        return counter.evolve(n=counter.n + 1)

    results: dict[int, Counter] = {}

    async def one(i: int) -> None:
        results[i] = await areg.call(gather, counters[i])

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
    assert sorted(results) == list(range(n))
    for i, c in enumerate(counters):
        assert results[i].lineage_id == c.lineage_id and results[i].version == 2
        assert reg.get(c.lineage_id).n == 1
    records = reg.callables.records("gather")
    assert len(records) == n and {r.status for r in records} == {"completed"}
    assert {r.inputs for r in records} == {(c.ref,) for c in counters}


@pytest.mark.anyio
async def test_cancelled_async_call_leaves_a_failed_record(reg: fs.EntityRegistry) -> None:
    areg = fs.AsyncEntityRegistry(reg)
    failed: list[fs.CallFailed] = []
    reg.bus.subscribe(fs.CallFailed, failed.append)
    started = anyio.Event()
    never = anyio.Event()

    async def hang(counter: Counter) -> Counter:
        started.set()
        await never.wait()
        return counter.evolve(n=1)

    c = reg.add(Counter())
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(areg.call, hang, c)
            await started.wait()
            tg.cancel_scope.cancel()
    record = only_record(reg, "hang")
    assert record.status == "failed" and "Cancel" in (record.error or "")
    assert record.outputs == () and record.inputs == (c.ref,)
    assert [e.version for e in reg.history(c.lineage_id)] == [1]
    assert len(failed) == 1 and "Cancel" in failed[0].error_type


# -- 9. concurrency ----------------------------------------------------------------------------


def test_threads_racing_on_one_lineage_commit_or_conflict(reg: fs.EntityRegistry) -> None:
    reg.callables.register(increment, "tests.increment")
    counter = reg.add(Counter())
    threads_n = 8
    barrier = threading.Barrier(threads_n, timeout=WAIT)
    outcomes: list[str] = []
    unexpected: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        try:
            reg.call("tests.increment", counter.lineage_id)
            outcome = "ok"
        except fs.ConflictError:
            outcome = "conflict"
        except BaseException as exc:  # noqa: BLE001
            unexpected.append(exc)
            return
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert unexpected == [] and len(outcomes) == threads_n
    successes = outcomes.count("ok")
    assert successes >= 1
    history = reg.history(counter.lineage_id)
    assert reg.get(counter.lineage_id).n == successes == len(history) - 1
    assert [e.n for e in history] == list(range(successes + 1))
    completed = reg.callables.records("tests.increment", status="completed")
    failed = reg.callables.records("tests.increment", status="failed")
    assert len(completed) == successes and len(failed) == threads_n - successes
    assert all("conflict" in (r.error or "").lower() for r in failed)
    assert all(r.outputs == () for r in failed)
    assert sorted(r.outputs[0].version for r in completed) == list(range(2, successes + 2))
