"""Reading GGUF files back: structure and self-digest checks first, then ``gguf.GGUFReader``.

:func:`read_gguf` takes a path, bytes or a binary file. The header is walked with every count and
length bounded by the file's size (:func:`~forseti.export.gguf_format.scan_header`) and, with
``verify``, the ``forseti.sha256`` self-digest recomputed; only then does ``GGUFReader`` parse it.
A tampered, truncated or mislabelled file is an :class:`IntegrityError` before any tensor exists;
nothing is unpickled or executed. :func:`gguf_to_state_dict` / :func:`gguf_to_module` map a file
back to TinyCausalLM names (``lm_head.bias`` and ``ln_f.bias`` restored from ``forseti.original.*``).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from gguf import GGUFReader
from gguf.constants import GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize
from torch import Tensor

from ..errors import IntegrityError, NotFoundError, ValidationError
from ..gspo.model import TinyCausalLM, TinyLMConfigEntity
from .gguf_format import scan_header, self_digest
from .gguf_layout import DIGEST_KEY, GGUF_ARCH, as_config, expected_shapes, tensor_names

__all__ = [
    "ORIG_BETA",
    "ORIG_BIAS",
    "GGUFContents",
    "GGUFSource",
    "gguf_to_module",
    "gguf_to_state_dict",
    "read_gguf",
    "verify_gguf",
]

_Q = GGMLQuantizationType
ORIG_BETA, ORIG_BIAS = "forseti.original.output_norm.bias", "forseti.original.output.bias"
GGUFSource = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO


@dataclass
class GGUFContents:
    """A read GGUF file. ``metadata``: every key (numeric arrays as numpy, string arrays as
    lists). ``tensors``: llama.cpp names → numpy arrays in numpy/torch order; F32/F16 as stored,
    quantized types dequantized to float32. ``types``: GGML type name per tensor."""

    metadata: dict[str, Any]
    tensors: dict[str, np.ndarray]
    types: dict[str, str] = field(default_factory=dict)
    digest: str | None = None


@contextmanager
def opened(source: GGUFSource) -> Iterator[BinaryIO]:
    """A real, seekable file of ``source`` (bytes and file objects without a descriptor are
    copied to a temporary file, which ``np.memmap`` needs)."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not p.is_file():
            raise NotFoundError(f"no GGUF file {p}")
        with p.open("rb") as f:
            yield f
        return
    if isinstance(source, (bytes, bytearray, memoryview)):
        data: Any = io.BytesIO(source)
    elif hasattr(source, "read") and hasattr(source, "seek"):
        try:
            source.fileno()
            real = True
        except (OSError, io.UnsupportedOperation):  # BytesIO and friends
            real = False
        if real:
            source.seek(0)
            yield source
            return
        data = source
    else:
        raise ValidationError(f"read_gguf() takes a path, bytes or a binary file, not {source!r}")
    data.seek(0)
    with tempfile.TemporaryFile() as tmp:
        while chunk := data.read(8 << 20):
            tmp.write(chunk)
        tmp.flush()
        tmp.seek(0)
        yield tmp


def check_file(f: BinaryIO, verify: bool) -> tuple[GGUFReader, str | None]:
    """Scan the header, check the self-digest (``verify``), then parse with ``GGUFReader``."""
    scan = scan_header(f, os.fstat(f.fileno()).st_size)
    if verify:
        if scan.digest is None:
            raise IntegrityError(
                f"the file has no {DIGEST_KEY} self-digest, so it cannot be verified "
                f"(read_gguf(..., verify=False) reads files from other tools)"
            )
        if self_digest(f) != scan.digest:
            raise IntegrityError("GGUF self-digest mismatch: the file was modified or damaged")
    try:
        reader = GGUFReader(f)  # type: ignore[arg-type]  # np.memmap takes a file object
    except Exception as exc:  # noqa: BLE001 - whatever GGUFReader trips on, the file is bad
        raise IntegrityError(f"unreadable GGUF: {exc}") from None
    got = [(t.name, int(t.data_offset)) for t in reader.tensors]
    if got != [(t.name, scan.data_offset + t.offset) for t in scan.tensors]:
        raise IntegrityError("GGUFReader and the header scan disagree on the tensors")
    return reader, scan.digest


def file_metadata(reader: GGUFReader) -> dict[str, Any]:
    """Every key of a parsed file: scalars as Python values, numeric arrays as numpy arrays,
    string arrays as lists (from the reader's raw parts, so any gguf >= 0.10 does)."""
    out: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF.") or not fld.types:
            continue
        item_type = fld.types[-1]
        values = [fld.parts[i] for i in fld.data]
        if item_type == GGUFValueType.STRING:
            strings = [bytes(v).decode("utf-8") for v in values]
        if fld.types[0] == GGUFValueType.ARRAY:
            if item_type == GGUFValueType.STRING:
                out[key] = strings
            else:
                out[key] = np.concatenate(values) if values else np.array([])
        elif item_type == GGUFValueType.STRING:
            out[key] = strings[0]
        else:
            out[key] = values[0][0].item()
    return out


