"""safetensors checkpoints and exports: bit-exact round trips, interop with the official
``safetensors`` package, header metadata, provenance, verified loads, tamper detection in the store
and in standalone files, and the streaming writer's memory bound."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch as st_torch
import torch
from export_helpers import CONFIG, flip, logits, rewrite, tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from registries import memory
from safetensors import safe_open

import forseti as fs
from forseti.entities import entity_types
from forseti.errors import ConfigError, IntegrityError, NotFoundError, ValidationError
from forseti.export import (
    SAFETENSORS_DTYPES,
    ExportEntity,
    build_module,
    export,
    export_safetensors,
    load_checkpoint,
    load_safetensors_file,
    save_checkpoint,
)
from forseti.export.tensorfile import (
    DIGEST_KEY,
    DTYPES,
    DTYPES_KEY,
    header_of,
    read_safetensors,
    write_safetensors,
)
from forseti.gspo import TinyCausalLM
from forseti.registry import MemoryBlobStore

torch.set_num_threads(1)



# --------------------------------------------------------------------------------------------
# helpers




def as_bytes(t: torch.Tensor) -> torch.Tensor:
    dense = t.detach().reshape(-1).clone(memory_format=torch.contiguous_format)
    return dense.view(torch.uint8)


def is_strided_singleton(t: torch.Tensor) -> bool:
    """A one-element view that torch calls contiguous but whose stride is not 1 (the writer
    must copy it: see test_a_one_element_strided_view_is_written)."""
    return t.numel() == 1 and t.dim() > 0 and t.element_size() > 1 and t.stride(-1) != 1


def assert_same(got: torch.Tensor, want: torch.Tensor, name: str = "") -> None:
    """Bit-exact: dtype, shape, values (torch.equal) and the raw bytes."""
    assert got.dtype == want.dtype, name
    assert tuple(got.shape) == tuple(want.shape), name
    assert torch.equal(got, want), name
    assert torch.equal(as_bytes(got), as_bytes(want)), name


def assert_same_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name, t in want.items():
        assert_same(got[name], t, name)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def n_entities(reg: fs.EntityRegistry) -> int:
    """How many lineages the store holds (of every type this process knows)."""
    return len(reg.store.find_heads(sorted(entity_types())))


def blob_files(reg: fs.EntityRegistry) -> list[Path]:
    root = reg.blobs.root  # type: ignore[attr-defined]
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != "tmp"
    )


def staging_leftovers(reg: fs.EntityRegistry) -> list[Path]:
    return sorted(reg.blobs.tmp_dir.iterdir())




def replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new), "edits keep the header's length"
    assert data.count(old) == 1, f"{old!r} occurs {data.count(old)} times"
    return data.replace(old, new)


def make_tensor(dtype: torch.dtype, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Random values of ``dtype`` (floats without NaN, bools 0/1, ints over all their bits)."""
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 3).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    nbytes = math.prod(shape) * dtype.itemsize
    raw = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(shape)


# The dtypes the brief names; the writer holds a few more (U16/U32/U64), tested as well.
NAMED = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2,
]  # fmt: skip


def every_dtype_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Each supported dtype as a matrix, a 0-d scalar, an empty tensor, a transposed view, a
    strided slice and a row (contiguous, with a storage offset)."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for code, dtype in DTYPES.items():
        mat = make_tensor(dtype, (3, 5), g)
        state[f"{code}.mat"] = mat
        state[f"{code}.scalar"] = make_tensor(dtype, (), g)
        state[f"{code}.empty"] = make_tensor(dtype, (0, 4), g)
        state[f"{code}.T"] = mat.t()
        state[f"{code}.slice"] = mat[:, 1:5:2]
        state[f"{code}.row"] = mat[1]
    return state


def test_the_fixture_state_really_has_what_it_claims() -> None:
    state = every_dtype_state()
    assert set(NAMED) <= set(DTYPES.values())
    assert all(not state[f"{c}.T"].is_contiguous() for c in DTYPES)
    assert all(not state[f"{c}.slice"].is_contiguous() for c in DTYPES)
    assert all(state[f"{c}.row"].storage_offset() > 0 for c in DTYPES)
    assert all(state[f"{c}.scalar"].dim() == 0 for c in DTYPES)
    assert all(state[f"{c}.empty"].numel() == 0 for c in DTYPES)


@pytest.fixture
def sreg(tmp_path: Path) -> Any:
    """A SQLite registry with its blobs under tmp_path."""
    registry = fs.open(f"sqlite:///{tmp_path / 'ckpt.db'}", blob_dir=tmp_path / "blobs")
    yield registry
    registry.close()


# --------------------------------------------------------------------------------------------
# 1. bit-exact round trips (and 10: over every backend)


def test_tiny_lm_round_trip_on_every_backend(reg: fs.EntityRegistry, tmp_path: Path) -> None:
    model = tiny(1)
    want = snapshot(model)
    ckpt = save_checkpoint(reg, model, step=3)
    assert ckpt.weights.format == "safetensors" and ckpt.step == 3

    loaded = load_checkpoint(reg, ckpt.lineage_id)
    assert isinstance(loaded.module, TinyCausalLM)
    assert loaded.module is not model
    assert loaded.module.config.model_dump(include=set(CONFIG)) == CONFIG
    assert_same_state(loaded.state_dict, want)
    assert torch.equal(logits(loaded.module), logits(model))
    assert loaded.entity == ckpt and loaded.step == 3

    export = export_safetensors(reg, ckpt, out=tmp_path / "tiny.safetensors")
    again = load_safetensors_file(tmp_path / "tiny.safetensors")
    data = (tmp_path / "tiny.safetensors").read_bytes()
    assert export.artifact.sha256 == hashlib.sha256(data).hexdigest() != ckpt.weights.sha256
    assert_same_state(again.state_dict, want)
    assert torch.equal(logits(again.module), logits(model))  # type: ignore[arg-type]


def test_every_dtype_through_the_store(sreg: fs.EntityRegistry) -> None:
    state = every_dtype_state()
    ckpt = save_checkpoint(sreg, state, step=1)
    loaded = load_checkpoint(sreg, ckpt)
    assert loaded.module is None  # a state dict names no architecture
    assert_same_state(loaded.state_dict, state)
    counts = json.loads(loaded.metadata["forseti.dtypes"])
    assert sum(counts.values()) == len(state)
    assert counts["F8_E4M3"] == 6 and counts["BOOL"] == 6


