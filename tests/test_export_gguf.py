"""GGUF export of TinyCausalLM: layout as llama.cpp's gpt2 expects, read-back, integrity, llama.cpp.

Every file is read back with the ``gguf`` package's own reader (not only Forseti's) and compared
tensor by tensor: f32 bit-exact, f16 exactly ``tensor.half()``, q8_0 byte-exact against the
hand-written reference quantizer below. The llama.cpp test runs where ``llama_cpp``
(llama-cpp-python) is installed.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from registries import memory
from safetensors.torch import save as st_save

import forseti as fs
from forseti.errors import IntegrityError, ValidationError
from forseti.export import ExportEntity, save_checkpoint
from forseti.export.gguf import (
    GGUFVocab,
    export_gguf,
    gguf_to_module,
    gguf_to_state_dict,
    load_gguf,
    read_gguf,
    tensor_names,
    verify_gguf,
    write_gguf,
)
from forseti.export.gguf_format import DIGEST_AT
from forseti.gspo.model import TinyCausalLM, TinyLMConfigEntity
from forseti.gspo.tasks import BOS, EOS, PAD, SEP, Vocab

Q = gguf.GGMLQuantizationType
PROMPT = torch.tensor([[BOS, 1, 2, 3, 4, SEP, 4, 3, 2]])


def make_model(seed: int = 0, **config: Any) -> TinyCausalLM:
    torch.manual_seed(seed)
    return TinyCausalLM(TinyLMConfigEntity(**config)).eval()


@pytest.fixture(scope="module")
def model() -> TinyCausalLM:
    return make_model()


def write(model: TinyCausalLM, path: Path, dtype: str, **kw: Any) -> Path:
    write_gguf(path, model.state_dict(), model.config, dtype=dtype, **kw)
    return path


def reader_tensors(path: Path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def field(reader: gguf.GGUFReader, key: str) -> Any:
    f = reader.get_field(key)
    assert f is not None, key
    return f.contents()


def ref_q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 by hand: blocks of 32 along a row, d = max|x|/127 stored as f16, q = round(x/d)
    (half away from zero, as C's roundf). Returns (raw bytes per row, dequantized values)."""
    rows = x.shape[0]
    blocks = x.astype(np.float32).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(d == 0, 0, blocks / d)
    q = (np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)).astype(np.int8)
    d16 = d.astype(np.float16)
    raw = np.concatenate([d16.view(np.uint8), q.view(np.uint8)], axis=1)  # (blocks, 2 + 32)
    return raw.reshape(rows, -1), (q.astype(np.float32) * d16.astype(np.float32)).reshape(x.shape)


# --- layout: what llama.cpp's gpt2 loader asks for (src/models/gpt2.cpp, create_tensor calls) ---


