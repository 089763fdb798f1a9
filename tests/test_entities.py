"""The ``Entity`` base and the AI entity types: identity, drafts, immutability, validation."""

from __future__ import annotations

import copy
import json
import math
import pickle
from datetime import UTC, datetime, timedelta, timezone
from typing import ClassVar
from uuid import UUID, uuid4

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import PositiveInt

import forseti as fs
from forseti.entities import (
    FrozenDict,
    Name,
    deep_freeze,
    entity_type,
    entity_types,
    thaw,
)
from forseti.errors import UnknownEntityTypeError

AI_TYPES = [
    fs.ModelEntity,
    fs.CheckpointEntity,
    fs.DatasetEntity,
    fs.ConfigEntity,
    fs.TrainingRunEntity,
    fs.PipelineEntity,
    fs.TrainingStageEntity,
]
EXPECTED_SYSTEM_FIELDS = (
    "id",
    "lineage_id",
    "version",
    "previous_id",
    "created_at",
    "derived_from",
)


def blob(data: bytes = b"weights", fmt: str = "safetensors") -> fs.BlobRef:
    import hashlib

    return fs.BlobRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data), format=fmt)


def ref(version: int = 1) -> fs.EntityRef:
    return fs.EntityRef(uuid4(), version)


def checkpoint(**kw: object) -> fs.CheckpointEntity:
    fields: dict[str, object] = dict(run=ref(2), model=ref(1), step=10, weights=blob())
    fields.update(kw)
    return fs.CheckpointEntity(**fields)


# Custom entity types, defined at module level as users would.


class EvalReport(fs.Entity):
    entity_type: ClassVar[str] = "tests.EvalReport"

    name: Name
    score: float
    model: fs.EntityRef | None = None
    tags: tuple[str, ...] = ()


class LoRAModel(fs.ModelEntity):
    entity_type: ClassVar[str] = "tests.LoRAModel"

    rank: PositiveInt = 8


class Unnamed(fs.Entity):
    note: str = ""


# -- system fields ---------------------------------------------------------------------------


def test_system_fields_are_defined_once_on_the_base() -> None:
    assert fs.SYSTEM_FIELDS == EXPECTED_SYSTEM_FIELDS
    assert tuple(fs.Entity.model_fields) == fs.SYSTEM_FIELDS
    for cls in [*AI_TYPES, EvalReport, LoRAModel]:
        # every type inherits them first, in order, with the base's own definition
        assert tuple(cls.model_fields)[: len(fs.SYSTEM_FIELDS)] == fs.SYSTEM_FIELDS
        for name in fs.SYSTEM_FIELDS:
            assert cls.model_fields[name].annotation == fs.Entity.model_fields[name].annotation
        assert not set(cls.user_fields()) & set(fs.SYSTEM_FIELDS)
        assert set(cls.user_fields()) | set(fs.SYSTEM_FIELDS) == set(cls.model_fields)


def test_new_entity_gets_fresh_identity_and_version_one() -> None:
    a = fs.ModelEntity(name="tiny")
    b = fs.ModelEntity(name="tiny")
    assert a.version == 1 and a.previous_id is None and a.derived_from == ()
    assert isinstance(a.id, UUID) and isinstance(a.lineage_id, UUID)
    assert len({a.id, a.lineage_id, b.id, b.lineage_id}) == 4
    assert a.created_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - a.created_at) < timedelta(minutes=1)
    assert a.ref == fs.EntityRef(a.lineage_id, 1)


def test_created_at_is_normalised_to_utc_and_must_be_aware() -> None:
    local = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    e = fs.ModelEntity(name="x", created_at=local)
    assert e.created_at == local
    assert e.created_at.utcoffset() == timedelta(0)
    assert e.created_at.hour == 10
    with pytest.raises(fs.ValidationError):
        fs.ModelEntity(name="x", created_at=datetime(2024, 5, 1, 12, 0))


@pytest.mark.parametrize(
    "fields",
    [
        {"version": 2},  # a later version must say what it came from
        {"version": 1, "previous_id": uuid4()},  # a first version cannot
        {"version": 0},
        {"version": -3, "previous_id": uuid4()},
        {"id": "not-a-uuid"},
        {"lineage_id": 7},
        {"derived_from": ("nope",)},
    ],
)
def test_inconsistent_system_fields_are_rejected(fields: dict[str, object]) -> None:
    with pytest.raises(fs.ValidationError):
        fs.ModelEntity(name="x", **fields)