def test_every_dtype_through_the_writer_and_reader() -> None:
    state = every_dtype_state(seed=5)
    buf = io.BytesIO()
    nbytes = write_safetensors(buf, state, {"k": "v"})
    data = buf.getvalue()
    assert nbytes == len(data)
    tensors, meta = read_safetensors(bytearray(data), require_digest=True)
    assert_same_state(tensors, state)
    assert meta["k"] == "v" and DIGEST_KEY in meta
    _, _, start = header_of(data)
    assert start % 8 == 0  # data starts 8-byte aligned


def test_non_contiguous_tensors_are_written_in_logical_order() -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    views = {"t": base.t(), "s": base[::2, 1::2], "e": base.expand(2, 4, 6)}
    buf = io.BytesIO()
    write_safetensors(buf, views)
    tensors, _ = read_safetensors(bytearray(buf.getvalue()))
    for name, view in views.items():
        assert_same(tensors[name], view.contiguous(), name)
        assert tensors[name].is_contiguous()


@pytest.mark.parametrize(
    "view",
    [torch.arange(6.0)[::3][:1], torch.ones(2, dtype=torch.bfloat16)[::2], torch.ones(1, 4)[:, ::4]],
    ids=["f32", "bf16", "2d"],
)
def test_a_one_element_strided_view_is_written(view: torch.Tensor) -> None:
    assert is_strided_singleton(view)
    buf = io.BytesIO()
    write_safetensors(buf, {"x": view})
    tensors, _ = read_safetensors(bytearray(buf.getvalue()))
    assert_same(tensors["x"], view)


def test_shared_storage_is_written_twice_and_loads_equal() -> None:
    w = torch.randn(4, 4)
    buf = io.BytesIO()
    write_safetensors(buf, {"a": w, "b": w, "c": w[1:3]})
    tensors, _ = read_safetensors(bytearray(buf.getvalue()))
    assert_same(tensors["a"], w)
    assert_same(tensors["b"], w)
    assert_same(tensors["c"], w[1:3].clone())
    assert tensors["a"].data_ptr() != tensors["b"].data_ptr()


def test_requires_grad_parameters_are_saved_detached(sreg: fs.EntityRegistry) -> None:
    p = torch.nn.Parameter(torch.randn(3, 3))
    ckpt = save_checkpoint(sreg, {"p": p})
    loaded = load_checkpoint(sreg, ckpt)
    assert_same(loaded.state_dict["p"], p.detach())
    assert not loaded.state_dict["p"].requires_grad


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"c": torch.zeros(2, dtype=torch.complex64)}, "cannot hold"),
        pytest.param(
            {"x": [1.0, 2.0]},
            "not a tensor",
        ),
        ({"": torch.zeros(2)}, "non-empty"),
        ({"__metadata__": torch.zeros(2)}, "names"),
        ({"s": torch.zeros(3, 3).to_sparse()}, "dense"),
    ],
    ids=["complex", "list", "empty-name", "metadata-name", "sparse"],
)
def test_what_safetensors_cannot_hold_is_refused_and_nothing_is_stored(
    sreg: fs.EntityRegistry, state: dict[str, Any], match: str
) -> None:
    before = n_entities(sreg)
    with pytest.raises(ValidationError, match=match):
        save_checkpoint(sreg, state)
    assert n_entities(sreg) == before
    assert blob_files(sreg) == []
    assert staging_leftovers(sreg) == []


def test_save_checkpoint_refuses_what_is_not_a_module_or_state_dict(
    sreg: fs.EntityRegistry,
) -> None:
    with pytest.raises(ValidationError, match="module or a state dict"):
        save_checkpoint(sreg, [torch.zeros(2)])  # type: ignore[arg-type]
    for step in (-1, True, 1.5, "3"):
        with pytest.raises(ValidationError, match="step"):
            save_checkpoint(sreg, {"w": torch.zeros(2)}, step=step)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="floating-point"):
        save_checkpoint(sreg, {"w": torch.zeros(2)}, dtype=torch.int8)
    assert n_entities(sreg) == 0 and blob_files(sreg) == []


_CODES = sorted(DTYPES)
_SPEC = st.tuples(
    st.sampled_from(_CODES),
    st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
    st.sampled_from(["as-is", "transposed", "strided"]),
)
_NAMES = st.text(min_size=1, max_size=12).filter(lambda s: s != "__metadata__")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.dictionaries(_NAMES, _SPEC, max_size=6),
    seed=st.integers(0, 2**31 - 1),
    meta=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)
def test_round_trip_property(
    specs: dict[str, tuple[str, tuple[int, ...], str]], seed: int, meta: dict[str, str]
) -> None:
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, (code, shape, how) in specs.items():
        t = make_tensor(DTYPES[code], shape, g)
        if how == "transposed" and t.dim() >= 2:
            t = t.transpose(0, 1)
        elif how == "strided" and t.dim() >= 1:
            t = t[..., ::2]
        state[name] = t
    meta = {k: v for k, v in meta.items() if k not in (DIGEST_KEY, DTYPES_KEY)}
    buf = io.BytesIO()
    nbytes = write_safetensors(buf, state, meta)
    data = buf.getvalue()
    assert nbytes == len(data)

    tensors, got_meta = read_safetensors(bytearray(data), require_digest=True)
    assert_same_state(tensors, state)
    written = json.loads(got_meta.pop(DTYPES_KEY))  # the writer says what it wrote
    assert written == dict(Counter(code for code, _, _ in specs.values()))
    assert {k: v for k, v in got_meta.items() if k != DIGEST_KEY} == meta

    official = st_torch.load(data)  # the official reader agrees
    assert_same_state(official, state)


@settings(max_examples=40, deadline=None)
@given(pos=st.integers(min_value=0), mask=st.integers(1, 255))
def test_any_changed_data_byte_is_detected(pos: int, mask: int) -> None:
    state = {"a": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(5).bool()}
    buf = io.BytesIO()
    write_safetensors(buf, state, {"m": "x"})
    data = bytearray(buf.getvalue())
    _, _, start = header_of(data)
    data[start + pos % (len(data) - start)] ^= mask
    with pytest.raises(IntegrityError, match="self-digest"):
        read_safetensors(data)


# --------------------------------------------------------------------------------------------
# 2. interop with the official safetensors package