def test_names_dims_types_and_metadata_are_llama_cpp_gpt2(model: TinyCausalLM, tmp_path: Path):
    cfg = model.config
    C, V, T, F = cfg.d_model, cfg.vocab_size, cfg.max_seq_len, cfg.mlp_ratio * cfg.d_model
    path = write(model, tmp_path / "m.gguf", "f16")
    reader = gguf.GGUFReader(path)
    dims = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}  # GGUF order
    want = {
        "token_embd.weight": (C, V),
        "position_embd.weight": (C, T),
        "output_norm.weight": (C,),
        "output_norm.bias": (C,),
        "output.weight": (C, V),
    }
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        want |= {
            b + "attn_norm.weight": (C,),
            b + "attn_norm.bias": (C,),
            b + "attn_qkv.weight": (C, 3 * C),
            b + "attn_qkv.bias": (3 * C,),
            b + "attn_output.weight": (C, C),
            b + "attn_output.bias": (C,),
            b + "ffn_norm.weight": (C,),
            b + "ffn_norm.bias": (C,),
            b + "ffn_up.weight": (C, F),
            b + "ffn_up.bias": (F,),
            b + "ffn_down.weight": (F, C),
            b + "ffn_down.bias": (C,),
        }
    assert dims == want  # exactly these: llama.cpp refuses a file with extra tensors
    allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GPT2]}
    generic = {re.sub(r"^blk\.\d+\.", "blk.{bid}.", n.rsplit(".", 1)[0]) for n in dims}
    assert generic <= allowed  # the gguf package's own table of gpt2 tensor names
    types = {t.name: t.tensor_type for t in reader.tensors}
    for name, shape in want.items():
        expect = Q.F16 if len(shape) == 2 and name != "position_embd.weight" else Q.F32
        assert types[name] == expect, name
    assert field(reader, "general.architecture") == "gpt2"
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert field(reader, "gpt2.context_length") == T
    assert field(reader, "gpt2.embedding_length") == C
    assert field(reader, "gpt2.feed_forward_length") == F
    assert field(reader, "gpt2.block_count") == cfg.n_layers
    assert field(reader, "gpt2.attention.head_count") == cfg.n_heads
    assert field(reader, "gpt2.attention.layer_norm_epsilon") == pytest.approx(1e-5)
    assert json.loads(field(reader, "forseti.config"))["d_model"] == C
    assert field(reader, "forseti.output_bias") == "folded"
    assert next(iter(reader.fields.values())).name == "GGUF.version"
    assert next(k for k in reader.fields if not k.startswith("GGUF.")) == "forseti.sha256"


def test_tokenizer_is_the_toy_vocabulary(model: TinyCausalLM, tmp_path: Path):
    reader = gguf.GGUFReader(write(model, tmp_path / "m.gguf", "f32"))
    assert field(reader, "tokenizer.ggml.model") == "llama"
    assert field(reader, "tokenizer.ggml.tokens") == list(Vocab.symbols)
    control = int(gguf.TokenType.CONTROL)
    normal = int(gguf.TokenType.NORMAL)
    types = field(reader, "tokenizer.ggml.token_type")
    assert types == [control if i in (BOS, EOS, PAD) else normal for i in range(14)]
    assert field(reader, "tokenizer.ggml.scores") == [0.0] * 14
    assert field(reader, "tokenizer.ggml.bos_token_id") == BOS
    assert field(reader, "tokenizer.ggml.eos_token_id") == EOS
    assert field(reader, "tokenizer.ggml.padding_token_id") == PAD
    assert field(reader, "tokenizer.ggml.seperator_token_id") == SEP
    assert field(reader, "tokenizer.ggml.add_bos_token") is True
    assert field(reader, "tokenizer.ggml.add_space_prefix") is False
    custom = GGUFVocab(tuple("abcdefghijklmn"), eos_id=3)
    other = gguf.GGUFReader(write(model, tmp_path / "v.gguf", "f32", vocab=custom))
    assert field(other, "tokenizer.ggml.tokens") == list("abcdefghijklmn")
    assert field(other, "tokenizer.ggml.add_bos_token") is False
    assert other.get_field("tokenizer.ggml.bos_token_id") is None


# --- read-back tensor by tensor with gguf.GGUFReader ---


def test_f32_is_bit_exact_and_the_output_bias_fold_is_exact(model: TinyCausalLM, tmp_path: Path):
    state = model.state_dict()
    tensors = reader_tensors(write(model, tmp_path / "m.gguf", "f32"))
    for tname, gname in tensor_names(model.config.n_layers):
        got = np.asarray(tensors[gname].data)
        if tname != "ln_f.bias":
            assert tensors[gname].tensor_type == Q.F32
            assert np.array_equal(got, state[tname].numpy()), tname
    # llama.cpp's gpt2 has no output bias: W·β' must equal W·β + b (the bias, folded)
    W = torch.from_numpy(np.array(tensors["output.weight"].data)).double()
    beta2 = torch.from_numpy(np.array(tensors["output_norm.bias"].data)).double()
    beta, b = state["ln_f.bias"].double(), state["lm_head.bias"].double()
    assert (W @ beta2 - (W @ beta + b)).abs().max() < 1e-6
    assert not torch.allclose(beta2, beta)  # it did change


