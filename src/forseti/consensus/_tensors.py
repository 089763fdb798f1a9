"""Input handling shared by every rule: stacking, per-layer flattening, finite rows, chunks over d."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ValidationError

__all__ = ["Layout", "as_matrix", "column_chunks", "CHUNK_ELEMENTS"]

# Elements of one (n, chunk) slab processed at a time by the chunked rules: small enough that
# the int64 indices of a sort stay in cache, large enough that Python's per-chunk cost vanishes.
CHUNK_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class Layout:
    """How the caller's input was laid out: one (n, d) matrix, or per-layer (n, *shape) tensors."""

    shapes: tuple[torch.Size, ...] | None = None

    def split(self, vector: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """The flat ``vector`` cut back into the per-layer shapes (``None`` for matrix input)."""
        if self.shapes is None:
            return None
        sizes = [int(torch.Size(s).numel()) for s in self.shapes]
        return tuple(
            part.reshape(shape)
            for part, shape in zip(torch.split(vector, sizes), self.shapes, strict=True)
        )


def as_matrix(vectors: Any, *, what: str = "vectors") -> tuple[torch.Tensor, Layout]:
    """``vectors`` as one floating ``(n, d)`` tensor, and the layout to split results back.

    Accepts a tensor or array of shape ``(n, d)``; a sequence of ``n`` vectors of equal length;
    or per-layer tensors: a sequence of tensors each of shape ``(n, *layer_shape)`` (a list of
    2-d-or-more tensors with equal first dimension). Integer input is converted to float32.
    """

    if isinstance(vectors, torch.Tensor) or _is_array(vectors):
        x = _tensor(vectors)
        if x.dim() != 2:
            raise ValidationError(f"{what} must have shape (n, d); got {tuple(x.shape)}")
        return _floating(x, what), Layout()
    if not isinstance(vectors, Sequence) or isinstance(vectors, str | bytes) or not vectors:
        raise ValidationError(
            f"{what} must be an (n, d) tensor, a list of n vectors or a list of per-layer "
            f"(n, ...) tensors; got {type(vectors).__name__}"
        )
    parts = [_tensor(v) for v in vectors]
    if all(p.dim() == 1 for p in parts):
        if len({p.shape[0] for p in parts}) != 1:
            raise ValidationError(f"{what}: the vectors have different lengths")
        return _floating(torch.stack(parts), what), Layout()
    if all(p.dim() >= 2 for p in parts):
        n = parts[0].shape[0]
        if any(p.shape[0] != n for p in parts):
            raise ValidationError(
                f"{what}: per-layer tensors must share their first (worker) dimension; got "
                f"{[int(p.shape[0]) for p in parts]}"
            )
        x = torch.cat([p.reshape(n, -1) for p in parts], dim=1)
        return _floating(x, what), Layout(tuple(p.shape[1:] for p in parts))
    raise ValidationError(
        f"{what}: mix of 1-d vectors and per-layer tensors; pass one (n, d) tensor, a list of "
        "vectors, or a list of (n, ...) layers"
    )


def _tensor(value: Any) -> torch.Tensor:
    """A detached tensor (aggregation is not differentiated through); numpy views with negative
    strides, which torch refuses, are copied first."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        return torch.as_tensor(value)
    except ValueError:
        if _is_array(value):
            return torch.as_tensor(value.copy())
        raise


def _is_array(value: Any) -> bool:
    return hasattr(value, "__array_interface__") and hasattr(value, "shape")


def _floating(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValidationError(f"{what} is empty: shape {tuple(x.shape)}")
    if x.is_complex():
        raise ValidationError(f"{what} must be real; got {x.dtype}")
    return x if x.is_floating_point() else x.float()


def column_chunks(x: torch.Tensor, elements: int = CHUNK_ELEMENTS) -> Iterator[slice]:
    """Slices over the columns of ``x`` so that each ``x[:, s]`` holds about ``elements``."""
    n, d = x.shape
    width = max(1, elements // max(1, n))
    for start in range(0, d, width):
        yield slice(start, min(d, start + width))