def test_the_official_reader_reads_our_files(sreg: fs.EntityRegistry, tmp_path: Path) -> None:
    state = every_dtype_state(seed=2)
    ckpt = save_checkpoint(sreg, state, metadata={"note": "interop"})
    path = sreg.blobs.path(ckpt.weights)  # type: ignore[attr-defined]
    assert_same_state(st_torch.load_file(path), state)
    assert_same_state(st_torch.load(path.read_bytes()), state)
    with safe_open(str(path), framework="pt") as f:
        official_meta = f.metadata()
        assert_same(f.get_tensor("F32.T"), state["F32.T"].contiguous())
    assert official_meta == load_checkpoint(sreg, ckpt).metadata
    assert official_meta["note"] == "interop"

    model = tiny(2)
    out = tmp_path / "m.safetensors"
    export_safetensors(sreg, save_checkpoint(sreg, model), dtype="bf16", out=out)
    official = st_torch.load_file(out)
    for name, t in model.state_dict().items():
        assert_same(official[name], t.to(torch.bfloat16), name)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.contiguous().clone() for k, v in state.items()}


def test_our_reader_reads_official_files(tmp_path: Path) -> None:
    state = _contiguous(every_dtype_state(seed=3))
    data = st_torch.save(state, metadata={"origin": "official"})
    tensors, meta = read_safetensors(bytearray(data))  # no self-digest: structure checked only
    assert_same_state(tensors, state)
    assert meta == {"origin": "official"}
    with pytest.raises(IntegrityError, match="self-digest"):
        read_safetensors(bytearray(data), require_digest=True)

    path = tmp_path / "official.safetensors"
    st_torch.save_file(state, path)
    with pytest.raises(IntegrityError, match="self-digest"):
        load_safetensors_file(path)  # it cannot be verified: refused
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_safetensors_file(path, sha256=sha.upper())
    assert_same_state(loaded.state_dict, state)
    assert loaded.module is None and loaded.entity is None and loaded.step == 0
    with pytest.raises(IntegrityError, match="sha256"):
        load_safetensors_file(path, sha256="0" * 64)


def test_an_official_file_of_a_tiny_lm_loads_into_a_module(tmp_path: Path) -> None:
    model = tiny(4)
    path = tmp_path / "hf.safetensors"
    st_torch.save_file(_contiguous(model.state_dict()), path)
    target = tiny(5)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_safetensors_file(path, sha256=sha, module=target)
    assert loaded.module is target
    assert torch.equal(logits(target), logits(model))


# --------------------------------------------------------------------------------------------
# 3. header metadata


def _header_meta(reg: fs.EntityRegistry, blob: fs.BlobRef) -> dict[str, str]:
    return header_of(reg.read_blob(blob))[1]


def test_the_header_names_architecture_config_step_refs_and_dtypes(
    sreg: fs.EntityRegistry,
) -> None:
    model = tiny(0)
    owner = sreg.add(fs.ModelEntity(name="owner"))
    run = sreg.add(fs.TrainingRunEntity(name="run-a", model=owner.ref))
    ckpt = save_checkpoint(
        sreg, model, run=run, step=42, metadata={"note": "hello", "lr": 0.001}  # type: ignore[dict-item]
    )
    meta = _header_meta(sreg, ckpt.weights)
    assert meta["forseti.architecture"] == "TinyCausalLM"
    assert json.loads(meta["forseti.config"]) == {"name": "tiny-lm", **CONFIG}
    assert meta["forseti.step"] == "42"
    assert meta["forseti.model"] == str(owner.ref)
    assert meta["forseti.run"] == str(run.ref)
    assert meta["forseti.format"] == "forseti.checkpoint/1"
    assert json.loads(meta["forseti.dtypes"]) == {"F32": len(model.state_dict())}
    assert meta["note"] == "hello" and meta["lr"] == "0.001"
    assert DIGEST_KEY not in meta  # a blob is verified by its address; exports add the digest
    assert "forseti.derived_from" not in meta

    plain = save_checkpoint(sreg, {"w": torch.zeros(2), "n": torch.zeros(3, dtype=torch.int64)})
    meta = _header_meta(sreg, plain.weights)
    assert "forseti.run" not in meta and "forseti.architecture" not in meta
    assert json.loads(meta["forseti.dtypes"]) == {"F32": 1, "I64": 1}


@pytest.mark.parametrize("key", ["forseti.step", "forseti.sha256", "forseti.anything", "forseti."])
def test_reserved_metadata_keys_are_refused(sreg: fs.EntityRegistry, key: str) -> None:
    with pytest.raises(ValidationError, match="reserved"):
        save_checkpoint(sreg, {"w": torch.zeros(2)}, metadata={key: "1"})
    assert n_entities(sreg) == 0 and blob_files(sreg) == []


def test_a_dtype_casts_floating_point_tensors_only(sreg: fs.EntityRegistry) -> None:
    g = torch.Generator().manual_seed(9)
    state = {
        "f32": make_tensor(torch.float32, (4, 3), g),
        "f64": make_tensor(torch.float64, (5,), g),
        "f16": make_tensor(torch.float16, (2, 2), g),
        "f8": make_tensor(torch.float8_e4m3fn, (3,), g),
        "i64": make_tensor(torch.int64, (3,), g),
        "i8": make_tensor(torch.int8, (2, 3), g),
        "u8": make_tensor(torch.uint8, (4,), g),
        "bool": make_tensor(torch.bool, (6,), g),
        "T": make_tensor(torch.float32, (3, 4), g).t(),
    }
    ckpt = save_checkpoint(sreg, state, dtype=torch.bfloat16)
    loaded = load_checkpoint(sreg, ckpt).state_dict
    for name, t in state.items():
        want = t.to(torch.bfloat16) if t.is_floating_point() else t
        assert_same(loaded[name], want, name)
    dtypes = json.loads(_header_meta(sreg, ckpt.weights)["forseti.dtypes"])
    assert dtypes == {"BF16": 5, "BOOL": 1, "I64": 1, "I8": 1, "U8": 1}


# --------------------------------------------------------------------------------------------
# 4. provenance


def test_a_run_with_a_model_gives_the_checkpoint_that_model(sreg: fs.EntityRegistry) -> None:
    owner = sreg.add(fs.ModelEntity(name="owner"))
    run = sreg.add(fs.TrainingRunEntity(name="run", model=owner.ref))
    before = n_entities(sreg)
    ckpt = save_checkpoint(sreg, tiny(), run=run, step=5)
    assert ckpt.model == owner.ref and ckpt.run == run.ref
    assert n_entities(sreg) == before + 1  # no new model
    assert sreg.get(ckpt.lineage_id) == ckpt


def test_a_run_given_by_ref_also_gives_its_model(sreg: fs.EntityRegistry) -> None:
    owner = sreg.add(fs.ModelEntity(name="owner"))
    run = sreg.add(fs.TrainingRunEntity(name="run", model=owner.ref))
    before = n_entities(sreg)
    ckpt = save_checkpoint(sreg, tiny(), run=run.ref)
    assert ckpt.run == run.ref
    assert ckpt.model == owner.ref
    assert n_entities(sreg) == before + 1