def test_f16_is_exactly_torch_half(model: TinyCausalLM, tmp_path: Path):
    state = model.state_dict()
    tensors = reader_tensors(write(model, tmp_path / "m.gguf", "f16"))
    for tname, gname in tensor_names(model.config.n_layers):
        t = tensors[gname]
        if t.tensor_type == Q.F16:
            assert np.array_equal(np.asarray(t.data), state[tname].half().numpy()), tname
        elif tname != "ln_f.bias":
            assert np.array_equal(np.asarray(t.data), state[tname].numpy()), tname
    assert sum(t.tensor_type == Q.F16 for t in tensors.values()) == 2 + 4 * model.config.n_layers


def test_q8_0_matches_a_hand_written_reference(model: TinyCausalLM, tmp_path: Path):
    state = model.state_dict()
    tensors = reader_tensors(write(model, tmp_path / "m.gguf", "q8_0"))
    quantized = 0
    for tname, gname in tensor_names(model.config.n_layers):
        t = tensors[gname]
        if t.tensor_type != Q.Q8_0:
            continue
        quantized += 1
        raw, deq = ref_q8_0(state[tname].numpy())
        assert np.array_equal(np.asarray(t.data), raw), tname
        assert np.array_equal(gguf.quants.dequantize(np.asarray(t.data), Q.Q8_0), deq), tname
    assert quantized == 2 + 4 * model.config.n_layers  # all 2-D weights but position_embd
    assert tensors["position_embd.weight"].tensor_type == Q.F32


def test_q8_0_falls_back_to_f16_for_rows_not_a_multiple_of_32(tmp_path: Path):
    m = make_model(d_model=40, n_heads=4, vocab_size=14)
    result = write_gguf(tmp_path / "m.gguf", m.state_dict(), m.config, dtype="q8_0")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(result.path).tensors}
    assert types["blk.0.ffn_up.weight"] == Q.F16  # rows of d_model=40
    assert types["blk.0.ffn_down.weight"] == Q.Q8_0  # rows of 160
    assert result.fallbacks == {g: "f16" for g, q in types.items() if q == Q.F16}
    assert "blk.0.ffn_down.weight" not in result.fallbacks


@pytest.mark.parametrize(("dtype", "tol"), [("f32", 0.0), ("f16", 2e-3), ("q8_0", 3e-2)])
def test_module_rebuilt_from_gguf_gives_the_checkpoints_logits(
    model: TinyCausalLM, tmp_path: Path, dtype: str, tol: float
):
    path = write(model, tmp_path / "m.gguf", dtype)
    contents = read_gguf(path)
    state = gguf_to_state_dict(contents)
    if dtype == "f32":
        for k, v in model.state_dict().items():
            assert torch.equal(state[k], v), k  # ln_f.bias and lm_head.bias restored exactly
    ref = model(PROMPT).logits
    assert (gguf_to_module(contents)(PROMPT).logits - ref).abs().max() <= tol
    # What llama.cpp runs (the folded ln_f.bias, no output bias) gives the same logits
    folded_only = gguf_to_module(contents, original=False)
    assert not bool(folded_only.lm_head.bias.any())
    assert not torch.equal(folded_only.ln_f.bias, model.ln_f.bias)
    assert (folded_only(PROMPT).logits - ref).abs().max() <= max(tol, 1e-5)
    del contents.metadata["forseti.original.output.bias"]  # half a pair is a damaged file
    with pytest.raises(IntegrityError):
        gguf_to_state_dict(contents)