def test_validation_error_keeps_structured_details() -> None:
    with pytest.raises(fs.ValidationError) as info:
        fs.CheckpointEntity(step=-1)
    locs = {e["loc"][0] for e in info.value.errors if e["loc"]}
    assert {"run", "model", "weights", "step"} <= locs
    assert isinstance(info.value, ValueError)
    assert "CheckpointEntity" in str(info.value)


# -- evolve ----------------------------------------------------------------------------------


def test_evolve_makes_the_next_version_draft() -> None:
    src = ref()
    v1 = fs.ModelEntity(name="tiny", hidden_size=64, derived_from=(src,))
    v2 = v1.evolve(hidden_size=128)
    assert type(v2) is fs.ModelEntity
    assert v2.id != v1.id
    assert v2.lineage_id == v1.lineage_id
    assert v2.version == v1.version + 1
    assert v2.previous_id == v1.id
    assert v2.created_at >= v1.created_at
    assert v2.hidden_size == 128 and v2.name == "tiny"
    assert v2.derived_from == ()  # provenance belongs to one version, not the lineage
    assert v1.hidden_size == 64 and v1.derived_from == (src,)  # the source is untouched

    other = ref(3)
    v3 = v2.evolve(derived_from=(other,))
    assert v3.derived_from == (other,)
    assert (v3.version, v3.previous_id) == (3, v2.id)


def test_evolve_chain_counts_versions_and_links_each_to_its_parent() -> None:
    chain = [fs.ConfigEntity(name="c", params={"step": 0})]
    for i in range(1, 6):
        chain.append(chain[-1].evolve(params={"step": i}))
    assert [c.version for c in chain] == list(range(1, 7))
    assert [c.previous_id for c in chain[1:]] == [c.id for c in chain[:-1]]
    assert len({c.id for c in chain}) == len(chain)
    assert {c.lineage_id for c in chain} == {chain[0].lineage_id}


def test_evolve_keeps_the_subclass() -> None:
    lora = LoRAModel(name="adapter", rank=4)
    nxt = lora.evolve(rank=16)
    assert type(nxt) is LoRAModel and nxt.rank == 16 and nxt.entity_type == "tests.LoRAModel"


@pytest.mark.parametrize("field", [f for f in EXPECTED_SYSTEM_FIELDS if f != "derived_from"])
def test_evolve_rejects_system_fields(field: str) -> None:
    e = fs.ModelEntity(name="x")
    value = {"version": 5, "created_at": datetime.now(UTC)}.get(field, uuid4())
    with pytest.raises(fs.ValidationError) as info:
        e.evolve(**{field: value})
    assert field in str(info.value)


def test_evolve_rejects_unknown_fields_and_invalid_values() -> None:
    e = fs.ModelEntity(name="x")
    with pytest.raises(fs.ValidationError) as info:
        e.evolve(hidden_sise=3)
    assert "hidden_sise" in str(info.value)
    with pytest.raises(fs.ValidationError):
        e.evolve(hidden_size=0)
    run = fs.TrainingRunEntity(name="r", total_steps=10, step=10)
    with pytest.raises(fs.ValidationError):
        run.evolve(step=11)  # evolve re-validates the whole entity


# -- immutability ----------------------------------------------------------------------------


def test_entities_are_frozen() -> None:
    e = fs.ModelEntity(name="x", hidden_size=8)
    for field, value in [("hidden_size", 9), ("version", 2), ("id", uuid4()), ("name", "y")]:
        with pytest.raises((ValueError, TypeError, AttributeError)):
            setattr(e, field, value)
    assert (e.hidden_size, e.version, e.name) == (8, 1, "x")