def test_an_explicit_model_wins(sreg: fs.EntityRegistry) -> None:
    owner = sreg.add(fs.ModelEntity(name="owner"))
    other = sreg.add(fs.ModelEntity(name="other"))
    run = sreg.add(fs.TrainingRunEntity(name="run", model=owner.ref))
    before = n_entities(sreg)
    by_entity = save_checkpoint(sreg, tiny(), model=other)
    by_ref = save_checkpoint(sreg, tiny(), model=other.ref, run=run)
    assert by_entity.model == other.ref and by_entity.run is None
    assert by_ref.model == other.ref and by_ref.run == run.ref
    assert n_entities(sreg) == before + 2


def test_without_run_or_model_a_model_is_created_with_the_checkpoint(
    sreg: fs.EntityRegistry,
) -> None:
    sreg.add(fs.ModelEntity(name="unrelated"))
    before = n_entities(sreg)
    module = tiny()
    ckpt = save_checkpoint(sreg, module, step=1)
    assert n_entities(sreg) == before + 2
    assert ckpt.run is None
    created = sreg.get(ckpt.model)
    assert isinstance(created, fs.ModelEntity)
    assert created.ref == ckpt.model and created.version == 1
    assert created.architecture == "TinyCausalLM" and created.name == "tiny-lm"
    assert created.num_parameters == sum(t.numel() for t in module.state_dict().values())
    assert dict(created.hyperparameters) == {"name": "tiny-lm", **CONFIG}
    assert _header_meta(sreg, ckpt.weights)["forseti.model"] == str(created.ref)

    ckpt2 = save_checkpoint(sreg, {"w": torch.zeros(3, 2)})
    assert n_entities(sreg) == before + 4
    assert sreg.get(ckpt2.model).name == "state-dict"  # type: ignore[attr-defined]
    assert sreg.get(ckpt2.model).num_parameters == 6  # type: ignore[attr-defined]


def test_a_run_without_a_model_also_gets_a_new_model(sreg: fs.EntityRegistry) -> None:
    run = sreg.add(fs.TrainingRunEntity(name="run"))
    before = n_entities(sreg)
    ckpt = save_checkpoint(sreg, tiny(), run=run)
    assert n_entities(sreg) == before + 2
    assert ckpt.run == run.ref and isinstance(sreg.get(ckpt.model), fs.ModelEntity)


def test_derived_from_is_recorded_in_the_entity_the_header_and_the_graph(
    sreg: fs.EntityRegistry,
) -> None:
    parent = save_checkpoint(sreg, tiny(0))
    data = sreg.add(fs.DatasetEntity(name="digits"))
    child = save_checkpoint(sreg, tiny(1), model=parent.model, derived_from=[parent, data.ref])
    assert child.derived_from == (parent.ref, data.ref)
    assert json.loads(_header_meta(sreg, child.weights)["forseti.derived_from"]) == [
        str(parent.ref),
        str(data.ref),
    ]
    ancestors = sreg.ancestors(child)
    assert parent.ref in ancestors and data.ref in ancestors
    assert child.ref in sreg.descendants(parent)
    with pytest.raises(ValidationError, match="derived_from"):
        save_checkpoint(sreg, tiny(), derived_from=["not-a-ref"])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match="run"):
        save_checkpoint(sreg, tiny(), run="nope")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# 5. load_checkpoint


def test_load_by_entity_ref_lineage_id_and_lineage_at_version(sreg: fs.EntityRegistry) -> None:
    first, second = tiny(10), tiny(11)
    v1 = save_checkpoint(sreg, first, step=1)
    other = save_checkpoint(sreg, second, model=v1.model)
    v2 = sreg.commit(v1.evolve(step=2, weights=other.weights))
    lid = v1.lineage_id
    for ref, model, step in [
        (v1, first, 1),
        (v1.ref, first, 1),
        (f"{lid}@1", first, 1),
        (v2, second, 2),
        (v2.ref, second, 2),
        (lid, second, 2),  # a lineage id names its head
        (str(lid), second, 2),
        (f" {lid}@2 ", second, 2),
    ]:
        loaded = load_checkpoint(sreg, ref)  # type: ignore[arg-type]
        assert loaded.step == step, ref
        assert torch.equal(logits(loaded.module), logits(model)), ref  # type: ignore[arg-type]


def test_module_loads_into_the_given_module(sreg: fs.EntityRegistry) -> None:
    source, target = tiny(20), tiny(21)
    ckpt = save_checkpoint(sreg, source)
    assert not torch.equal(logits(target), logits(source))
    loaded = load_checkpoint(sreg, ckpt, module=target)
    assert loaded.module is target
    assert torch.equal(logits(target), logits(source))
    assert load_checkpoint(sreg, ckpt, build=False).module is None


def test_a_mismatched_module_is_a_validation_error(sreg: fs.EntityRegistry) -> None:
    ckpt = save_checkpoint(sreg, tiny(0))
    for wrong in (tiny(0, n_layers=3), tiny(0, d_model=16), torch.nn.Linear(2, 2)):
        with pytest.raises(ValidationError, match="do not fit"):
            load_checkpoint(sreg, ckpt, module=wrong)


def test_a_mismatched_module_is_left_as_it_was(sreg: fs.EntityRegistry) -> None:
    ckpt = save_checkpoint(sreg, tiny(0))
    wrong = tiny(7, n_layers=3)  # the first two layers, embeddings and head match by name
    before = snapshot(wrong)
    with pytest.raises(ValidationError):
        load_checkpoint(sreg, ckpt, module=wrong)
    assert_same_state(snapshot(wrong), before)


def test_what_is_not_a_checkpoint_is_refused(sreg: fs.EntityRegistry) -> None:
    model = sreg.add(fs.ModelEntity(name="m"))
    for ref in (model, model.ref, model.lineage_id, f"{model.lineage_id}@1"):
        with pytest.raises(ValidationError, match="not a checkpoint"):
            load_checkpoint(sreg, ref)  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        load_checkpoint(sreg, uuid.uuid4())
    with pytest.raises(NotFoundError):
        load_checkpoint(sreg, str(uuid.uuid4()))
    ckpt = save_checkpoint(sreg, {"w": torch.zeros(1)})
    with pytest.raises(NotFoundError):
        load_checkpoint(sreg, f"{ckpt.lineage_id}@2")
    with pytest.raises(ValidationError):
        load_checkpoint(sreg, f"{ckpt.lineage_id}@two")
    with pytest.raises(ValidationError):
        load_checkpoint(sreg, 12)  # type: ignore[arg-type]


