"""Model export and verified load: safetensors, ONNX and GGUF.

* :func:`save_checkpoint` / :func:`load_checkpoint`: checkpoints as safetensors blobs, streamed
  in, verified against their hash before any tensor is made;
* :func:`export_onnx`: a policy network or ``TinyCausalLM``'s forward, checked by
  ``onnx.checker`` and by onnxruntime against torch;
* :func:`export_gguf`: ``TinyCausalLM`` as a llama.cpp GGUF (f32, f16, q8_0);
* :func:`export`: any of them by name (what ``forseti export`` runs).

Every export is an :class:`ExportEntity` derived from its checkpoint, its file a blob.
"""

from __future__ import annotations

import importlib

from .api import SAFETENSORS_DTYPES, export, export_safetensors
from .architectures import Architecture, build_module, register_architecture
from .artifacts import record_export, resolve_checkpoint, write_out
from .checkpoints import (
    LoadedCheckpoint,
    load_checkpoint,
    load_safetensors_file,
    read_verified,
    save_checkpoint,
)
from .entities import FORMATS, ExportEntity, ExportFormat
from .onnx import (
    CausalLMLogits,
    OnnxExportError,
    OnnxParityError,
    export_onnx,
    load_onnx,
    load_onnx_file,
    module_to_onnx,
    onnx_parity,
)
from .tensorfile import read_safetensors, write_safetensors


def __getattr__(name: str) -> object:
    """The GGUF names (``forseti.export.gguf.__all__``), imported on first use: they need the
    ``gguf`` package, which the safetensors and ONNX paths do not."""
    if not name.startswith("_"):
        try:
            gguf = importlib.import_module(f"{__name__}.gguf")  # not `from .`: it recurses here
        except ImportError as exc:
            raise AttributeError(
                f"forseti.export has no {name!r} here (GGUF export needs the gguf package: {exc})"
            ) from None
        if name in gguf.__all__:
            return getattr(gguf, name)
    raise AttributeError(f"module 'forseti.export' has no attribute {name!r}")


__all__ = [
    "export",
    "export_safetensors",
    "SAFETENSORS_DTYPES",
    "Architecture",
    "register_architecture",
    "build_module",
    "save_checkpoint",
    "load_checkpoint",
    "load_safetensors_file",
    "LoadedCheckpoint",
    "read_verified",
    "read_safetensors",
    "write_safetensors",
    "ExportEntity",
    "export_onnx",
    "load_onnx",
    "load_onnx_file",
    "module_to_onnx",
    "onnx_parity",
    "OnnxExportError",
    "OnnxParityError",
    "CausalLMLogits",
    "ExportFormat",
    "FORMATS",
    "record_export",
    "resolve_checkpoint",
    "write_out",
]
