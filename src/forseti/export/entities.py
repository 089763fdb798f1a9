"""The export entity: an artifact (safetensors, ONNX or GGUF file) made from one checkpoint."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..entities import BlobRef, Entity, EntityRef
from ..entities.frozen import FloatMap, JSONMap

__all__ = ["ExportEntity", "ExportFormat", "FORMATS"]

ExportFormat = Literal["safetensors", "onnx", "gguf"]
FORMATS: tuple[ExportFormat, ...] = ("safetensors", "onnx", "gguf")


class ExportEntity(Entity):
    """A file exported from a checkpoint, stored as a verified blob.

    ``derived_from`` names the checkpoint version (provenance); ``checks`` holds what was
    verified when it was made (e.g. ``onnx_max_abs_diff`` against torch, ``gguf_max_abs_diff``
    against the checkpoint's tensors), ``options`` how it was made (opset, dynamic axes, ...).
    """

    entity_type: ClassVar[str] = "forseti.export.Export"

    checkpoint: EntityRef
    format: ExportFormat
    artifact: BlobRef
    dtype: str = Field(default="", description="tensor type written: f32, f16, bf16, q8_0, ...")
    path: str = Field(default="", description="where a copy was written outside the store")
    checks: FloatMap = Field(default_factory=dict)
    options: JSONMap = Field(default_factory=dict)