def _sequential(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def test_an_unregistered_architecture_loads_into_a_given_module(sreg: fs.EntityRegistry) -> None:
    net = _sequential(0)
    ckpt = save_checkpoint(sreg, net)
    assert sreg.get(ckpt.model).architecture == "Sequential"  # type: ignore[attr-defined]
    loaded = load_checkpoint(sreg, ckpt, build=False)
    assert loaded.metadata["forseti.architecture"] == "Sequential"
    assert "forseti.config" not in loaded.metadata
    assert loaded.module is None
    target = _sequential(1)
    assert load_checkpoint(sreg, ckpt, module=target).module is target
    x = torch.randn(5, 3)
    assert torch.equal(target(x), net(x))


def test_an_unregistered_architecture_loads_without_a_module(sreg: fs.EntityRegistry) -> None:
    ckpt = save_checkpoint(sreg, _sequential(0))
    loaded = load_checkpoint(sreg, ckpt)
    assert loaded.module is None
    assert_same_state(loaded.state_dict, snapshot(_sequential(0)))


def test_a_header_with_an_unregistered_architecture_loads_without_a_module(
    sreg: fs.EntityRegistry, tmp_path: Path
) -> None:
    path = tmp_path / "alien.safetensors"
    buf = io.BytesIO()
    meta = {"forseti.architecture": "Alien", "forseti.config": "{}"}
    write_safetensors(buf, {"w": torch.zeros(2)}, meta)
    path.write_bytes(buf.getvalue())
    assert load_safetensors_file(path).module is None
    with pytest.raises(ConfigError, match="register"):
        build_module(load_safetensors_file(path).metadata)  # what an exporter that needs one does


# --------------------------------------------------------------------------------------------
# 6. tampering, truncation and mislabelling in the store


def _data_start(data: bytes) -> int:
    return header_of(data)[2]


STORE_DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "flip-data-byte": lambda d: flip(d, _data_start(d) + 100),
    "flip-last-byte": lambda d: flip(d, len(d) - 1),
    "flip-header-byte": lambda d: flip(d, 20),
    "truncate": lambda d: d[:-1],
    "truncate-to-header": lambda d: d[: _data_start(d)],
    "append": lambda d: d + b"\0",
}


@pytest.mark.parametrize("damage", sorted(STORE_DAMAGE))
def test_a_damaged_blob_file_fails_and_leaves_the_module_alone(
    reg: fs.EntityRegistry, damage: str, tmp_path: Path
) -> None:
    ckpt = save_checkpoint(reg, tiny(0))
    target = tiny(1)
    before = snapshot(target)
    path = reg.blobs.path(ckpt.weights)  # type: ignore[attr-defined]
    rewrite(path, STORE_DAMAGE[damage])
    with pytest.raises(IntegrityError):
        load_checkpoint(reg, ckpt, module=target)
    assert_same_state(snapshot(target), before)
    exports = len(reg.find(ExportEntity))
    with pytest.raises(IntegrityError):  # only verified blobs are exported
        export_safetensors(reg, ckpt, out=tmp_path / "x.safetensors")
    with pytest.raises(IntegrityError):
        export_safetensors(reg, ckpt, dtype="f16")
    assert len(reg.find(ExportEntity)) == exports
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("damage", sorted(STORE_DAMAGE))
def test_a_damaged_blob_in_memory_fails(damage: str) -> None:
    reg = memory()
    assert isinstance(reg.blobs, MemoryBlobStore)
    ckpt = save_checkpoint(reg, tiny(0))
    target = tiny(1)
    before = snapshot(target)
    data = reg.blobs._data[ckpt.weights.sha256]
    reg.blobs._data[ckpt.weights.sha256] = STORE_DAMAGE[damage](data)
    with pytest.raises(IntegrityError):
        load_checkpoint(reg, ckpt, module=target)
    assert_same_state(snapshot(target), before)
    reg.blobs._data[ckpt.weights.sha256] = data  # repaired: loads again
    assert torch.equal(logits(load_checkpoint(reg, ckpt).module), logits(tiny(0)))  # type: ignore[arg-type]


def test_another_valid_checkpoint_in_a_blobs_place_is_refused(reg: fs.EntityRegistry) -> None:
    """The swapped-in file is a well-formed, self-consistent safetensors file of the same size:
    only the blob hash tells."""
    a, b = save_checkpoint(reg, tiny(0)), save_checkpoint(reg, tiny(1))
    assert a.weights.size == b.weights.size and a.weights != b.weights
    other = reg.blobs.path(b.weights).read_bytes()  # type: ignore[attr-defined]
    rewrite(reg.blobs.path(a.weights), lambda _: other)  # type: ignore[attr-defined]
    target = tiny(2)
    before = snapshot(target)
    with pytest.raises(IntegrityError):
        load_checkpoint(reg, a, module=target)
    assert_same_state(snapshot(target), before)
    assert torch.equal(logits(load_checkpoint(reg, b).module), logits(tiny(1)))  # type: ignore[arg-type]

    mem = memory()
    a, b = save_checkpoint(mem, tiny(0)), save_checkpoint(mem, tiny(1))
    mem.blobs._data[a.weights.sha256] = mem.blobs._data[b.weights.sha256]
    with pytest.raises(IntegrityError):
        load_checkpoint(mem, a)


def test_a_missing_blob_file_is_not_found(sreg: fs.EntityRegistry) -> None:
    ckpt = save_checkpoint(sreg, tiny(0))
    sreg.blobs.path(ckpt.weights).unlink()  # type: ignore[attr-defined]
    with pytest.raises(NotFoundError):
        load_checkpoint(sreg, ckpt)


