"""GGUF export and verified load of ``TinyCausalLM`` checkpoints, for llama.cpp.

* :func:`write_gguf` streams a state dict into a llama.cpp ``gpt2`` GGUF (f32, f16 or q8_0): the
  header first, then each tensor converted just in time in chunks of at most 4 MB, hashed on the
  way for the file's ``forseti.sha256`` self-digest. Layout, names, metadata and the output-bias
  fold: :mod:`~forseti.export.gguf_layout`; bytes and the digest: :mod:`~forseti.export.gguf_format`;
  reading: :mod:`~forseti.export.gguf_read`; the export's read-back: :mod:`~forseti.export.gguf_check`.
* :func:`export_gguf` writes a stored checkpoint, reads the file back with ``gguf.GGUFReader``,
  compares it tensor by tensor with the checkpoint, and records it as an :class:`ExportEntity`.
* :func:`read_gguf` / :func:`load_gguf` read a file (path, bytes or the store) after checking its
  structure and digest: a tampered, truncated or mislabelled file is an :class:`IntegrityError`
  before any tensor exists. Nothing here unpickles or runs code from a file.
* :func:`gguf_to_state_dict` / :func:`gguf_to_module` map a file back to TinyCausalLM.

Tensors keep llama.cpp's names and numpy order (= torch order: GGUF lists dims reversed).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize, quantize
from torch import Tensor

from ..errors import IntegrityError, ValidationError
from ..gspo.model import TinyLMConfigEntity
from .architectures import ARCH_KEY, CONFIG_KEY
from .artifacts import check_out, record_export, resolve_checkpoint, staging_file
from .gguf_check import read_back, row_chunks
from .gguf_format import DIGEST_AT, HashPipe, encode_header, plan_tensors
from .gguf_layout import (
    DIGEST_KEY,
    GGUF_ARCH,
    GGUF_DTYPES,
    GGUFVocab,
    as_config,
    config_json,
    expected_shapes,
    header_kvs,
    resolve_vocab,
    tensor_names,
    tensor_type,
    toy_vocab,
)
from .gguf_read import (
    ORIG_BETA,
    ORIG_BIAS,
    GGUFContents,
    gguf_to_module,
    gguf_to_state_dict,
    read_gguf,
    verify_gguf,
)
from .tensorfile import TensorFile

if TYPE_CHECKING:
    from ..entities import Entity, EntityRef
    from ..registry import EntityRegistry
    from .artifacts import CheckpointLike
    from .entities import ExportEntity

__all__ = [
    "GGUF_DTYPES",
    "GGUFContents",
    "GGUFVocab",
    "GGUFWriteResult",
    "export_gguf",
    "gguf_to_module",
    "gguf_to_state_dict",
    "load_gguf",
    "read_gguf",
    "tensor_names",
    "toy_vocab",
    "verify_gguf",
    "write_gguf",
]

logger = logging.getLogger(__name__)
_Q = GGMLQuantizationType


@dataclass(frozen=True)
class GGUFWriteResult:
    """What :func:`write_gguf` wrote: the file, its self-digest and size, each tensor's GGML type,
    the Q8_0 fallbacks (tensor → type used), how ``lm_head.bias`` was mapped and the fold's
    residual ``max|W·(β' − β) − b|`` over the stored weights."""

    path: Path
    digest: str
    nbytes: int
    types: dict[str, str]
    fallbacks: dict[str, str]
    output_bias: str
    fold_residual: float
    seconds: float


def _checked_state(
    state_dict: Mapping[str, Tensor], cfg: TinyLMConfigEntity
) -> Mapping[str, Tensor]:
    if not isinstance(state_dict, Mapping):
        raise ValidationError(f"state_dict must be a mapping of tensors, not {type(state_dict)}")
    shapes = expected_shapes(cfg)
    missing, extra = sorted(set(shapes) - set(state_dict)), sorted(set(state_dict) - set(shapes))
    if missing or extra:
        raise ValidationError(
            f"not a TinyCausalLM state dict: missing {missing}, unexpected {extra}"
        )
    if isinstance(state_dict, TensorFile):  # read lazily: check without reading the tensors
        for name, shape in shapes.items():
            got = state_dict.shape_of(name)
            if not state_dict.dtype_of(name).is_floating_point or got != shape:
                raise ValidationError(
                    f"{name} must be a floating-point tensor of shape {shape}: {got}"
                )
        return state_dict
    for name, shape in shapes.items():
        t = state_dict[name]
        if not isinstance(t, Tensor) or not t.is_floating_point() or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValidationError(f"{name} must be a floating-point tensor of shape {shape}: {got}")
    return {k: state_dict[k].detach() for k in shapes}


def _stored(t: Tensor, qtype: GGMLQuantizationType) -> Tensor:
    """``t`` as a reader of the file sees it (float32)."""
    x = t.detach().to("cpu", torch.float32)
    if qtype == _Q.F16:
        return x.half().float()
    if qtype == _Q.F32:
        return x
    return torch.from_numpy(dequantize(quantize(x.numpy(), qtype), qtype))


def _fold(
    state: Mapping[str, Tensor], out_type: GGMLQuantizationType, mode: str
) -> tuple[Tensor, str, float]:
    """The final norm's bias to write, the mode used, and the fold residual (see gguf_layout)."""
    beta = state["ln_f.bias"].to("cpu", torch.float64)
    b = state["lm_head.bias"].to("cpu", torch.float64)
    if mode not in ("fold", "drop"):
        raise ValidationError(f"output_bias must be 'fold' or 'drop', got {mode!r}")
    if not bool(b.any()):
        return state["ln_f.bias"], "none", 0.0
    if mode == "drop":
        return state["ln_f.bias"], "dropped", float(b.abs().max())
    V, C = state["lm_head.weight"].shape
    if V > C:
        raise ValidationError(
            f"llama.cpp's gpt2 has no output bias, and lm_head.bias can be folded into ln_f.bias "
            f"only when vocab_size ({V}) <= d_model ({C}); pass output_bias='drop' to export "
            f"without it (llama.cpp logits then lack the bias; Forseti's reader restores it)"
        )
    W = _stored(state["lm_head.weight"], out_type).double()  # (V, C)
    if not bool(torch.isfinite(W).all()):
        raise ValidationError(f"lm_head.weight has values not finite as {out_type.name}")
    folded = (beta + torch.linalg.pinv(W) @ b).float()  # (C,)
    residual = float((W @ (folded.double() - beta) - b).abs().max())
    if residual > 1e-5 * (1.0 + float(b.abs().max())):
        raise ValidationError(
            f"lm_head.bias is not in the span of lm_head.weight (fold residual {residual:.3g}): "
            f"pass output_bias='drop' to export without it"
        )
    return folded, "folded", residual


def _encode(t: Tensor, qtype: GGMLQuantizationType, name: str) -> Iterator[memoryview]:
    """``t`` converted to ``qtype`` a few rows at a time (see ``gguf_check.row_chunks``)."""
    for chunk in row_chunks(t, qtype):
        x = chunk.numpy()
        lo, hi = float(x.min()), float(x.max())  # NaN propagates through min/max
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValidationError(f"{name} has values that are not finite")
        if qtype == _Q.F16 and max(-lo, hi) >= 65520.0:  # rounds to inf in f16
            raise ValidationError(f"{name} has values beyond the f16 range; export it as f32")
        if qtype == _Q.F32:
            arr = x
        elif qtype == _Q.F16:
            arr = chunk.to(torch.float16).numpy()
        else:
            arr = quantize(x, qtype)
        yield memoryview(arr.data).cast("B")


def write_gguf(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, Tensor],
    config: TinyLMConfigEntity | Mapping[str, Any] | str,
    *,
    dtype: str = "f16",
    vocab: GGUFVocab | Sequence[str] | None = None,
    metadata: Mapping[str, str | int | float | bool] | None = None,
    output_bias: Literal["fold", "drop"] = "fold",
) -> GGUFWriteResult:
    """Write a TinyCausalLM ``state_dict`` as a llama.cpp ``gpt2`` GGUF file at ``path``.

    ``dtype``: ``f32``, ``f16`` or ``q8_0`` for 2-D weights (norms, biases and the position
    embedding stay f32; a q8_0 weight whose rows are not a multiple of 32 falls back to f16).
    ``vocab``: the tokenizer (default: the toy tasks' when the sizes match, else ``<|i|>``
    placeholders). ``metadata``: extra keys (not ``general.``/``gpt2.``/``tokenizer.``).
    ``output_bias``: ``fold`` (default) or ``drop`` (see :mod:`~forseti.export.gguf_layout`).
    The file appears at ``path`` only when complete (written beside it, then renamed).
    """
    started = time.perf_counter()
    cfg = as_config(config)
    if dtype not in GGUF_DTYPES:
        raise ValidationError(f"GGUF dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    state = _checked_state(state_dict, cfg)
    voc = resolve_vocab(vocab, cfg.vocab_size)
    if vocab is None and voc != toy_vocab():
        logger.warning(
            "no vocabulary given for %d tokens: writing <|i|> placeholders", len(voc.tokens)
        )
    target = check_out(path)
    assert target is not None
    names = tensor_names(cfg.n_layers)
    shapes = expected_shapes(cfg)  # what _checked_state verified (no tensor is read for it)
    types = {g: tensor_type(g, shapes[t], dtype) for t, g in names}
    fallbacks = {g: q.name.lower() for g, q in types.items() if dtype == "q8_0" and q == _Q.F16}
    beta, mode, residual = _fold(state, types["output.weight"], output_bias)
    extra = dict(metadata or {})
    reserved = ("general.", f"{GGUF_ARCH}.", "tokenizer.", "forseti.original.")
    for key in extra:
        if not isinstance(key, str) or key.startswith(reserved) or key == DIGEST_KEY:
            raise ValidationError(f"metadata key {key!r} is reserved")
    own: dict[str, Any] = {
        "forseti.format": "forseti.gguf/1",
        "forseti.architecture": "TinyCausalLM",
        "forseti.config": config_json(cfg),
        "forseti.dtype": dtype,
        "forseti.output_bias": mode,
        ORIG_BETA: state["ln_f.bias"].to("cpu", torch.float32).numpy(),
        ORIG_BIAS: state["lm_head.bias"].to("cpu", torch.float32).numpy(),
    }
    clash = sorted(set(own) & set(extra))
    if clash:
        raise ValidationError(f"metadata keys {clash} are set by the writer")
    infos = plan_tensors([(g, shapes[t], types[g]) for t, g in names])
    header = encode_header(header_kvs(cfg, dtype, voc, {**own, **extra}), infos)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with tmp.open("wb") as f:
            with HashPipe(f) as pipe:  # writes and hashes on a thread while we convert
                pipe.put(header)
                for (tname, _), info in zip(names, infos, strict=True):
                    source = beta if tname == "ln_f.bias" else state[tname]
                    for chunk in _encode(source, info.qtype, tname):
                        pipe.put(chunk)
                    pipe.put(bytes(-info.nbytes % 32))
                digest = pipe.hexdigest()
            f.seek(DIGEST_AT)
            f.write(digest.encode("ascii"))
            nbytes = f.seek(0, os.SEEK_END)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - started
    logger.debug("wrote %s: %d bytes, %s, %.3f s", target, nbytes, dtype, seconds)
    named = {g: q.name for g, q in types.items()}
    return GGUFWriteResult(target, digest, nbytes, named, fallbacks, mode, residual, seconds)


def export_gguf(
    reg: EntityRegistry,
    checkpoint: CheckpointLike | Entity,
    *,
    dtype: str = "f16",
    vocab: GGUFVocab | Sequence[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    output_bias: Literal["fold", "drop"] = "fold",
) -> ExportEntity:
    """Export a stored TinyCausalLM checkpoint as a llama.cpp GGUF file (see :func:`write_gguf`).

    The checkpoint is read verified; the file is written to a staging file, read back with
    ``gguf.GGUFReader`` and compared tensor by tensor with the checkpoint (f32 bit-exact, f16
    exactly ``tensor.half()``, q8_0 within its rounding bound; :class:`IntegrityError`
    otherwise), then moved into the blob store and recorded as an :class:`ExportEntity` whose
    ``checks`` hold the max abs difference per stored type (``gguf_max_abs_diff_f16`` ...).
    ``out``: also copy the file there (atomically).
    """
    from .checkpoints import load_checkpoint

    if dtype not in GGUF_DTYPES:
        raise ValidationError(f"GGUF dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    ckpt = resolve_checkpoint(reg, checkpoint)
    loaded = load_checkpoint(reg, ckpt, build=False, lazy=True)  # one tensor in memory at once
    arch = loaded.described.get(ARCH_KEY)
    if arch != "TinyCausalLM" or CONFIG_KEY not in loaded.described:
        raise ValidationError(
            f"GGUF export takes TinyCausalLM checkpoints; this one holds {arch!r}"
        )
    cfg = as_config(loaded.described[CONFIG_KEY])
    meta: dict[str, Any] = {
        "forseti.checkpoint": str(ckpt.ref),
        "forseti.step": ckpt.step,
        "forseti.model": str(ckpt.model),
    }
    if ckpt.run is not None:
        meta["forseti.run"] = str(ckpt.run)
    started = time.perf_counter()
    with staging_file(reg, ".gguf") as path:
        written = write_gguf(
            path,
            loaded.state_dict,
            cfg,
            dtype=dtype,
            vocab=vocab,
            metadata=meta,
            output_bias=output_bias,
        )
        state = _checked_state(loaded.state_dict, cfg)
        checks, sha = read_back(
            path, state, cfg, written.digest, written.types, written.output_bias
        )
        blob = reg.blobs.adopt(path, "gguf", sha256=sha)
    seconds = time.perf_counter() - started
    logger.info(
        "GGUF %s export of %s: %d bytes in %.2f s (write %.2f s)",
        dtype,
        ckpt.ref,
        written.nbytes,
        seconds,
        written.seconds,
    )
    options = {
        "architecture": GGUF_ARCH,
        "output_bias": written.output_bias,
        "fallbacks": written.fallbacks,
        "digest": written.digest,
    }
    return record_export(
        reg, ckpt, "gguf", blob, dtype=dtype, checks=checks, options=options, out=out
    )


def load_gguf(reg: EntityRegistry, export: ExportEntity | EntityRef | str) -> GGUFContents:
    """Read a GGUF export through the store: the blob's hash, then the file's own checks, then
    that the file is what the :class:`ExportEntity` says (dtype, checkpoint)."""
    from ..trees.discover import resolve
    from .entities import ExportEntity

    entity: Entity = resolve(reg, export)
    if not isinstance(entity, ExportEntity):
        raise ValidationError(f"{export} is a {type(entity).__name__}, not an export")
    if entity.format != "gguf" or entity.artifact.format != "gguf":
        raise IntegrityError(
            f"the export is {entity.format!r}/{entity.artifact.format!r}, not GGUF"
        )
    with reg.open_blob(entity.artifact) as fh:
        contents = read_gguf(fh)
    meta = contents.metadata
    if meta.get("forseti.dtype") != entity.dtype or meta.get("forseti.checkpoint") != str(
        entity.checkpoint
    ):
        raise IntegrityError("mislabelled GGUF: the file is not the export its entity describes")
    return contents
