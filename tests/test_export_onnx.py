"""ONNX export (issue 8): parity with torch at new shapes, provenance, and verified load.

Every export here runs the real exporter, ``onnx.checker`` and onnxruntime; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

import forseti as fs
from forseti.entities import Entity, ModelEntity
from forseti.errors import ConfigError, IntegrityError, NotFoundError, ValidationError
from forseti.export import ExportEntity, load_checkpoint, record_export, save_checkpoint
from forseti.export.onnx import (
    OnnxExportError,
    OnnxParityError,
    export_onnx,
    load_onnx,
    load_onnx_file,
    module_to_onnx,
    onnx_parity,
)
from forseti.export.onnx_check import DIGEST_KEY, parse_onnx, seal
from forseti.gspo.model import TinyCausalLM, TinyLMConfigEntity

ATOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _policy() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 2))


def _open(path: Path) -> fs.EntityRegistry:
    return fs.open(f"sqlite:///{path / 'forseti.db'}", blob_dir=path / "blobs")


def _blob_files(reg: fs.EntityRegistry) -> list[Path]:
    root = Path(reg.blobs.root)  # type: ignore[attr-defined]
    return sorted(p for p in root.rglob("*") if p.is_file())


def _state(reg: fs.EntityRegistry) -> tuple[int, int, list[Path]]:
    return len(reg.find(Entity)), len(reg.find(ExportEntity)), _blob_files(reg)


class LMStore:
    """A SQLite registry with a TinyCausalLM checkpoint and its ONNX export (shared, read-only)."""

    def __init__(self, root: Path) -> None:
        torch.manual_seed(0)
        self.reg = _open(root)
        self.lm = TinyCausalLM(TinyLMConfigEntity()).eval()
        self.ckpt = save_checkpoint(self.reg, self.lm, step=7)
        self.out = root / "tiny.onnx"
        self.export = export_onnx(self.reg, self.ckpt, out=self.out)


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LMStore]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    store = LMStore(tmp_path_factory.mktemp("onnx-lm"))
    torch.set_num_threads(threads)
    yield store
    store.reg.close()


@pytest.fixture
def sq(tmp_path: Path) -> Iterator[fs.EntityRegistry]:
    reg = _open(tmp_path)
    yield reg
    reg.close()


def _policy_export(reg: fs.EntityRegistry) -> tuple[nn.Module, ExportEntity]:
    torch.manual_seed(1)
    policy = _policy()
    ckpt = save_checkpoint(reg, policy)
    export = export_onnx(
        reg, ckpt, module=_policy(), example_inputs=torch.randn(3, 4),
        input_names=["obs"], output_names=["action"],
    )  # fmt: skip
    return policy, export


# --- TinyCausalLM --------------------------------------------------------------------------------


def test_lm_export_is_checked_and_recorded_with_provenance(lm: LMStore) -> None:
    e = lm.export
    assert isinstance(e, ExportEntity) and e.format == "onnx" and e.dtype == "f32"
    assert e.artifact.format == "onnx"
    assert 0 <= e.checks["onnx_max_abs_diff"] <= ATOL
    assert e.derived_from == (lm.ckpt.ref,) and e.checkpoint == lm.ckpt.ref
    assert lm.ckpt.ref in lm.reg.ancestors(e)
    assert e.ref in lm.reg.descendants(lm.ckpt)
    assert lm.reg.get(e.lineage_id) == e
    # the parity check ran on sizes other than the trace (2, 5), up to max_seq_len
    shapes = [tuple(tuple(s) for s in case) for case in e.options["checked_shapes"]]
    assert shapes[0] == ((2, 5),) and ((1, 1),) in shapes and any(s[0][1] == 32 for s in shapes)
    assert e.options["opset"] == 17 and e.options["input_names"] == ("input_ids",)
    # out= wrote exactly the stored blob; the file passes the full checker on its own
    data = lm.reg.read_blob(e.artifact)
    assert Path(e.path) == lm.out.resolve() and lm.out.read_bytes() == data
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["forseti.checkpoint"] == str(lm.ckpt.ref)
    assert props["forseti.weights"] == lm.ckpt.weights.sha256
    assert (
        props[DIGEST_KEY] == hashlib.sha256(data[: data.rindex(b"forseti.sha256") - 4]).hexdigest()
    )


def test_lm_graph_has_dynamic_batch_and_sequence(lm: LMStore) -> None:
    session = load_onnx(lm.reg, lm.export.ref)
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("input_ids", "tensor(int64)", ["batch", "sequence"])
    assert (out.name, out.type, out.shape) == ("logits", "tensor(float)", ["batch", "sequence", 14])
    # the weights came from the checkpoint: compare with the model load_checkpoint rebuilds
    torch_lm = load_checkpoint(lm.reg, lm.ckpt).module
    assert torch_lm is not None
    gen = torch.Generator().manual_seed(3)
    for shape in [(1, 1), (3, 7), (4, 32), (5, 13), (2, 5)]:
        ids = torch.randint(0, 14, shape, generator=gen)
        with torch.no_grad():
            want = torch_lm(ids).logits.numpy()
        got = session.run(["logits"], {"input_ids": ids.numpy()})[0]
        assert got.shape == (*shape, 14)
        assert np.abs(got - want).max() <= ATOL, shape


def test_lm_export_with_attention_mask(sq: fs.EntityRegistry) -> None:
    torch.manual_seed(2)
    lm = TinyCausalLM(TinyLMConfigEntity(max_seq_len=16))
    e = export_onnx(sq, save_checkpoint(sq, lm), attention_mask=True)
    assert e.checks["onnx_max_abs_diff"] <= ATOL
    session = load_onnx(sq, e)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        want = lm.eval()(ids, attention_mask=mask).logits.numpy()
    assert np.abs(got - want).max() <= ATOL
    alone = session.run(
        None, {"input_ids": ids[:1, 2:].numpy(), "attention_mask": mask[:1, 2:].numpy()}
    )
    assert np.abs(got[0, 2:] - alone[0][0]).max() <= ATOL  # left padding changes nothing


# --- policy network ------------------------------------------------------------------------------


def test_policy_export_on_every_backend(reg: fs.EntityRegistry) -> None:
    policy, e = _policy_export(reg)
    assert e.checks["onnx_max_abs_diff"] <= ATOL
    assert e.derived_from == (e.checkpoint,) and reg.get(e.lineage_id) == e
    session = load_onnx(reg, e.lineage_id)
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("obs", ["batch", 4])]
    for batch in (1, 17, 256):
        obs = torch.randn(batch, 4)
        with torch.no_grad():
            want = policy(obs).numpy()  # the checkpointed weights, not the fresh module's
        got = session.run(["action"], {"obs": obs.numpy()})[0]
        assert np.abs(got - want).max() <= ATOL


def test_pure_export_and_parity_without_a_registry() -> None:
    torch.manual_seed(4)
    policy = _policy()
    data = module_to_onnx(policy, torch.randn(2, 4), input_names=["obs"], output_names=["action"])
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    parse_onnx(data, require_digest=True)
    diff = onnx_parity(data, policy, [torch.randn(b, 4) for b in (1, 2, 9, 64)])
    assert 0 <= diff <= ATOL
    other = _policy()  # different weights: parity must notice
    assert onnx_parity(data, other, [torch.randn(3, 4)]) > 1e-2
    assert policy.training  # the module's mode is restored


class BakedBatch(nn.Module):
    """Uses the batch size as a Python int: tracing bakes it into the graph as a constant."""

    def __init__(self, reshape: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.reshape = reshape

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        n = int(obs.shape[0])
        y: torch.Tensor = self.lin(obs)
        return y.reshape(n, 2) if self.reshape else y * n  # wrong size / wrong values elsewhere


@pytest.mark.parametrize("reshape", [False, True], ids=["wrong-values", "runtime-fails"])
def test_size_baked_by_tracing_fails_parity_and_stores_nothing(
    sq: fs.EntityRegistry, reshape: bool
) -> None:
    ckpt = save_checkpoint(sq, BakedBatch())
    before = _state(sq)
    with pytest.raises(OnnxParityError) as info:
        export_onnx(sq, ckpt, module=BakedBatch(reshape), example_inputs=torch.randn(3, 4))
    assert isinstance(info.value, ValidationError) and info.value.max_abs_diff > ATOL
    assert (info.value.max_abs_diff == float("inf")) == reshape  # onnxruntime itself failed
    assert info.value.shapes != [[3, 4]]  # the trace shape itself agreed
    assert _state(sq) == before
    assert not list(Path(sq.blobs.tmp_dir).iterdir())  # no staging file left behind


# --- verified load -------------------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    os.chmod(path, 0o644)  # blob files are read-only
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[len(data) - 7 :]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_tampered_or_truncated_blob_fails_load(sq: fs.EntityRegistry, how: str) -> None:
    _, e = _policy_export(sq)
    load_onnx(sq, e)
    _damage(sq.blobs.path(e.artifact), how)  # type: ignore[attr-defined]
    with pytest.raises(IntegrityError):
        load_onnx(sq, e)


def test_mislabelled_blobs_fail_load(sq: fs.EntityRegistry) -> None:
    ckpt = save_checkpoint(sq, _policy())
    weights = sq.read_blob(ckpt.weights)
    as_onnx = record_export(sq, ckpt, "onnx", sq.put_blob(weights, format="onnx"))
    with pytest.raises(IntegrityError, match="not an ONNX model"):
        load_onnx(sq, as_onnx)
    garbage = record_export(sq, ckpt, "onnx", sq.put_blob(os.urandom(4096), format="onnx"))
    with pytest.raises(IntegrityError):
        load_onnx(sq, garbage)
    blob_says_st = record_export(sq, ckpt, "onnx", ckpt.weights)
    with pytest.raises(IntegrityError, match="safetensors"):
        load_onnx(sq, blob_says_st)
    gguf = record_export(sq, ckpt, "gguf", sq.put_blob(b"GGUF", format="gguf"))
    with pytest.raises(ValidationError, match="not onnx"):
        load_onnx(sq, gguf)
    with pytest.raises(ValidationError, match="not an export"):
        load_onnx(sq, ckpt.ref)


def test_load_onnx_file_verifies(lm: LMStore, tmp_path: Path) -> None:
    good = lm.out.read_bytes()
    sha = hashlib.sha256(good).hexdigest()
    assert load_onnx_file(lm.out).get_inputs()[0].name == "input_ids"  # self-digest
    assert load_onnx_file(lm.out, sha256=sha.upper()) is not None
    bad = tmp_path / "bad.onnx"
    flipped = bytearray(good)
    flipped[len(good) // 3] ^= 0x10
    bad.write_bytes(bytes(flipped))
    with pytest.raises(IntegrityError):
        load_onnx_file(bad, sha256=sha)
    with pytest.raises(IntegrityError):
        load_onnx_file(bad)  # the self-digest catches it too
    tail = len(good) - good.rindex(b"forseti.sha256") + 4
    for cut in (1, 100, len(good) // 2, len(good) - tail, len(good) - 1):
        bad.write_bytes(good[:cut])
        with pytest.raises(IntegrityError):
            load_onnx_file(bad)
    bad.write_bytes(os.urandom(2048))
    with pytest.raises(IntegrityError):
        load_onnx_file(bad)
    with pytest.raises(NotFoundError):
        load_onnx_file(tmp_path / "missing.onnx")
    with pytest.raises(ValidationError, match="sha256"):
        load_onnx_file(lm.out, sha256="abc")


def _identity_model(**node_kw: str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    node = helper.make_node("Identity" if not node_kw else "Evil", ["x"], ["y"], **node_kw)
    graph = helper.make_graph([node], "g", [x], [y])
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in node_kw.values()]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def test_external_data_custom_ops_and_undigested_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    plain = _identity_model().SerializeToString()
    path.write_bytes(plain)
    with pytest.raises(IntegrityError, match="self-digest"):
        load_onnx_file(path)  # nothing to verify it by
    session = load_onnx_file(path, sha256=hashlib.sha256(plain).hexdigest())
    assert session.run(None, {"x": np.ones(2, np.float32)})[0].tolist() == [1.0, 1.0]

    broken = _identity_model()
    broken.graph.node[0].input[0] = "undefined"  # parses, but is no valid graph
    path.write_bytes(seal(broken.SerializeToString()))
    with pytest.raises(IntegrityError, match="checker"):
        load_onnx_file(path)

    custom = seal(_identity_model(domain="com.evil.ops").SerializeToString())
    path.write_bytes(custom)
    with pytest.raises(IntegrityError, match="custom-op"):
        load_onnx_file(path)

    model = _identity_model()
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [0.0, 0.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    (tmp_path / "weights.bin").write_bytes(np.zeros(2, np.float32).tobytes())
    model.graph.initializer.append(weight)
    for location in ("weights.bin", "../../../../etc/passwd"):
        del weight.external_data[:]
        entry = weight.external_data.add()
        entry.key, entry.value = "location", location
        model.graph.initializer[0].CopyFrom(weight)
        path.write_bytes(seal(model.SerializeToString()))
        with pytest.raises(IntegrityError, match="external files"):
            load_onnx_file(path)


def test_loaders_never_unpickle(lm: LMStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a loader tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    load_onnx(lm.reg, lm.export)
    load_onnx_file(lm.out)


# --- bad input -----------------------------------------------------------------------------------


class Unregistered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.lin(obs)
        return y


def test_bad_input_raises_typed_errors_and_stores_nothing(
    sq: fs.EntityRegistry, tmp_path: Path
) -> None:
    ckpt = save_checkpoint(sq, Unregistered())
    model = sq.add(ModelEntity(name="not-a-checkpoint"))
    x = torch.randn(3, 4)
    before = _state(sq)
    ok: dict[str, object] = {"module": Unregistered(), "example_inputs": x}
    missing = "00000000-0000-0000-0000-000000000000"
    cases: list[tuple[type[Exception], dict[str, object], object]] = [
        (ConfigError, {}, ckpt),  # the architecture is not registered and no module given
        (ValidationError, {"module": Unregistered()}, ckpt),  # no example_inputs
        (ValidationError, ok, model),  # not a checkpoint
        (NotFoundError, ok, missing),
        (ValidationError, {**ok, "module": _policy()}, ckpt),  # the weights do not fit
        (ValidationError, {**ok, "module": "not a module"}, ckpt),
        (ValidationError, {**ok, "attention_mask": True}, ckpt),  # not a causal LM
        (ValidationError, {**ok, "atol": -1.0}, ckpt),
        (ValidationError, {**ok, "opset": 3}, ckpt),
        (ValidationError, {**ok, "example_inputs": "obs"}, ckpt),
        (ValidationError, {**ok, "input_names": ["a", "b"]}, ckpt),
        (ValidationError, {**ok, "dynamic_axes": {"zz": [0]}}, ckpt),
        (ValidationError, {**ok, "out": tmp_path / "no" / "f.onnx"}, ckpt),
    ]
    for error, kwargs, ref in cases:
        with pytest.raises(error):
            export_onnx(sq, ref, **kwargs)  # type: ignore[arg-type]
    assert _state(sq) == before
    assert not list(Path(sq.blobs.tmp_dir).iterdir())
    # a module whose forward cannot be traced fails as an export error, typed
    with pytest.raises(OnnxExportError):
        module_to_onnx(Unregistered(), torch.randn(3, 5))


def test_tampered_checkpoint_is_never_exported(sq: fs.EntityRegistry) -> None:
    ckpt = save_checkpoint(sq, _policy())
    _damage(sq.blobs.path(ckpt.weights), "flip")  # type: ignore[attr-defined]
    before = _state(sq)
    with pytest.raises(IntegrityError):
        export_onnx(sq, ckpt, module=_policy(), example_inputs=torch.randn(2, 4))
    assert _state(sq) == before
