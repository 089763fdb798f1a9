"""``export(reg, checkpoint, format)``: one entry point over the three exporters (the CLI's)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ValidationError
from .artifacts import CheckpointLike, check_out, record_export, resolve_checkpoint
from .checkpoints import load_checkpoint
from .entities import FORMATS, ExportEntity
from .tensorfile import DIGEST_KEY, write_safetensors

if TYPE_CHECKING:
    from ..registry import EntityRegistry

__all__ = ["export", "export_safetensors", "SAFETENSORS_DTYPES"]

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "f32": torch.float32,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
}


def export_safetensors(
    reg: EntityRegistry,
    checkpoint: CheckpointLike,
    *,
    dtype: str | None = None,
    out: str | os.PathLike[str] | None = None,
) -> ExportEntity:
    """Export a checkpoint's weights as a standalone, self-verifying safetensors file.

    The tensors and header of the checkpoint, read verified (a tensor at a time), are written to
    a new blob with the ``forseti.sha256`` self-digest added, so the file can be verified away
    from the store (:func:`~forseti.export.load_safetensors_file`); with ``dtype`` (``f32``,
    ``f16``, ``bf16``) the floating-point tensors are cast on the way. ``out`` also copies it to
    a path (atomically). Exporting the same checkpoint twice gives the same blob.
    """
    ckpt = resolve_checkpoint(reg, checkpoint)
    if dtype is not None and dtype not in SAFETENSORS_DTYPES:
        raise ValidationError(
            f"dtype must be one of {sorted(SAFETENSORS_DTYPES)} for safetensors, got {dtype!r}"
        )
    check_out(out)
    loaded = load_checkpoint(reg, ckpt, build=False, lazy=True)  # verified; a tensor at a time
    meta = dict(loaded.metadata)
    if dtype is None and DIGEST_KEY in meta:  # already self-verifying: export the blob itself
        return record_export(reg, ckpt, "safetensors", ckpt.weights, out=out)
    target = SAFETENSORS_DTYPES[dtype] if dtype is not None else None
    with reg.blob_writer(format="safetensors") as sink:
        write_safetensors(sink, loaded.state_dict, meta, dtype=target, self_digest=True)
    assert sink.ref is not None
    return record_export(reg, ckpt, "safetensors", sink.ref, dtype=dtype or "", out=out)


def export(
    reg: EntityRegistry,
    checkpoint: CheckpointLike,
    format: str,
    *,
    out: str | os.PathLike[str] | None = None,
    dtype: str | None = None,
    **options: Any,
) -> ExportEntity:
    """Export ``checkpoint`` as ``format`` (``safetensors``, ``onnx`` or ``gguf``).

    ``dtype``: ``f32``/``f16``/``bf16`` for safetensors (default: as stored), ``f32``/``f16``/
    ``q8_0`` for GGUF (default ``f16``); ONNX is always f32. ``options`` go to the exporter.
    """
    if format not in FORMATS:
        raise ValidationError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if format == "safetensors":
        if options:
            raise ValidationError(f"unknown safetensors options: {sorted(options)}")
        return export_safetensors(reg, checkpoint, dtype=dtype, out=out)
    if format == "onnx":
        from .onnx import export_onnx

        if dtype not in (None, "f32"):
            raise ValidationError(f"ONNX exports are f32, got dtype {dtype!r}")
        return export_onnx(reg, checkpoint, out=out, **options)
    from .gguf import export_gguf

    return export_gguf(reg, checkpoint, dtype=dtype or "f16", out=out, **options)
