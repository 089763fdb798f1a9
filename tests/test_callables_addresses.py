"""Addresses: ``"@<uuid>"`` names an entity, ``"@<uuid>.field.sub"`` one value inside it.

``reg.resolve(address)`` follows fields, mapping keys, tuple indexes and EntityRefs, reading only
the versions on the path; malformed addresses are a ValidationError, missing things a
NotFoundError that names the segment. ``parse_address`` is cached and strict.
"""

from __future__ import annotations

import functools
import re
from collections import Counter as Tally
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import Field
from registries import memory

import forseti as fs
from forseti.entities import JSONMap
from forseti.registry.callables import parse_address
from forseti.registry.callables.addresses import looks_like_address


class Node(fs.Entity):
    entity_type: ClassVar[str] = "tests.callables_addresses.Node"

    label: str
    children: tuple[fs.EntityRef, ...] = ()
    payload: JSONMap = Field(default_factory=dict)




# -- a small world to address ------------------------------------------------------------------


class World:
    def __init__(self, reg: fs.EntityRegistry) -> None:
        self.m1 = reg.add(fs.ModelEntity(name="tiny", hidden_size=8))
        self.m2 = reg.commit(self.m1.evolve(hidden_size=16))
        self.cfg = reg.add(
            fs.ConfigEntity(
                name="cfg",
                params={
                    "lr": 0.1,
                    "layers": [1, 2],
                    "opt": {"betas": [0.9, 0.99], "name": "adam"},
                    "0": "zero",
                    "items": "a key, not the method",
                    "with-dash": True,
                },
            )
        )
        self.stage = reg.add(
            fs.TrainingStageEntity(name="pretrain", kind="sft", config=self.cfg.ref)
        )
        self.pipe = reg.add(fs.PipelineEntity(name="pipe", stages=(self.stage.ref,)))
        self.run = reg.add(fs.TrainingRunEntity(name="run", model=self.m1.ref, config=self.cfg.ref))
        self.blob = reg.put_blob(b"weights", format="safetensors")
        self.ck = reg.add(
            fs.CheckpointEntity(
                run=self.run.ref,
                model=self.m1.ref,
                step=3,
                weights=self.blob,
                derived_from=(self.cfg.ref,),
            )
        )


@pytest.fixture
def world(reg: fs.EntityRegistry) -> World:
    return World(reg)


def test_addresses_name_entities_by_lineage_or_version(
    reg: fs.EntityRegistry, world: World
) -> None:
    m1, m2 = world.m1, world.m2
    lid = m1.lineage_id
    assert reg.resolve(f"@{lid}") == m2  # a lineage id: its head
    assert reg.resolve(f"@{m1.id}") == m1  # a version id: that version
    assert reg.resolve(f"@{m2.id}") == m2
    assert reg.resolve(f"@{lid.hex}") == m2  # 32 hex digits
    assert reg.resolve(f"@{str(m1.id).upper()}") == m1
    assert reg.resolve(f"@{m1.id}.hidden_size") == 8
    assert reg.resolve(f"@{lid}.hidden_size") == 16
    assert reg.resolve(f"@{lid}.version") == 2
    assert reg.resolve(f"@{m1.id}.lineage_id") == lid
    # no copies: the very objects the registry holds
    assert reg.resolve(f"@{lid}") is reg.get(lid)
    cfg = reg.get(world.cfg.lineage_id)
    assert reg.resolve(f"@{cfg.id}.params") is cfg.params


def test_paths_through_fields_keys_indexes_and_refs(reg: fs.EntityRegistry, world: World) -> None:
    cfg, ck, pipe = world.cfg, world.ck, world.pipe
    c = f"@{cfg.lineage_id}"
    assert reg.resolve(f"{c}.params.lr") == 0.1
    assert reg.resolve(f"{c}.params.layers") == (1, 2)
    assert reg.resolve(f"{c}.params.layers.1") == 2
    assert reg.resolve(f"{c}.params.opt.betas.0") == 0.9
    assert reg.resolve(f"{c}.params.opt.name") == "adam"
    assert reg.resolve(f"{c}.params.0") == "zero"  # a digit segment on a mapping is a key
    assert reg.resolve(f"{c}.params.items") == "a key, not the method"
    assert reg.resolve(f"{c}.params.with-dash") is True
    # an EntityRef at the end is returned as is; one on the way is followed
    assert reg.resolve(f"@{ck.id}.run") == world.run.ref
    assert reg.resolve(f"@{ck.id}.run.name") == "run"
    assert reg.resolve(f"@{ck.id}.run.config.params.opt.name") == "adam"
    assert reg.resolve(f"@{ck.id}.model.hidden_size") == 8  # the exact version referenced
    assert reg.resolve(f"@{ck.id}.derived_from.0.name") == "cfg"
    assert reg.resolve(f"@{ck.id}.weights") == world.blob
    assert reg.resolve(f"@{ck.id}.weights.size") == len(b"weights")
    assert reg.resolve(f"@{ck.id}.weights.format") == "safetensors"
    assert reg.resolve(f"@{pipe.lineage_id}.stages.0") == world.stage.ref
    assert reg.resolve(f"@{pipe.lineage_id}.stages.0.name") == "pretrain"
    assert reg.resolve(f"@{pipe.lineage_id}.stages.0.config.params.layers.0") == 1