def test_weights_labelled_as_another_format_are_refused(sreg: fs.EntityRegistry) -> None:
    good = save_checkpoint(sreg, tiny(0))
    onnx_ref = fs.BlobRef(sha256=good.weights.sha256, size=good.weights.size, format="onnx")
    mislabelled = sreg.add(fs.CheckpointEntity(run=None, model=good.model, step=0, weights=onnx_ref))
    with pytest.raises(IntegrityError, match="onnx"):
        load_checkpoint(sreg, mislabelled)

    junk = sreg.put_blob(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!", format="safetensors")
    not_st = sreg.add(fs.CheckpointEntity(run=None, model=good.model, step=0, weights=junk))
    with pytest.raises(IntegrityError, match="safetensors"):
        load_checkpoint(sreg, not_st)

    wrong_size = fs.BlobRef(sha256=good.weights.sha256, size=good.weights.size + 1, format="safetensors")
    lying = sreg.add(fs.CheckpointEntity(run=None, model=good.model, step=0, weights=wrong_size))
    with pytest.raises(IntegrityError):
        load_checkpoint(sreg, lying)


# --------------------------------------------------------------------------------------------
# 7. standalone files


@pytest.fixture
def standalone(sreg: fs.EntityRegistry, tmp_path: Path) -> bytes:
    """The bytes of an exported file: w (F32 [4, 8]), b (F32 [8]), n (I64 [5]), step 7."""
    state = {
        "w": torch.randn(4, 8, generator=torch.Generator().manual_seed(0)),
        "b": torch.linspace(-1, 1, 8),
        "n": torch.arange(5),
    }
    ckpt = save_checkpoint(sreg, state, step=7, metadata={"note": "alpha"})
    out = tmp_path / "standalone.safetensors"
    export_safetensors(sreg, ckpt, out=out)
    data = out.read_bytes()
    assert_same_state(load_safetensors_file(out).state_dict, state)  # the control
    return data


def _edit_digest(data: bytes) -> bytes:
    key = b'"forseti.sha256":"'
    at = data.index(key) + len(key)
    out = bytearray(data)
    out[at] = ord("0") if out[at] != ord("0") else ord("1")
    return bytes(out)


FILE_DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "flip-tensor-byte": lambda d: flip(d, _data_start(d) + 5),
    "flip-last-tensor-byte": lambda d: flip(d, len(d) - 1),
    "step-digit": lambda d: replace_once(d, b'"forseti.step":"7"', b'"forseti.step":"8"'),
    "user-metadata": lambda d: replace_once(d, b'"note":"alpha"', b'"note":"alphb"'),
    "metadata-key": lambda d: replace_once(d, b'"note":', b'"nofe":'),
    "swap-shape": lambda d: replace_once(d, b'"shape":[4,8]', b'"shape":[8,4]'),
    "dtype-label": lambda d: replace_once(d, b'"dtype":"F32","shape":[4,8]', b'"dtype":"I32","shape":[4,8]'),
    "rename-tensor": lambda d: replace_once(d, b'"w":{', b'"v":{'),
    "gap": lambda d: replace_once(d, b'"data_offsets":[160,200]', b'"data_offsets":[168,208]'),
    "overlap": lambda d: replace_once(d, b'"data_offsets":[160,200]', b'"data_offsets":[152,192]'),
    "truncate-1": lambda d: d[:-1],
    "truncate-tensor": lambda d: d[:-40],
    "truncate-into-header": lambda d: d[:30],
    "trailing-garbage": lambda d: d + b"\x00" * 8,
    "header-past-eof": lambda d: struct.pack("<Q", len(d)) + d[8:],
    "header-huge": lambda d: struct.pack("<Q", 2**63) + d[8:],
    "header-short": lambda d: struct.pack("<Q", struct.unpack("<Q", d[:8])[0] - 9) + d[8:],
    "non-json-header": lambda d: d[:8] + b"x" + d[9:],
    "digest-renamed": lambda d: replace_once(d, b'"forseti.sha256"', b'"forseti.sha257"'),
    "digest-value": _edit_digest,
    "empty-file": lambda d: b"",
}  # fmt: skip


@pytest.mark.parametrize("damage", sorted(FILE_DAMAGE))
def test_a_damaged_standalone_file_is_refused(
    standalone: bytes, damage: str, tmp_path: Path
) -> None:
    bad = tmp_path / f"{damage}.safetensors"
    bad.write_bytes(FILE_DAMAGE[damage](standalone))
    assert bad.read_bytes() != standalone
    with pytest.raises(IntegrityError):
        load_safetensors_file(bad)
    with pytest.raises(IntegrityError):
        read_safetensors(bytearray(bad.read_bytes()), require_digest=True)


def test_swapping_two_tensors_ranges_is_detected(tmp_path: Path) -> None:
    """Two same-shape tensors whose data ranges are swapped still tile the file: only the
    self-digest notices."""
    buf = io.BytesIO()
    write_safetensors(buf, {"a": torch.zeros(4), "b": torch.ones(4)})
    clean = buf.getvalue()
    swapped = clean.replace(b'"data_offsets":[0,16]', b"@A@").replace(
        b'"data_offsets":[16,32]', b'"data_offsets":[0,16]'
    ).replace(b"@A@", b'"data_offsets":[16,32]')
    assert len(swapped) == len(clean) and swapped != clean
    # structurally valid: the official reader takes it, with the values swapped
    official = st_torch.load(swapped)
    assert torch.equal(official["a"], torch.ones(4)) and torch.equal(official["b"], torch.zeros(4))
    with pytest.raises(IntegrityError, match="self-digest"):
        read_safetensors(bytearray(swapped))
    path = tmp_path / "swapped.safetensors"
    path.write_bytes(swapped)
    with pytest.raises(IntegrityError):
        load_safetensors_file(path)


def test_a_file_without_a_self_digest_needs_its_sha256(
    standalone: bytes, tmp_path: Path
) -> None:
    stripped = FILE_DAMAGE["digest-renamed"](standalone)  # the digest can't be removed to pass
    path = tmp_path / "stripped.safetensors"
    path.write_bytes(stripped)
    with pytest.raises(IntegrityError, match="self-digest"):
        load_safetensors_file(path)
    loaded = load_safetensors_file(path, sha256=hashlib.sha256(stripped).hexdigest())
    assert loaded.metadata["forseti.step"] == "7"
    with pytest.raises(NotFoundError):
        load_safetensors_file(tmp_path / "missing.safetensors")
    with pytest.raises(NotFoundError):
        load_safetensors_file(tmp_path)


def raw_file(header: dict[str, Any] | list[Any], data: bytes = b"", size: int | None = None) -> bytearray:
    """A safetensors file built by hand (no self-digest unless the header carries one)."""
    text = json.dumps(header).encode()
    return bytearray(struct.pack("<Q", len(text) if size is None else size) + text + data)


def _entry(dtype: Any = "F32", shape: Any = (2,), offs: Any = (0, 8)) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offs)}