def test_nested_json_maps_are_deeply_frozen() -> None:
    raw = {"optim": {"lr": 1e-3, "betas": [0.9, 0.99]}, "layers": [{"dim": 4}, {"dim": 8}]}
    c = fs.ConfigEntity(name="cfg", params=raw)
    assert isinstance(c.params, FrozenDict)
    assert isinstance(c.params["optim"], FrozenDict)
    assert isinstance(c.params["optim"]["betas"], tuple)
    assert isinstance(c.params["layers"][1], FrozenDict)
    assert thaw(c.params) == raw  # the same value, frozen
    with pytest.raises(TypeError):
        c.params["new"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        c.params["optim"]["lr"] = 1.0  # type: ignore[index]
    with pytest.raises(AttributeError):
        c.params["optim"]["betas"].append(1.0)  # type: ignore[union-attr]
    with pytest.raises(TypeError):
        del c.params["optim"]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        c.params._data = {}  # type: ignore[misc]
    # the caller's objects are not shared: changing them afterwards changes nothing
    raw["optim"]["lr"] = 5.0
    raw["layers"].append({"dim": 16})
    assert c.params["optim"]["lr"] == 1e-3
    assert len(c.params["layers"]) == 2
    assert hash(c.params) == hash(fs.ConfigEntity(name="cfg", params=c.params).params)


def test_frozen_maps_on_other_types() -> None:
    run = fs.TrainingRunEntity(name="r", metrics={"loss": 0.5})
    ds = fs.DatasetEntity(name="d", num_examples=10, splits={"train": 8, "test": 2})
    m = fs.ModelEntity(name="m", hyperparameters={"act": "gelu", "sizes": [1, 2]})
    for mapping in (run.metrics, ds.splits, m.hyperparameters):
        assert isinstance(mapping, FrozenDict)
        with pytest.raises(TypeError):
            mapping["x"] = 1  # type: ignore[index]
    assert m.hyperparameters["sizes"] == (1, 2)


def test_to_state_is_plain_json() -> None:
    c = fs.ConfigEntity(name="c", params={"a": {"b": [1, 2, {"c": None}]}}, derived_from=(ref(),))
    state = c.to_state()
    text = json.dumps(state)  # no FrozenDict, tuple or UUID objects left
    back = json.loads(text)
    assert back["params"] == {"a": {"b": [1, 2, {"c": None}]}}
    assert fs.ConfigEntity.from_state(back) == c


@pytest.mark.parametrize(
    "params",
    [
        {1: "int key"},
        {"a": {2: "nested int key"}},
        {"a": object()},
        {"a": {1, 2}},
        {"a": b"bytes"},
    ],
)
def test_json_maps_accept_only_json_like_values(params: dict[object, object]) -> None:
    with pytest.raises(fs.ValidationError):
        fs.ConfigEntity(name="c", params=params)


def test_deep_freeze_and_thaw_are_inverse() -> None:
    raw = {"a": [1, {"b": (2, 3)}], "c": None}
    frozen = deep_freeze(raw)
    assert thaw(frozen) == {"a": [1, {"b": [2, 3]}], "c": None}
    assert deep_freeze(thaw(frozen)) == frozen


def test_entities_with_frozen_maps_can_be_pickled_and_copied() -> None:
    """Entities cross process boundaries (multiprocessing, Ray) by pickle; copies must work."""
    c = fs.ConfigEntity(name="c", params={"lr": 0.1, "nested": {"x": [1, 2]}})
    for clone in (pickle.loads(pickle.dumps(c)), copy.deepcopy(c)):
        assert clone == c and hash(clone) == hash(c)
        assert isinstance(clone.params, FrozenDict)
        assert isinstance(clone.params["nested"], FrozenDict)
        assert clone.params["nested"]["x"] == (1, 2)
        with pytest.raises(TypeError):
            clone.params["lr"] = 1.0  # still frozen after the round trip
    assert copy.copy(c.params) == c.params


# -- AI types: validation --------------------------------------------------------------------


@pytest.mark.parametrize("field", ["hidden_size", "num_layers", "vocab_size", "num_parameters"])
@pytest.mark.parametrize("bad", [0, -1])
def test_model_sizes_must_be_positive(field: str, bad: int) -> None:
    with pytest.raises(fs.ValidationError):
        fs.ModelEntity(name="m", **{field: bad})
    assert getattr(fs.ModelEntity(name="m", **{field: 1}), field) == 1


def test_names_are_required_stripped_and_non_empty() -> None:
    with pytest.raises(fs.ValidationError):
        fs.ModelEntity()  # type: ignore[call-arg]
    for blank in ("", "   ", "x" * 257):
        with pytest.raises(fs.ValidationError):
            fs.ModelEntity(name=blank)
    assert fs.ModelEntity(name="  tiny \n").name == "tiny"


def test_checkpoint_needs_run_model_and_weights() -> None:
    good = checkpoint()
    assert good.step == 10
    for missing in ("run", "model", "weights", "step"):
        fields = dict(run=ref(), model=ref(), step=1, weights=blob())
        del fields[missing]
        with pytest.raises(fs.ValidationError) as info:
            fs.CheckpointEntity(**fields)
        assert missing in str(info.value)
    with pytest.raises(fs.ValidationError):
        checkpoint(step=-1)
    assert checkpoint(run=None).run is None  # imported weights: no run, but said explicitly
    with pytest.raises(fs.ValidationError):
        checkpoint(weights="sha256:abc")
    with pytest.raises(fs.ValidationError):
        checkpoint(run=(uuid4(), 0))  # a ref names a version >= 1
    with pytest.raises(fs.ValidationError):
        checkpoint(metrics={"loss": float("nan")})


def test_run_progress_rules() -> None:
    now = datetime.now(UTC)
    assert fs.TrainingRunEntity(name="r", step=10, total_steps=10).step == 10
    with pytest.raises(fs.ValidationError):
        fs.TrainingRunEntity(name="r", step=11, total_steps=10)
    with pytest.raises(fs.ValidationError):
        fs.TrainingRunEntity(name="r", total_steps=0)
    with pytest.raises(fs.ValidationError):
        fs.TrainingRunEntity(name="r", step=-1)
    with pytest.raises(fs.ValidationError):
        fs.TrainingRunEntity(name="r", status="failed")
    assert fs.TrainingRunEntity(name="r", status="failed", error="OOM").error == "OOM"
    for status in ("pending", "running"):
        with pytest.raises(fs.ValidationError):
            fs.TrainingRunEntity(name="r", status=status, finished_at=now)
    for status in ("completed", "cancelled"):
        assert fs.TrainingRunEntity(name="r", status=status, finished_at=now).finished_at == now
    with pytest.raises(fs.ValidationError):
        fs.TrainingRunEntity(
            name="r", status="completed", started_at=now, finished_at=now - timedelta(seconds=1)
        )
    with pytest.raises(fs.ValidationError):
        fs.TrainingRunEntity(name="r", status="exploded")


def test_dataset_rules() -> None:
    for field in ("num_examples", "size_bytes"):
        with pytest.raises(fs.ValidationError):
            fs.DatasetEntity(name="d", **{field: 0})
    assert fs.DatasetEntity(name="d", num_examples=10, splits={"a": 6, "b": 4}).splits["b"] == 4
    with pytest.raises(fs.ValidationError):
        fs.DatasetEntity(name="d", num_examples=10, splits={"a": 6, "b": 5})
    with pytest.raises(fs.ValidationError):
        fs.DatasetEntity(name="d", splits={"a": -1})
    # without a total, splits are not bounded
    assert sum(fs.DatasetEntity(name="d", splits={"a": 10**6}).splits.values()) == 10**6
    d = fs.DatasetEntity(name="d", num_examples=10, splits={"a": 10})
    with pytest.raises(fs.ValidationError):
        d.evolve(num_examples=9)


def test_stage_cannot_depend_on_itself() -> None:
    ok = fs.TrainingStageEntity(name="sft", kind="sft", depends_on=("pretrain",))
    assert ok.depends_on == ("pretrain",)
    with pytest.raises(fs.ValidationError):
        fs.TrainingStageEntity(name="sft", kind="sft", depends_on=("pretrain", "sft"))
    with pytest.raises(fs.ValidationError):  # names are compared after stripping whitespace
        fs.TrainingStageEntity(name="sft", kind="sft", depends_on=(" sft ",))
    with pytest.raises(fs.ValidationError):
        fs.TrainingStageEntity(name="sft", kind="sft", order=-1)


def test_pipeline_lists_each_stage_lineage_once() -> None:
    a, b = ref(1), ref(3)
    assert fs.PipelineEntity(name="p", stages=(a, b)).stages == (a, b)
    with pytest.raises(fs.ValidationError):
        fs.PipelineEntity(name="p", stages=(a, fs.EntityRef(a.lineage_id, 2)))
    with pytest.raises(fs.ValidationError):
        fs.PipelineEntity(name="p", stages=(a, a))


def test_extra_fields_are_forbidden() -> None:
    with pytest.raises(fs.ValidationError):
        fs.ModelEntity(name="m", hiden_size=3)


# -- references ------------------------------------------------------------------------------


def test_references_yield_ref_fields_and_derived_from() -> None:
    run, model, src = ref(2), ref(1), ref(5)
    ck = checkpoint(run=run, model=model, derived_from=(src,))
    assert sorted(ck.references(), key=str) == sorted(
        [("derived_from", src), ("run", run), ("model", model)], key=str
    )

    stages = (ref(), ref(2))
    pipe = fs.PipelineEntity(name="p", stages=stages)
    assert list(pipe.references()) == [("stages", s) for s in stages]

    r = fs.TrainingRunEntity(name="r", model=model)  # config/dataset unset: not references
    assert list(r.references()) == [("model", model)]
    assert list(fs.ConfigEntity(name="c").references()) == []
    assert list(EvalReport(name="e", score=1.0, model=model).references()) == [("model", model)]


# -- the type registry ------------------------------------------------------------------------


def test_builtin_types_are_registered_by_stable_names() -> None:
    names = {
        "forseti.Model": fs.ModelEntity,
        "forseti.Checkpoint": fs.CheckpointEntity,
        "forseti.Dataset": fs.DatasetEntity,
        "forseti.Config": fs.ConfigEntity,
        "forseti.TrainingRun": fs.TrainingRunEntity,
        "forseti.Pipeline": fs.PipelineEntity,
        "forseti.TrainingStage": fs.TrainingStageEntity,
    }
    for name, cls in names.items():
        assert cls.entity_type == name
        assert entity_type(name) is cls
    everything = entity_types()
    assert set(names) | {"tests.EvalReport", "tests.LoRAModel"} <= set(everything)
    models = entity_types(fs.ModelEntity)
    assert models["tests.LoRAModel"] is LoRAModel
    assert "forseti.Config" not in models


def test_unknown_type_name_raises_unknown_entity_type_error() -> None:
    with pytest.raises(UnknownEntityTypeError) as info:
        entity_type("tests.NoSuchThing")
    assert isinstance(info.value, fs.NotFoundError) and isinstance(info.value, LookupError)
    assert "tests.NoSuchThing" in str(info.value)


def test_subclass_without_a_name_gets_module_and_qualname() -> None:
    assert Unnamed.entity_type == f"{__name__}.Unnamed"
    assert entity_type(Unnamed.entity_type) is Unnamed


def test_a_type_name_cannot_be_taken_by_another_class() -> None:
    with pytest.raises(TypeError) as info:

        class Impostor(fs.Entity):
            entity_type: ClassVar[str] = "tests.EvalReport"

    assert "tests.EvalReport" in str(info.value)
    assert entity_type("tests.EvalReport") is EvalReport
    with pytest.raises(TypeError):

        class Builtinish(fs.ModelEntity):
            entity_type: ClassVar[str] = "forseti.Model"

    assert entity_type("forseti.Model") is fs.ModelEntity


def test_custom_type_round_trips_through_a_store(store_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = fs.ModelEntity(name="base")
    with fs.open(store_url, blob_dir=tmp_path / "blobs") as reg:
        reg.add(model)
        report = reg.add(EvalReport(name="eval", score=0.75, model=model.ref, tags=("a", "b")))
        lora = reg.add(LoRAModel(name="adapter", rank=4))
        lora2 = reg.commit(lora.evolve(rank=32))
        fresh = (
            reg
            if store_url.startswith("memory")
            else fs.open(store_url, blob_dir=tmp_path / "blobs")
        )
        try:
            got = fresh.get(report.lineage_id)
            assert type(got) is EvalReport and got == report
            assert got.tags == ("a", "b")
            assert fresh.ancestors(got) == [model.ref]
            history = fresh.history(lora.lineage_id)
            assert [type(e) for e in history] == [LoRAModel, LoRAModel]
            assert history == [lora, lora2]
            found = fresh.find(fs.ModelEntity, name="adapter")
            assert found == [lora2] and type(found[0]) is LoRAModel
            assert fresh.find(EvalReport) == [report]
        finally:
            if fresh is not reg:
                fresh.close()


# -- references as values -----------------------------------------------------------------------


def test_entity_ref_validation() -> None:
    lid = uuid4()
    r = fs.EntityRef(str(lid), 3)
    assert r == (lid, 3) and r.lineage_id == lid and isinstance(r.lineage_id, UUID)
    assert hash(r) == hash(fs.EntityRef(lid, 3))
    assert str(r) == f"{lid}@3"
    for bad in [("nope", 1), (lid, 0), (lid, -1), (lid, True), (lid, 1.0), (lid, "1"), (None, 1)]:
        with pytest.raises(ValueError):
            fs.EntityRef(*bad)  # type: ignore[arg-type]


def test_entity_ref_fields_accept_pairs_and_reject_bad_ones() -> None:
    lid = uuid4()
    r = fs.TrainingRunEntity(name="r", model=[str(lid), 2])
    assert r.model == fs.EntityRef(lid, 2) and isinstance(r.model, fs.EntityRef)
    for bad in [[str(lid)], [str(lid), 0], ["x", 1], [str(lid), 1, 2]]:
        with pytest.raises(fs.ValidationError):
            fs.TrainingRunEntity(name="r", model=bad)


def test_blob_ref_validation() -> None:
    sha = "AB" * 32
    b = fs.BlobRef(sha256=sha, size=0)
    assert b.sha256 == sha.lower() and b.format == "bin"
    assert fs.BlobRef(sha256=sha, size=5, format="safetensors").format == "safetensors"
    bad = [
        dict(sha256="ab" * 31, size=1),
        dict(sha256="zz" * 32, size=1),
        dict(sha256="ab" * 32, size=-1),
        dict(sha256="ab" * 32, size=1, format="SafeTensors"),
        dict(sha256="ab" * 32, size=1, format=""),
        dict(sha256="ab" * 32, size=1, format="a b"),
        dict(sha256="ab" * 32, size=1, extra=1),
        dict(size=1),
    ]
    for fields in bad:
        with pytest.raises(ValueError):
            fs.BlobRef(**fields)  # type: ignore[arg-type]
    with pytest.raises((ValueError, TypeError, AttributeError)):
        b.size = 10  # type: ignore[misc]
    assert b.size == 0


# -- state round trips -------------------------------------------------------------------------


def _msgpack_round_trip(entity: fs.Entity) -> fs.Entity:
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(entity.to_state()))
    return type(entity).from_state(state)


def test_every_ai_type_round_trips_through_msgpack() -> None:
    now = datetime.now(UTC)
    samples: list[fs.Entity] = [
        fs.ModelEntity(
            name="m", hidden_size=4, hyperparameters={"a": [1, {"b": None}]}, weights=blob()
        ),
        checkpoint(optimizer_state=blob(b"opt"), metrics={"loss": 0.25}, derived_from=(ref(),)),
        fs.DatasetEntity(name="d", num_examples=3, splits={"train": 3}, data=blob(b"d")),
        fs.ConfigEntity(name="c", params={"lr": 0.1}),
        fs.TrainingRunEntity(
            name="r",
            model=ref(),
            status="completed",
            started_at=now,
            finished_at=now,
            metrics={"acc": 0.9},
        ),
        fs.PipelineEntity(name="p", stages=(ref(), ref())),
        fs.TrainingStageEntity(name="s", kind="sft", depends_on=("a",), run=ref()),
        LoRAModel(name="l", rank=2),
    ]
    for e in samples:
        back = _msgpack_round_trip(e)
        assert back == e and type(back) is type(e)
        evolved = e.evolve()
        assert _msgpack_round_trip(evolved) == evolved


def test_infinite_float_values_round_trip_through_state() -> None:
    """FloatMap allows infinities ("never NaN"); the stored state must keep them."""
    run = fs.TrainingRunEntity(name="r", metrics={"best_loss": math.inf, "worst": -math.inf})
    back = _msgpack_round_trip(run)
    assert back.metrics == {"best_loss": math.inf, "worst": -math.inf}
    cfg = fs.ConfigEntity(name="c", params={"clip": math.inf})
    assert _msgpack_round_trip(cfg) == cfg


_json_scalar = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_json = st.recursive(
    _json_scalar,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)
_params = st.dictionaries(st.text(max_size=8), _json, max_size=6)


@settings(max_examples=200, deadline=None)
@given(params=_params)
def test_config_params_round_trip_through_msgpack(params: dict[str, object]) -> None:
    c = fs.ConfigEntity(name="cfg", params=params)
    assert thaw(c.params) == json.loads(json.dumps(params))  # lists stay lists when thawed
    back = _msgpack_round_trip(c)
    assert back == c
    assert back.params == c.params and back.to_state() == c.to_state()


_any_json_scalar = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
)
_any_params = st.dictionaries(
    st.text(max_size=6),
    st.recursive(_any_json_scalar, lambda inner: st.lists(inner, max_size=3), max_leaves=6),
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(params=_any_params)
def test_config_params_are_rejected_up_front_or_round_trip(params: dict[str, object]) -> None:
    """Any JSON-like value is either refused with ValidationError or stored faithfully."""
    try:
        c = fs.ConfigEntity(name="cfg", params=params)
    except fs.ValidationError:
        return
    assert _msgpack_round_trip(c) == c