def test_output_bias_that_cannot_be_folded(tmp_path: Path):
    m = make_model(vocab_size=80, d_model=32, n_heads=4)  # more tokens than dimensions
    with pytest.raises(ValidationError, match="output_bias='drop'"):
        write(m, tmp_path / "m.gguf", "f32")
    assert list(tmp_path.iterdir()) == []
    result = write_gguf(
        tmp_path / "m.gguf", m.state_dict(), m.config, dtype="f32", output_bias="drop"
    )
    assert result.output_bias == "dropped"
    contents = read_gguf(result.path)
    assert contents.metadata["forseti.output_bias"] == "dropped"
    assert contents.metadata["tokenizer.ggml.tokens"][:2] == ["<|0|>", "<|1|>"]
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(gguf_to_module(contents)(prompt).logits, m(prompt).logits)
    m.lm_head.bias.data.zero_()  # nothing to fold
    assert write_gguf(tmp_path / "z.gguf", m.state_dict(), m.config).output_bias == "none"


# --- integrity: digest, tampering, truncation, mislabelling ---


def test_self_digest_is_the_sha256_with_its_own_value_zeroed(model: TinyCausalLM, tmp_path: Path):
    result = write_gguf(tmp_path / "m.gguf", model.state_dict(), model.config, dtype="q8_0")
    data = bytearray(result.path.read_bytes())
    assert data[DIGEST_AT : DIGEST_AT + 64].decode() == result.digest
    data[DIGEST_AT : DIGEST_AT + 64] = b"0" * 64
    assert hashlib.sha256(data).hexdigest() == result.digest
    assert verify_gguf(result.path) == result.digest == read_gguf(result.path).digest
    assert verify_gguf(result.path.read_bytes()) == result.digest
    assert len(data) == result.nbytes and not list(tmp_path.glob(".*.part"))