BAD_STRUCTURE: dict[str, tuple[bytearray, str]] = {
    "shorter-than-8": (bytearray(b"\x01\x00"), "shorter"),
    "not-an-object": (raw_file([1, 2]), "JSON object"),
    "metadata-not-strings": (raw_file({"__metadata__": {"a": 1}}), "strings"),
    "metadata-a-list": (raw_file({"__metadata__": ["a"]}), "strings"),
    "entry-not-an-object": (raw_file({"t": [1]}), "entry"),
    "entry-missing-key": (raw_file({"t": {"dtype": "F32", "shape": [2]}}, b"\0" * 8), "entry"),
    "entry-extra-key": (raw_file({"t": {**_entry(), "x": 1}}, b"\0" * 8), "entry"),
    "unknown-dtype": (raw_file({"t": _entry(dtype="F7")}, b"\0" * 8), "unknown dtype"),
    "negative-dim": (raw_file({"t": _entry(shape=(-2,))}, b"\0" * 8), "malformed"),
    "float-dim": (raw_file({"t": _entry(shape=(2.0,))}, b"\0" * 8), "malformed"),
    "bool-dim": (raw_file({"t": _entry(shape=(True, 2))}, b"\0" * 8), "malformed"),
    "shape-not-a-list": (raw_file({"t": {**_entry(), "shape": 2}}, b"\0" * 8), "malformed"),
    "offsets-three": (raw_file({"t": _entry(offs=(0, 4, 8))}, b"\0" * 8), "malformed"),
    "offsets-strings": (raw_file({"t": _entry(offs=("0", "8"))}, b"\0" * 8), "malformed"),
    "mislabelled": (raw_file({"t": _entry(shape=(3,))}, b"\0" * 8), "mislabelled"),
    "negative-offsets": (raw_file({"t": _entry(offs=(-8, 0))}, b"\0" * 8), "gap"),
    "gap": (raw_file({"t": _entry(offs=(8, 16))}, b"\0" * 16), "gap"),
    "overlap": (raw_file({"a": _entry(), "b": _entry(offs=(4, 12))}, b"\0" * 12), "overlaps"),
    "padded": (raw_file({"t": _entry()}, b"\0" * 9), "padded"),
    "truncated": (raw_file({"t": _entry()}, b"\0" * 7), "truncated"),
    "past-eof": (raw_file({"t": _entry()}, b"\0" * 8, size=10_000), "past the end"),
    "bad-utf8": (bytearray(struct.pack("<Q", 4) + b"\xff\xfe{}"), "bad header"),
    "empty-header": (bytearray(struct.pack("<Q", 0)), "bad header"),
}


@pytest.mark.parametrize("case", sorted(BAD_STRUCTURE))
def test_a_bad_structure_is_refused_before_any_tensor_exists(case: str) -> None:
    data, match = BAD_STRUCTURE[case]
    with pytest.raises(IntegrityError, match=match):
        read_safetensors(data)


def test_a_good_hand_built_file_is_read() -> None:
    data = raw_file(
        {"__metadata__": {"a": "b"}, "t": _entry(), "z": _entry(shape=(0, 3), offs=(8, 8))},
        struct.pack("<2f", 1.5, -2.0),
    )
    tensors, meta = read_safetensors(data)
    assert meta == {"a": "b"}
    assert_same(tensors["t"], torch.tensor([1.5, -2.0]))
    assert_same(tensors["z"], torch.zeros(0, 3))
    with pytest.raises(ValidationError, match="writable"):
        read_safetensors(memoryview(bytes(data)))


@pytest.mark.parametrize("dtype", [[], {"F32": 1}], ids=["list", "dict"])
def test_an_unhashable_dtype_label_is_an_integrity_error(dtype: Any) -> None:
    with pytest.raises(IntegrityError):
        read_safetensors(raw_file({"t": _entry(dtype=dtype)}, b"\0" * 8))


def test_a_deeply_nested_header_is_an_integrity_error() -> None:
    text = b"[" * 200_000
    with pytest.raises(IntegrityError):
        read_safetensors(bytearray(struct.pack("<Q", len(text)) + text))


# --------------------------------------------------------------------------------------------
# 8. export_safetensors


def test_export_as_stored_keeps_the_tensors_and_adds_the_self_digest(
    sreg: fs.EntityRegistry, tmp_path: Path
) -> None:
    model = tiny(3)
    ckpt = save_checkpoint(sreg, model, step=9)
    out = tmp_path / "as-stored.safetensors"
    entity = export_safetensors(sreg, ckpt, out=out)
    assert entity.artifact != ckpt.weights
    assert entity.format == "safetensors" and entity.dtype == ""
    assert entity.checkpoint == ckpt.ref
    assert entity.derived_from == (ckpt.ref,)
    assert entity.path == str(out.resolve())
    assert out.read_bytes() == sreg.blobs.path(entity.artifact).read_bytes()  # type: ignore[attr-defined]
    assert hashlib.sha256(out.read_bytes()).hexdigest() == entity.artifact.sha256
    original = load_checkpoint(sreg, ckpt, build=False)
    exported = load_safetensors_file(out, build=False)  # verified by its self-digest
    assert_same_state(exported.state_dict, dict(original.state_dict))
    assert {k: v for k, v in exported.metadata.items() if k != DIGEST_KEY} == original.metadata
    ancestors = sreg.ancestors(entity)
    assert ckpt.ref in ancestors and ckpt.model in ancestors
    assert entity.ref in sreg.descendants(ckpt)
    assert sreg.get(entity.lineage_id) == entity
    loaded = load_safetensors_file(out)
    assert loaded.step == 9 and loaded.entity is None
    assert torch.equal(logits(loaded.module), logits(model))  # type: ignore[arg-type]
    assert not list(tmp_path.glob(".as-stored*"))  # no temporary file left beside it

    without_out = export_safetensors(sreg, ckpt)  # the same content: the same blob
    assert without_out.path == "" and without_out.artifact == entity.artifact
    assert len(sreg.find(ExportEntity)) == 2
    assert blob_files(sreg) == sorted(
        sreg.blobs.path(b) for b in (ckpt.weights, entity.artifact)  # type: ignore[attr-defined]
    )


@pytest.mark.parametrize("dtype", sorted(SAFETENSORS_DTYPES))
def test_export_with_a_dtype_writes_a_new_blob(
    sreg: fs.EntityRegistry, tmp_path: Path, dtype: str
) -> None:
    g = torch.Generator().manual_seed(1)
    state = {
        "w": make_tensor(torch.float32, (6, 4), g),
        "d": make_tensor(torch.float64, (3,), g),
        "h": make_tensor(torch.bfloat16, (2, 2), g),
        "n": make_tensor(torch.int64, (4,), g),
        "m": make_tensor(torch.bool, (3,), g),
    }
    ckpt = save_checkpoint(sreg, state, step=4, metadata={"note": "x"})
    out = tmp_path / f"{dtype}.safetensors"
    entity = export_safetensors(sreg, ckpt, dtype=dtype, out=out)
    target = SAFETENSORS_DTYPES[dtype]
    assert entity.dtype == dtype and entity.derived_from == (ckpt.ref,)
    assert entity.artifact.format == "safetensors"
    assert entity.artifact.sha256 != ckpt.weights.sha256
    blob = sreg.read_blob(entity.artifact)
    assert out.read_bytes() == blob
    tensors, meta = read_safetensors(bytearray(blob), require_digest=True)
    for name, t in state.items():
        assert_same(tensors[name], t.to(target) if t.is_floating_point() else t, name)
    assert meta["forseti.step"] == "4" and meta["note"] == "x"
    assert meta["forseti.model"] == str(ckpt.model)
    assert_same_state(load_safetensors_file(out).state_dict, tensors)
    assert sreg.ancestors(entity)[0] == ckpt.ref