@pytest.mark.parametrize(
    "suffix",
    ["", ".", "..x", ".a..b", ".a.", ".a b", ".-x", ".x/y", ".é", ".a.b c", ". a", ".+1", ".1.5x"],
)
def test_malformed_paths_are_validation_errors(
    reg: fs.EntityRegistry, world: World, suffix: str
) -> None:
    text = f"@{world.m1.lineage_id}{suffix}"
    if suffix == "":
        assert reg.resolve(text) == world.m2  # the control
        return
    with pytest.raises(fs.ValidationError, match="not a field name, key or index"):
        reg.resolve(text)
    with pytest.raises(fs.ValidationError):
        parse_address(text)


@pytest.mark.parametrize(
    "text",
    [
        "@",
        "@nothex",
        "@.x",
        "@@",
        "@12345678",
        "@1234567-1234-1234-1234-123456789abc",
        "@zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",
        "@00000000-0000-0000-0000-00000000000",
        "",
        "no-at-sign",
        "12345678-1234-1234-1234-123456789abc",
        " @12345678-1234-1234-1234-123456789abc",
        "@ 12345678-1234-1234-1234-123456789abc",
        "@12345678-1234-1234-1234-123456789abc ",
    ],
)
def test_malformed_heads_are_validation_errors(reg: fs.EntityRegistry, text: str) -> None:
    with pytest.raises(fs.ValidationError):
        reg.resolve(text)
    with pytest.raises(fs.ValidationError):
        parse_address(text)


@pytest.mark.parametrize("suffix", [".a\n", ".0\n", ".a\n.b", ".params\n"])
def test_a_segment_with_a_trailing_newline_is_malformed(suffix: str) -> None:
    with pytest.raises(fs.ValidationError):
        parse_address(f"@{uuid4()}{suffix}")


@pytest.mark.parametrize("value", [None, 5, b"@12345678-1234-1234-1234-123456789abc", 1.5])
def test_non_string_addresses_are_validation_errors(value: Any) -> None:
    reg = memory()
    with pytest.raises(fs.ValidationError, match="starts with '@'"):
        reg.resolve(value)
    with pytest.raises(fs.ValidationError):
        parse_address(value)


@pytest.mark.parametrize("value", [["@x"], {"a": 1}])
def test_unhashable_addresses_are_validation_errors(value: Any) -> None:
    reg = memory()
    with pytest.raises(fs.ValidationError):
        reg.resolve(value)


def test_unknown_uuid_is_not_found(reg: fs.EntityRegistry, world: World) -> None:
    missing = uuid4()
    for text in (f"@{missing}", f"@{missing}.name", f"@{missing.hex}.a.0"):
        with pytest.raises(fs.NotFoundError, match=str(missing)):
            reg.resolve(text)


@pytest.mark.parametrize(
    "path, message",
    [
        ("{m}.nope", "ModelEntity at the entity has no field 'nope'"),
        ("{m}.0", "has no field 0"),
        ("{m}.entity_type", "has no field 'entity_type'"),  # ClassVars are not fields
        ("{m}.evolve", "has no field 'evolve'"),  # nor are methods
        ("{m}.__class__", "has no field '__class__'"),
        ("{m}.model_config", "has no field 'model_config'"),
        ("{m}.hidden_size.x", "hidden_size is a int, which has no 'x'"),
        ("{m}.name.0", "name is a str, which has no 0"),
        ("{cfg}.params.missing", "no key 'missing' at params"),
        ("{cfg}.params.opt.nope", "no key 'nope' at params.opt"),
        ("{cfg}.params.layers.5", "params.layers has 2 item\\(s\\); 5 is not an index"),
        ("{cfg}.params.layers.x", "'x' is not an index"),
        ("{cfg}.params.lr.x", "params.lr is a float"),
        ("{ck}.weights.nope", "BlobRef, which has no 'nope'"),
        ("{ck}.weights.model_fields", "which has no 'model_fields'"),
        ("{ck}.run.nope", "TrainingRunEntity at run has no field 'nope'"),
        ("{pipe}.stages.1", "stages has 1 item\\(s\\); 1 is not an index"),
        ("{pipe}.stages.0.nope", "TrainingStageEntity at stages.0 has no field 'nope'"),
        ("{pipe}.stages.0.config.params.zz", "no key 'zz' at stages.0.config.params"),
    ],
)
def test_missing_segments_are_not_found_and_named(
    reg: fs.EntityRegistry, world: World, path: str, message: str
) -> None:
    text = path.format(
        m=f"@{world.m1.lineage_id}",
        cfg=f"@{world.cfg.id}",
        ck=f"@{world.ck.lineage_id}",
        pipe=f"@{world.pipe.id}",
    )
    with pytest.raises(fs.NotFoundError, match=message) as info:
        reg.resolve(text)
    assert repr(text) in str(info.value)  # the whole address is quoted


