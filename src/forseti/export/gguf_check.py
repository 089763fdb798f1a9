"""The export's read-back: a written GGUF file, parsed by ``gguf.GGUFReader``, against the checkpoint.

One sequential pass reads every tensor's bytes (in the same row chunks the writer used) and checks
them against the checkpoint tensor: F32 bit-exact, F16 bit-exactly ``tensor.half()``, Q8_0 within
its per-block rounding bound. The same pass hashes the file (on a thread) for the blob store, so
the store need not read it again. The folded output bias is checked by what it must do: with the
stored ``W``, ``W·β' = W·β + b``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize
from torch import Tensor

from ..errors import IntegrityError
from ..gspo.model import TinyLMConfigEntity
from .gguf_format import HashPipe
from .gguf_layout import config_json, tensor_names
from .gguf_read import ORIG_BETA, ORIG_BIAS, check_file, config_of, file_metadata

__all__ = ["read_back", "row_chunks", "rows_of"]

_Q = GGMLQuantizationType
# Elements converted per step: small enough that the several passes over a chunk (convert,
# check, compare) run from the CPU cache, large enough that numpy's per-call cost stays small.
_CHUNK_ELEMS = {_Q.F32: 1 << 18, _Q.F16: 1 << 18, _Q.Q8_0: 1 << 20}
_UINT = {_Q.F32: np.uint32, _Q.F16: np.uint16}


def rows_of(t: Tensor) -> Tensor:
    """``t`` as a 2-D (rows, row length) view; a 1-D tensor is one row."""
    return t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t.reshape(1, -1)


def row_chunks(t: Tensor, qtype: GGMLQuantizationType) -> Iterator[Tensor]:
    """``t``'s rows, a few at a time (at most ~4 MB of f32 each), as contiguous float32 on the
    CPU: the steps in which the writer converts and the read-back compares."""
    rows = rows_of(t)
    step = max(1, _CHUNK_ELEMS.get(qtype, 1 << 20) // max(1, rows.shape[1]))
    for r in range(0, rows.shape[0], step):
        yield rows[r : r + step].to("cpu", torch.float32).contiguous()


def _decode(buf: bytearray, qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> np.ndarray:
    """Stored bytes as float32 values of ``shape`` (rows, row length)."""
    if qtype == _Q.F32:
        return np.frombuffer(buf, np.float32).reshape(shape)
    if qtype == _Q.F16:
        return np.frombuffer(buf, np.float16).astype(np.float32).reshape(shape)
    return dequantize(np.frombuffer(buf, np.uint8).reshape(shape[0], -1), qtype).reshape(shape)


def _compare(buf: bytearray, src: Tensor, qtype: GGMLQuantizationType) -> float:
    """The max abs difference between the stored values and ``src`` (rows, row length).

    Raises :class:`IntegrityError` unless they are exactly what ``src`` converts to (for Q8_0:
    within ``0.57·max|block|/127`` per block of 32, rounding plus the f16 scale).
    """
    x = src.numpy()
    if qtype in _UINT:
        want = src.to(torch.float16) if qtype == _Q.F16 else src
        bits = want.numpy().reshape(-1).view(_UINT[qtype])
        if not np.array_equal(np.frombuffer(buf, _UINT[qtype]), bits):
            raise IntegrityError(f"read-back: stored {qtype.name} values are not the checkpoint's")
        if qtype == _Q.F32:
            return 0.0
        err = want.float()  # = the stored values, just checked bit for bit
        return float(err.sub_(src).abs_().max())
    got = _decode(buf, qtype, x.shape)
    err_np = np.abs(got - x).reshape(-1, 32)
    bound = np.abs(x).reshape(-1, 32).max(axis=1, keepdims=True) * (0.57 / 127) + 4e-6
    if not bool((err_np <= bound).all()):
        raise IntegrityError(f"read-back: stored {qtype.name} values exceed the rounding bound")
    return float(err_np.max())


def _read_exact(f: BinaryIO, n: int) -> bytearray:
    buf = bytearray(n)
    if n and f.readinto(buf) != n:  # type: ignore[attr-defined]
        raise IntegrityError("read-back: the file is shorter than written")
    return buf


def read_back(
    path: Path,
    state: Mapping[str, Tensor],
    cfg: TinyLMConfigEntity,
    digest: str,
    types: Mapping[str, str],
    output_bias: str,
) -> tuple[dict[str, float], str]:
    """Check the file at ``path`` against ``state`` (see the module docstring).

    Returns the checks (``gguf_max_abs_diff_<type>`` per stored type, ``gguf_max_abs_diff``
    overall, ``gguf_output_bias_residual`` when folded) and the file's sha256.
    """
    folding = output_bias == "folded"
    with path.open("rb") as f:
        reader, found = check_file(f, verify=False)
        meta = file_metadata(reader)
        config_of(meta, {})  # architecture and hyperparameter keys agree with forseti.config
        if found != digest or meta.get("forseti.config") != config_json(cfg):
            raise IntegrityError("read-back: the header is not the one written")
        for key, tname in ((ORIG_BETA, "ln_f.bias"), (ORIG_BIAS, "lm_head.bias")):
            if not np.array_equal(np.asarray(meta[key], np.float32), state[tname].float().numpy()):
                raise IntegrityError(f"read-back: {key} differs from the checkpoint")
        names = {g: t for t, g in tensor_names(cfg.n_layers)}
        if sorted(t.name for t in reader.tensors) != sorted(names):
            raise IntegrityError("read-back: the file does not hold the tensors written")
        diffs: dict[str, float] = {}
        kept: dict[str, list[np.ndarray]] = {"output.weight": [], "output_norm.bias": []}
        pos = f.seek(0)
        with HashPipe() as pipe:
            for t in sorted(reader.tensors, key=lambda t: int(t.data_offset)):
                if t.tensor_type.name != types[t.name]:
                    raise IntegrityError(f"read-back: {t.name} is {t.tensor_type.name}")
                pipe.put(_read_exact(f, int(t.data_offset) - pos))
                source = state[names[t.name]]  # read once (a lazily loaded checkpoint)
                row_bytes = int(t.n_bytes) // rows_of(source).shape[0]
                for src in row_chunks(source, t.tensor_type):
                    buf = _read_exact(f, row_bytes * src.shape[0])
                    pipe.put(buf)
                    folded = folding and t.name == "output_norm.bias"  # checked below
                    diff = 0.0 if folded else _compare(buf, src, t.tensor_type)
                    key = f"gguf_max_abs_diff_{t.tensor_type.name.lower()}"
                    diffs[key] = max(diffs.get(key, 0.0), diff)
                    if folding and t.name in kept:
                        got = _decode(buf, t.tensor_type, tuple(src.shape))
                        kept[t.name].append(got.astype(np.float64))
                pos = int(t.data_offset) + int(t.n_bytes)
            while chunk := f.read(8 << 20):
                pipe.put(chunk)
            sha = pipe.hexdigest()
    checks = {**diffs, "gguf_max_abs_diff": max(diffs.values())}
    if folding:
        beta, b = state["ln_f.bias"].double().numpy(), state["lm_head.bias"].double().numpy()
        W = np.concatenate(kept["output.weight"])  # (V, C), as stored; V <= C when folded
        beta2 = np.concatenate(kept["output_norm.bias"]).reshape(-1)
        residual = float(np.max(np.abs(W @ (beta2 - beta) - b)))
        if residual > 1e-5 * (1.0 + float(np.max(np.abs(b)))):
            raise IntegrityError(f"read-back: the folded output bias is off by {residual:.3g}")
        checks["gguf_output_bias_residual"] = residual
    return checks, sha