def read_gguf(source: GGUFSource, *, verify: bool = True) -> GGUFContents:
    """Read a GGUF file (a path, its bytes, or a binary file) into memory, checked first.

    The header is scanned with every bound checked and, with ``verify`` (the default), the
    ``forseti.sha256`` self-digest recomputed; only then does ``gguf.GGUFReader`` parse it. Any
    damage is an :class:`IntegrityError`. ``verify=False`` reads files from other tools.
    """
    with opened(source) as f:
        reader, digest = check_file(f, verify)
        tensors: dict[str, np.ndarray] = {}
        types: dict[str, str] = {}
        try:
            for t in reader.tensors:
                shape = tuple(int(d) for d in reversed(t.shape.tolist()))
                if t.tensor_type in (_Q.F32, _Q.F16):
                    arr = np.array(t.data).reshape(shape)
                else:
                    arr = dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
                tensors[t.name], types[t.name] = arr, t.tensor_type.name
        except (ValueError, NotImplementedError) as exc:
            raise IntegrityError(f"unreadable GGUF tensor data: {exc}") from None
        return GGUFContents(file_metadata(reader), tensors, types, digest)


def verify_gguf(source: GGUFSource) -> str:
    """Check a file's structure and its ``forseti.sha256`` self-digest; return the digest."""
    with opened(source) as f:
        _, digest = check_file(f, verify=True)
    assert digest is not None
    return digest


def config_of(meta: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> TinyLMConfigEntity:
    if meta.get("general.architecture") != GGUF_ARCH:
        raise IntegrityError(f"not a {GGUF_ARCH} GGUF: {meta.get('general.architecture')!r}")
    a = GGUF_ARCH
    try:
        if "forseti.config" in meta:
            cfg = as_config(str(meta["forseti.config"]))
        else:  # a gpt2 file from another tool: its hyperparameters say it all
            C = int(meta[f"{a}.embedding_length"])
            cfg = TinyLMConfigEntity(
                name=str(meta.get("general.name", "gguf")),
                d_model=C,
                vocab_size=int(tensors["token_embd.weight"].shape[0]),
                n_layers=int(meta[f"{a}.block_count"]),
                n_heads=int(meta[f"{a}.attention.head_count"]),
                max_seq_len=int(meta[f"{a}.context_length"]),
                mlp_ratio=int(meta[f"{a}.feed_forward_length"]) // C,
            )
        said = (
            cfg.max_seq_len,
            cfg.d_model,
            cfg.mlp_ratio * cfg.d_model,
            cfg.n_layers,
            cfg.n_heads,
        )
        keys = ("context_length", "embedding_length", "feed_forward_length", "block_count")
        meant = tuple(int(meta[f"{a}.{k}"]) for k in keys) + (
            int(meta[f"{a}.attention.head_count"]),
        )
    except (KeyError, TypeError, ValueError, ValidationError) as exc:
        raise IntegrityError(f"the GGUF metadata does not describe a TinyCausalLM: {exc}") from None
    if said != meant:
        raise IntegrityError(f"mislabelled GGUF: forseti.config {said} vs {a}.* keys {meant}")
    return cfg


def gguf_to_state_dict(contents: GGUFContents, *, original: bool = True) -> dict[str, Tensor]:
    """The TinyCausalLM state dict (float32) a read GGUF file holds.

    ``original=True``: for files written by Forseti, the checkpoint's ``ln_f.bias`` and
    ``lm_head.bias`` exactly (from ``forseti.original.*``). ``original=False``, or a ``gpt2``
    file from another tool: what llama.cpp runs, the folded ``ln_f.bias`` and a zero
    ``lm_head.bias`` (the same logits, up to the fold's residual). Any missing, extra or
    misshapen tensor is an :class:`IntegrityError`.
    """
    cfg = config_of(contents.metadata, contents.tensors)
    shapes = expected_shapes(cfg)
    names = tensor_names(cfg.n_layers)
    extra = sorted(set(contents.tensors) - {g for _, g in names})
    if extra:
        raise IntegrityError(f"unexpected tensors in the GGUF file: {extra}")
    state: dict[str, Tensor] = {}
    for tname, gname in names:
        arr = contents.tensors.get(gname)
        if arr is None or tuple(arr.shape) != shapes[tname]:
            got = None if arr is None else tuple(arr.shape)
            raise IntegrityError(f"GGUF tensor {gname} should be {shapes[tname]}, got {got}")
        state[tname] = torch.from_numpy(np.array(arr, dtype=np.float32))
    state["lm_head.bias"] = torch.zeros(cfg.vocab_size)
    present = [k for k in (ORIG_BETA, ORIG_BIAS) if k in contents.metadata]
    if len(present) == 1:
        raise IntegrityError(f"the GGUF file has {present[0]} without its counterpart")
    for key, tname in ((ORIG_BETA, "ln_f.bias"), (ORIG_BIAS, "lm_head.bias")):
        if original and key in contents.metadata:
            orig = np.asarray(contents.metadata[key], dtype=np.float32)
            if orig.shape != shapes[tname]:
                raise IntegrityError(f"{key} should be {shapes[tname]}, got {orig.shape}")
            state[tname] = torch.from_numpy(orig.copy())
    return state


def gguf_to_module(contents: GGUFContents, *, original: bool = True) -> TinyCausalLM:
    """A TinyCausalLM (eval mode) with the weights a read GGUF file holds (``original`` as in
    :func:`gguf_to_state_dict`)."""
    module = TinyCausalLM(config_of(contents.metadata, contents.tensors))
    module.load_state_dict(gguf_to_state_dict(contents, original=original))
    return module.eval()