def test_resolve_on_a_closed_registry() -> None:
    reg = memory()
    m = reg.add(fs.ModelEntity(name="m"))
    reg.close()
    with pytest.raises(fs.StoreClosedError):
        reg.resolve(f"@{m.lineage_id}")


@pytest.mark.anyio
async def test_async_resolve(reg: fs.EntityRegistry, world: World) -> None:
    areg = fs.AsyncEntityRegistry(reg)
    assert await areg.resolve(f"@{world.pipe.lineage_id}.stages.0.name") == "pretrain"
    with pytest.raises(fs.NotFoundError, match="no field 'nope'"):
        await areg.resolve(f"@{world.m1.id}.nope")
    with pytest.raises(fs.ValidationError):
        await areg.resolve("@nothex")


# -- reading only the path ---------------------------------------------------------------------

FANOUT = 100  # a root, 100 inner nodes, 100 leaves each: 10,101 entities


def build_tree(reg: fs.EntityRegistry) -> Node:
    inner = []
    for i in range(FANOUT):
        leaves = [Node(label=f"leaf {i}.{j}", payload={"ij": [i, j]}) for j in range(FANOUT)]
        node = Node(label=f"inner {i}", children=tuple(leaf.ref for leaf in leaves))
        reg.commit_many([*leaves, node])
        inner.append(node)
    return reg.add(Node(label="root", children=tuple(n.ref for n in inner)))


def count_reads(store: Any) -> Tally[str]:
    """Count the store's read calls (wrapping them on this instance)."""
    calls: Tally[str] = Tally()
    for name in ("head", "get_version", "get_by_id", "history", "find_heads", "walk"):
        original: Callable[..., Any] = getattr(store, name)

        @functools.wraps(original)
        def counted(
            *args: Any, _name: str = name, _fn: Callable[..., Any] = original, **kw: Any
        ) -> Any:
            calls[_name] += 1
            return _fn(*args, **kw)

        setattr(store, name, counted)
    return calls


def test_resolution_over_a_10k_node_tree_reads_only_the_path(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tree.db'}"
    with fs.open(url, blob_dir=tmp_path / "blobs") as builder:
        root = build_tree(builder)

    # a fresh registry: nothing cached, so every version on the path is read from the store
    with fs.open(url, blob_dir=tmp_path / "blobs") as reg:
        calls = count_reads(reg.store)
        text = f"@{root.lineage_id}.children.57.children.33.payload.ij.1"
        assert reg.resolve(text) == 33
        assert calls == Tally({"head": 1, "get_version": 2})  # root, inner 57, leaf 57.33
        assert len(reg._versions) == 3  # only those versions were loaded

        # by version id, then a leaf's label
        calls.clear()
        assert reg.resolve(f"@{root.id}.children.3.children.99.label") == "leaf 3.99"
        assert calls["walk"] == calls["history"] == calls["find_heads"] == 0
        assert calls["get_version"] == 2 and calls["head"] + calls["get_by_id"] <= 2
        assert len(reg._versions) == 5

        # the same path again comes from the cache
        calls.clear()
        assert reg.resolve(text) == 33
        assert sum(calls.values()) <= 1  # at most the root's head (SQLite checks freshness)

        # a call taking a leaf by address reads the path, and records exactly it as inputs
        def label(node: Node) -> str:
            return node.label

        calls.clear()
        assert reg.call(label, f"@{root.lineage_id}.children.9.children.8") == "leaf 9.8"
        record = reg.callables.records("label")[0]
        assert [reg.get(r).label for r in record.inputs] == ["root", "inner 9", "leaf 9.8"]
        assert calls["get_version"] == 2 and calls["walk"] == calls["history"] == 0


# -- parse_address: cached and strict ----------------------------------------------------------


def test_parse_address_is_cached() -> None:
    uid = uuid4()
    text = f"@{uid}.params.layers.0"
    first = parse_address(text)
    second = parse_address(text)
    assert second is first  # the cached tuple (immutable), not a new parse
    assert first == (uid, ("params", "layers", 0))
    assert isinstance(first[1], tuple)
    # a failure is not cached into a success, nor the other way around
    for _ in range(2):
        with pytest.raises(fs.ValidationError):
            parse_address(f"@{uid}..x")


@pytest.mark.parametrize(
    "form",
    [
        "{%s}",
        "urn:uuid:%s",
        "uuid:%s",
        "{{%s}}",
    ],
)
def test_parse_address_accepts_only_canonical_uuids(form: str) -> None:
    uid = uuid4()
    text = "@" + form % uid
    assert not looks_like_address(text)
    with pytest.raises(fs.ValidationError):
        parse_address(text)


def test_a_digit_key_with_a_leading_zero_resolves_to_that_key() -> None:
    reg = memory()
    cfg = reg.add(fs.ConfigEntity(name="c", params={"1": "one", "01": "zero-one"}))
    assert reg.resolve(f"@{cfg.id}.params.01") == "zero-one"


_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,12}", fullmatch=True)
_ZERO_LED = st.from_regex(r"0[0-9]{1,4}", fullmatch=True)  # a key, not an index
_SEGMENTS = st.lists(st.one_of(_NAME, st.integers(0, 10**9), _ZERO_LED), max_size=8)