def test_export_with_a_dtype_updates_the_dtypes_in_the_header(sreg: fs.EntityRegistry) -> None:
    ckpt = save_checkpoint(sreg, {"w": torch.zeros(2, 2), "n": torch.zeros(3, dtype=torch.int64)})
    entity = export_safetensors(sreg, ckpt, dtype="f16")
    meta = header_of(sreg.read_blob(entity.artifact))[1]
    assert json.loads(meta["forseti.dtypes"]) == {"F16": 1, "I64": 1}


def test_an_f16_export_of_a_tiny_lm_rebuilds_it(sreg: fs.EntityRegistry, tmp_path: Path) -> None:
    model = tiny(6)
    ckpt = save_checkpoint(sreg, model)
    out = tmp_path / "f16.safetensors"
    export(sreg, ckpt.lineage_id, "safetensors", out=out, dtype="f16")
    loaded = load_safetensors_file(out)
    assert isinstance(loaded.module, TinyCausalLM)
    half = {k: v.to(torch.float16).to(torch.float32) for k, v in model.state_dict().items()}
    assert_same_state(snapshot(loaded.module), half)


def test_bad_export_arguments_change_nothing(sreg: fs.EntityRegistry, tmp_path: Path) -> None:
    ckpt = save_checkpoint(sreg, {"w": torch.zeros(2, 2)})
    before, blobs = n_entities(sreg), blob_files(sreg)
    for dtype in ("f8", "q8_0", "F16", "float16"):
        with pytest.raises(ValidationError, match="dtype"):
            export_safetensors(sreg, ckpt, dtype=dtype, out=tmp_path / "x.safetensors")
    with pytest.raises(ValidationError, match="format"):
        export(sreg, ckpt, "pickle")
    with pytest.raises(ValidationError, match="options"):
        export(sreg, ckpt, "safetensors", opset=17)
    with pytest.raises(ValidationError, match="not a checkpoint"):
        export_safetensors(sreg, ckpt.model)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="does not exist"):
        export_safetensors(sreg, ckpt, out=tmp_path / "nope" / "x.safetensors")
    with pytest.raises(ValidationError, match="directory"):
        export_safetensors(sreg, ckpt, out=tmp_path)
    assert blob_files(sreg) == blobs
    for dtype in SAFETENSORS_DTYPES:  # `out` is checked before the cast file is made
        with pytest.raises(ValidationError, match="does not exist"):
            export_safetensors(sreg, ckpt, dtype=dtype, out=tmp_path / "nope" / "x.safetensors")
        with pytest.raises(ValidationError, match="directory"):
            export_safetensors(sreg, ckpt, dtype=dtype, out=tmp_path)
    assert n_entities(sreg) == before
    assert sreg.find(ExportEntity) == []
    assert not list(tmp_path.rglob("*.safetensors*"))
    assert not (tmp_path / "nope").exists()
    assert staging_leftovers(sreg) == []


def test_a_bad_out_path_leaves_no_orphan_blob(sreg: fs.EntityRegistry, tmp_path: Path) -> None:
    ckpt = save_checkpoint(sreg, {"w": torch.zeros(2, 2)})
    blobs = blob_files(sreg)
    with pytest.raises(ValidationError):
        export_safetensors(sreg, ckpt, dtype="f16", out=tmp_path / "nope" / "x.safetensors")
    assert blob_files(sreg) == blobs


def test_export_replaces_an_existing_file(sreg: fs.EntityRegistry, tmp_path: Path) -> None:
    ckpt = save_checkpoint(sreg, {"w": torch.ones(3)})
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"old content")
    entity = export_safetensors(sreg, ckpt, out=out)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == entity.artifact.sha256


# --------------------------------------------------------------------------------------------
# 9. the streaming writer's memory bound (in a fresh process, measured by ru_maxrss)

_MEMORY_SCRIPT = r"""
import json, resource, sys
from pathlib import Path
import torch
import forseti as fs
from forseti.export import save_checkpoint, load_checkpoint

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

root = Path(sys.argv[1])
reg = fs.open(f"sqlite:///{root / 'mem.db'}", blob_dir=root / "blobs")
save_checkpoint(reg, {"w": torch.ones(64, 64), "v": torch.ones(64, 64).t()})  # warm up
N, SIDE = 100, 1024  # 100 tensors of 4 MiB: 400 MiB
state = {f"t{i}": torch.full((SIDE, SIDE), float(i)) for i in range(N)}
total = sum(t.numel() * t.element_size() for t in state.values())
p0 = peak()
c1 = save_checkpoint(reg, state, step=1)
p1 = peak()
transposed = {k: v.t() for k, v in list(state.items())[:25]}
c2 = save_checkpoint(reg, transposed, step=2)
p2 = peak()
print(json.dumps({"total": total, "tensor": SIDE * SIDE * 4, "contiguous": p1 - p0,
                  "transposed": p2 - p1, "size1": c1.weights.size, "size2": c2.weights.size}))
"""


@pytest.fixture(scope="module")
def memory_use(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Run the measurement once in a fresh process (ru_maxrss is a per-process peak)."""
    root = tmp_path_factory.mktemp("memory")
    # a fixed mmap threshold: glibc then returns every freed tensor to the OS at once, so the
    # peak counts the copies the writer holds, not the heap glibc keeps for reuse
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 << 10)}
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["size1"] > result["total"] and result["size2"] > result["total"] // 4
    return result


SLACK = 4 << 20


@pytest.mark.slow
def test_saving_contiguous_tensors_needs_no_extra_memory(memory_use: dict[str, int]) -> None:
    assert memory_use["contiguous"] <= memory_use["total"] // 10 + SLACK, memory_use


@pytest.mark.slow
def test_saving_non_contiguous_tensors_needs_one_tensor_at_most(
    memory_use: dict[str, int],
) -> None:
    assert memory_use["transposed"] <= memory_use["tensor"] + SLACK, memory_use
