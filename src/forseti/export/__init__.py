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

_GGUF_NAMES = frozenset(
    {
        "GGUF_DTYPES",
        "GGUFContents",
        "GGUFVocab",
        "GGUFWriteResult",
        "export_gguf",
        "gguf_to_module",
        "gguf_to_state_dict",
        "load_gguf",
        "read_gguf",
        "verify_gguf",
        "write_gguf",
    }
)


def __getattr__(name: str) -> object:
    """The GGUF names, imported on first use (they need the ``gguf`` package)."""
    if name in _GGUF_NAMES:
        from . import gguf

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
    "export_gguf",
    "write_gguf",
    "read_gguf",
    "verify_gguf",
    "load_gguf",
    "gguf_to_state_dict",
    "gguf_to_module",
    "GGUFContents",
    "GGUFVocab",
    "GGUFWriteResult",
    "GGUF_DTYPES",
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