def _uuid_text(uid: UUID, form: str) -> str:
    return {"str": str(uid), "hex": uid.hex, "upper": str(uid).upper(), "HEX": uid.hex.upper()}[
        form
    ]


@given(uid=st.uuids(), segments=_SEGMENTS, form=st.sampled_from(["str", "hex", "upper", "HEX"]))
def test_parse_address_round_trips(uid: UUID, segments: list[str | int], form: str) -> None:
    text = "@" + _uuid_text(uid, form) + "".join(f".{s}" for s in segments)
    assert looks_like_address(text)
    assert parse_address(text) == (uid, tuple(segments))


@given(st.text(max_size=60))
def test_parse_address_raises_only_validation_errors(tail: str) -> None:
    for text in (tail, "@" + tail, f"@{UUID(int=7)}{tail}", f"@{UUID(int=7)}.{tail}"):
        try:
            uid, segments = parse_address(text)
        except fs.ValidationError:
            continue
        assert isinstance(uid, UUID) and isinstance(segments, tuple)
        for s in segments:  # whatever it accepts is a well-formed segment
            assert (isinstance(s, int) and s >= 0) or (
                isinstance(s, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", s)
            ), (text, s)


# random nested JSON in a config; every path resolves to what direct indexing gives
_KEY = st.one_of(_NAME, st.from_regex(r"[0-9]{1,3}", fullmatch=True))
_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
_JSON = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_KEY, inner, min_size=1, max_size=4)
    ),
    max_leaves=25,
)


@pytest.fixture(scope="module")
def json_reg() -> Any:
    registry = fs.open("memory://")
    yield registry
    registry.close()


def _walk(data: st.DataObject, value: Any) -> tuple[list[str | int], Any]:
    path: list[str | int] = []
    while True:
        if isinstance(value, tuple) and value and data.draw(st.booleans()):
            i = data.draw(st.integers(0, len(value) - 1))
            path.append(i)
            value = value[i]
        elif isinstance(value, fs.FrozenDict) and len(value) and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(value)))
            path.append(key)
            value = value[key]
        else:
            return path, value


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(params=st.dictionaries(_KEY, _JSON, min_size=1, max_size=5), data=st.data())
def test_random_paths_resolve_like_direct_indexing(
    json_reg: fs.EntityRegistry, params: dict[str, Any], data: st.DataObject
) -> None:
    cfg = json_reg.add(fs.ConfigEntity(name="random", params=params))
    path, expected = _walk(data, cfg.params)
    tail = "".join(f".{s}" for s in path)
    by_version = json_reg.resolve(f"@{cfg.id}.params{tail}")
    by_lineage = json_reg.resolve(f"@{cfg.lineage_id.hex}.params{tail}")
    assert by_version == expected and by_lineage == expected
    assert type(by_version) is type(expected)
    if isinstance(expected, fs.FrozenDict | tuple):
        assert by_version is expected  # no copy of the subtree
    # a key that is not there names itself
    with pytest.raises(fs.NotFoundError):
        json_reg.resolve(f"@{cfg.id}.params{tail}.no_such_key_here")