def _flipped(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def test_tampered_and_truncated_files_raise_integrity_error(model: TinyCausalLM, tmp_path: Path):
    data = write(model, tmp_path / "m.gguf", "f16").read_bytes()
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    in_data = reader.tensors[3].data_offset + 5
    in_header = reader.get_field("general.name").offset + 20  # type: ignore[union-attr]
    in_tokens = reader.get_field("tokenizer.ggml.tokens").offset + 40  # type: ignore[union-attr]
    for at in (in_data, in_header, in_tokens, DIGEST_AT + 3, len(data) - 40):
        with pytest.raises(IntegrityError):
            read_gguf(_flipped(data, at))
    for size in (0, 3, 23, 100, reader.data_offset - 1, in_data, len(data) - 1):
        bad = tmp_path / "cut.gguf"
        bad.write_bytes(data[:size])
        with pytest.raises(IntegrityError):
            read_gguf(bad)
        with pytest.raises(IntegrityError):  # structure is checked even without the digest
            read_gguf(bad, verify=False)
    # a hostile count is refused before anything loops on it
    huge = bytearray(data)
    huge[16:24] = (2**62).to_bytes(8, "little")
    with pytest.raises(IntegrityError, match="exceed"):
        read_gguf(bytes(huge), verify=False)


def test_mislabelled_files_raise_integrity_error(model: TinyCausalLM, tmp_path: Path):
    safetensors = st_save({k: v.contiguous() for k, v in model.state_dict().items()})
    for blob in (safetensors, b"", b"GGUF", b"\x00" * 4096, b"GGUF" + b"\xff" * 400):
        with pytest.raises(IntegrityError):
            read_gguf(blob)
    # a valid GGUF from another writer has no self-digest: refused unless verify=False
    w = gguf.GGUFWriter(tmp_path / "other.gguf", "gpt2")
    w.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(IntegrityError, match="self-digest"):
        read_gguf(tmp_path / "other.gguf")
    foreign = read_gguf(tmp_path / "other.gguf", verify=False)
    assert foreign.digest is None and foreign.tensors["token_embd.weight"].shape == (4, 8)
    with pytest.raises(IntegrityError):  # gpt2, but not a whole TinyCausalLM
        gguf_to_state_dict(foreign)
    # re-digested after relabelling: self-consistent, but its keys contradict forseti.config
    data = bytearray(write(model, tmp_path / "m.gguf", "f32").read_bytes())
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    part = reader.get_field("gpt2.block_count").parts[-1]  # type: ignore[union-attr]
    at = reader.get_field("gpt2.block_count").offset + sum(
        p.nbytes for p in reader.get_field("gpt2.block_count").parts[:-1]
    )  # type: ignore[union-attr]
    assert int(part[0]) == 2
    data[at : at + 4] = (3).to_bytes(4, "little")
    data[DIGEST_AT : DIGEST_AT + 64] = b"0" * 64
    data[DIGEST_AT : DIGEST_AT + 64] = hashlib.sha256(data).hexdigest().encode()
    relabelled = read_gguf(bytes(data))  # the digest holds ...
    with pytest.raises(IntegrityError, match="mislabelled"):
        gguf_to_state_dict(relabelled)  # ... the labels do not


def test_bad_inputs_raise_typed_errors_and_write_nothing(model: TinyCausalLM, tmp_path: Path):
    state, cfg = model.state_dict(), model.config
    out = tmp_path / "m.gguf"
    bad_calls: list[tuple[Any, dict[str, Any]]] = [
        (state, {"dtype": "q4_0"}),
        ({k: v for k, v in state.items() if k != "ln_f.weight"}, {}),
        ({**state, "extra.weight": torch.zeros(2)}, {}),
        ({**state, "tok_emb.weight": torch.zeros(3, 64)}, {}),
        ({**state, "tok_emb.weight": torch.zeros(14, 64, dtype=torch.long)}, {}),
        ({**state, "lm_head.weight": torch.full((14, 64), 1e6)}, {"dtype": "f16"}),
        ({**state, "ln_1.weight": torch.full((64,), float("nan"))}, {}),
        (state, {"vocab": list("abc")}),
        (state, {"metadata": {"general.name": "x"}}),
        (state, {"metadata": {"forseti.config": "{}"}}),
        (state, {"metadata": {"note": object()}}),
        (state, {"output_bias": "keep"}),
        ([1, 2], {}),
    ]
    for sd, kw in bad_calls:
        with pytest.raises(ValidationError):
            write_gguf(out, sd, cfg, **kw)
    with pytest.raises(ValidationError):
        write_gguf(out, state, {"d_model": 63, "n_heads": 4})
    for where in (tmp_path, tmp_path / "absent" / "m.gguf"):
        with pytest.raises(ValidationError):
            write_gguf(where, state, cfg)
    for tokens, special in ((tuple("abcdefghijklmn"), {"bos_id": 99}), (("a", "a"), {}), ((), {})):
        with pytest.raises(ValidationError):
            GGUFVocab(tokens, **special)
    with pytest.raises(ValidationError):
        read_gguf(12345)  # type: ignore[arg-type]
    with pytest.raises(fs.errors.NotFoundError):
        read_gguf(tmp_path / "absent.gguf")
    assert list(tmp_path.iterdir()) == []  # no file, no leftover .part


# --- through the registry ---


def test_export_records_checks_and_loads_back(reg: fs.EntityRegistry, tmp_path: Path):
    model = make_model(seed=3)
    ckpt = save_checkpoint(reg, model, step=7)
    exported = export_gguf(reg, ckpt, dtype="f16", out=tmp_path / "tiny.gguf")
    assert isinstance(exported, ExportEntity) and exported.format == "gguf"
    assert exported.dtype == "f16" and exported.derived_from == (ckpt.ref,)
    assert exported.checks["gguf_max_abs_diff_f32"] == 0.0
    largest = max(float(v.abs().max()) for v in model.state_dict().values())
    assert 0 < exported.checks["gguf_max_abs_diff_f16"] <= largest * 2**-11  # f16 rounding
    assert exported.checks["gguf_output_bias_residual"] < 1e-6
    assert exported.options["output_bias"] == "folded"
    contents = load_gguf(reg, exported)
    assert contents.metadata["forseti.checkpoint"] == str(ckpt.ref)
    assert contents.metadata["forseti.step"] == 7
    ref = model(PROMPT).logits
    assert (gguf_to_module(contents)(PROMPT).logits - ref).abs().max() < 2e-3
    copy = Path(exported.path)
    assert copy == (tmp_path / "tiny.gguf").resolve()
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == exported.artifact.sha256
    assert verify_gguf(copy) == exported.options["digest"]


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_export_other_dtypes_and_refusals_store_nothing(dtype: str):
    reg = memory()
    model = make_model(seed=4)
    ckpt = save_checkpoint(reg, model)
    exported = export_gguf(reg, ckpt.ref, dtype=dtype)
    key = f"gguf_max_abs_diff_{dtype}"
    assert exported.checks[key] == exported.checks["gguf_max_abs_diff"]
    assert (exported.checks[key] == 0.0) == (dtype == "f32")
    assert load_gguf(reg, exported.ref).metadata["forseti.dtype"] == dtype
    before = len(reg.find(ExportEntity))
    with pytest.raises(ValidationError):
        export_gguf(reg, ckpt, dtype="bf16")
    with pytest.raises(ValidationError):
        export_gguf(reg, ckpt, vocab=list("ab"))
    other = save_checkpoint(reg, {"w": torch.zeros(2, 2)})
    with pytest.raises(ValidationError, match="TinyCausalLM"):
        export_gguf(reg, other)
    assert len(reg.find(ExportEntity)) == before
    assert [p.name for p in reg.blobs.tmp_dir.iterdir() if p.name.startswith("export-")] == []
    # an export entity that calls a safetensors blob GGUF is refused when loaded
    fake = reg.commit(exported.evolve(artifact=ckpt.weights.model_copy(update={"format": "gguf"})))
    with pytest.raises(IntegrityError):
        load_gguf(reg, fake)
    wrong = reg.commit(
        fake.evolve(artifact=exported.artifact, dtype="f16" if dtype != "f16" else "f32")
    )
    with pytest.raises(IntegrityError, match="mislabelled"):
        load_gguf(reg, wrong)


# --- llama.cpp itself ---


def ggml_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU as llama.cpp's CPU backend computes it for gpt2 (GGML_GELU_FP16): x rounded to f16,
    the tanh approximation, the result rounded to f16; x <= -10 gives 0 and x >= 10 gives x."""
    y = F.gelu(x.half().float(), approximate="tanh").half().float()
    return torch.where(x >= 10, x, torch.where(x <= -10, torch.zeros_like(x), y))


def reference_logits(
    state: dict[str, torch.Tensor], cfg: TinyLMConfigEntity, tokens: list[int], gelu: Any
) -> torch.Tensor:
    """An independent forward of a TinyCausalLM state dict over ``tokens``: (T, V) logits."""
    T, C, H = len(tokens), cfg.d_model, cfg.n_heads
    x = state["tok_emb.weight"][torch.tensor(tokens)] + state["pos_emb.weight"][:T]  # (T, C)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(cfg.n_layers):
        w = {
            k.removeprefix(f"blocks.{i}."): v
            for k, v in state.items()
            if k.startswith(f"blocks.{i}.")
        }
        h = F.layer_norm(x, (C,), w["ln_1.weight"], w["ln_1.bias"], 1e-5)
        q, k, v = F.linear(h, w["attn.qkv.weight"], w["attn.qkv.bias"]).split(C, -1)
        q, k, v = (t.view(T, H, C // H).transpose(0, 1) for t in (q, k, v))  # (H, T, D)
        att = (q @ k.transpose(-1, -2) / math.sqrt(C // H)).masked_fill(~causal, -math.inf)
        y = (att.softmax(-1) @ v).transpose(0, 1).reshape(T, C)
        x = x + F.linear(y, w["attn.proj.weight"], w["attn.proj.bias"])
        h = F.layer_norm(x, (C,), w["ln_2.weight"], w["ln_2.bias"], 1e-5)
        h = gelu(F.linear(h, w["mlp_in.weight"], w["mlp_in.bias"]))
        x = x + F.linear(h, w["mlp_out.weight"], w["mlp_out.bias"])
    h = F.layer_norm(x, (C,), state["ln_f.weight"], state["ln_f.bias"], 1e-5)
    return F.linear(h, state["lm_head.weight"], state["lm_head.bias"])


def test_the_reference_forward_is_tiny_causal_lm(model: TinyCausalLM):
    """The llama.cpp test's reference is only as good as this: it is TinyCausalLM's forward."""
    tokens = PROMPT[0].tolist()
    got = reference_logits(model.state_dict(), model.config, tokens, F.gelu)
    assert (got - model(PROMPT).logits[0]).abs().max() < 1e-5
    mimic = reference_logits(model.state_dict(), model.config, tokens, ggml_gelu)
    assert 0 < (mimic - got).abs().max() < 1e-3  # ggml's GELU differs, a little


# Measured with llama-cpp-python 0.3.36 (CPU, AVX2), model seed 1, as (vs the ggml-GELU reference,
# vs torch): f32 (3.6e-7, 1.1e-4), f16 (2.7e-4, 4.7e-4), q8_0 (8.3e-3, 1.3e-2). Other seeds and a
# 4-layer d_model=128 model stayed below 1.7e-4 (f32), 6.1e-4 (f16) and 1.7e-2 (q8_0) vs torch.
LLAMA_TOLERANCES = {"f32": (1e-4, 1e-3), "f16": (3e-3, 3e-3), "q8_0": (3e-2, 5e-2)}


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_llama_cpp_loads_the_file_and_matches_torch_logits(tmp_path: Path, dtype: str):
    llama_cpp = pytest.importorskip("llama_cpp")
    model = make_model(seed=1)
    tokens = PROMPT[0].tolist()
    path = write(model, tmp_path / f"m-{dtype}.gguf", dtype)
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=model.config.max_seq_len,
        logits_all=True,
        verbose=False,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        flash_attn=False,
    )
    try:
        assert llm.n_vocab() == model.config.vocab_size
        assert (llm.token_bos(), llm.token_eos()) == (BOS, EOS)
        assert llm.tokenize(b"12|", add_bos=True, special=False) == [BOS, 1, 2, SEP]
        llm.reset()
        llm.eval(tokens)  # ids as they are: no BOS added
        got = torch.from_numpy(np.array(llm.scores[: len(tokens)], dtype=np.float32))
    finally:
        llm.close()
    # (a) the layout: the file's own weights through ggml's GELU, as llama.cpp computes them
    stored = gguf_to_state_dict(read_gguf(path), original=False)  # folded bias, as llama.cpp
    mimic = reference_logits(stored, model.config, tokens, ggml_gelu)
    # (b) the checkpoint: torch's TinyCausalLM, exact GELU
    with torch.no_grad():
        exact = model(PROMPT).logits[0]
    layout_diff = float((got - mimic).abs().max())
    torch_diff = float((got - exact).abs().max())
    print(f"llama.cpp {dtype}: vs ggml-GELU reference {layout_diff:.2g}, vs torch {torch_diff:.2g}")
    layout_tol, torch_tol = LLAMA_TOLERANCES[dtype]
    assert layout_diff <= layout_tol
    assert torch_diff <= torch_tol


def test_readme_example_roundtrip_in_memory_buffer(model: TinyCausalLM, tmp_path: Path):
    path = write(model, tmp_path / "m.gguf", "f32")
    contents = read_gguf(io.BytesIO(path.read_bytes()))
    assert contents.types["token_embd.weight"] == "F32"
    assert contents.metadata["forseti.format"] == "forseti.gguf/1"
