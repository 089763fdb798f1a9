"""What an aggregation returns: the vector and who it trusted, so detection and the log can say why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["AggResult"]


@dataclass(frozen=True, eq=False)
class AggResult:
    """The outcome of one aggregation over ``n`` workers.

    * ``vector``: the aggregate, shape ``(d,)``;
    * ``selected``: indices of the workers whose vectors entered the aggregate whole (all finite
      workers for coordinate-wise rules, Krum's pick, Multi-Krum's set, ...);
    * ``scores``: one suspicion score per worker, shape ``(n,)``, higher is more suspicious: the
      rule's own score where it has one (Krum's), else the squared distance to the aggregate;
      ``inf`` for a worker whose vector held Inf or NaN;
    * ``weights``: each worker's weight in the aggregate, shape ``(n,)``, summing to 1: uniform
      over ``selected`` (for coordinate-wise rules, which mix workers per coordinate, a nominal
      1/n over the finite workers; ``scores`` say who was far from the result);
    * ``meta``: rule-specific facts (``nonfinite``: the dropped workers; iterations; ...);
    * ``layers``: the aggregate split back into the caller's per-layer shapes when the input was
      a list of per-layer tensors, else ``None``.
    """

    vector: torch.Tensor
    selected: tuple[int, ...]
    scores: torch.Tensor
    weights: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    layers: tuple[torch.Tensor, ...] | None = None

    @property
    def n(self) -> int:
        """The number of workers aggregated."""
        return int(self.scores.shape[0])

    def rejected(self) -> tuple[int, ...]:
        """The workers not in ``selected``."""
        chosen = set(self.selected)
        return tuple(i for i in range(self.n) if i not in chosen)

    def __repr__(self) -> str:
        return (
            f"AggResult(n={self.n}, d={self.vector.numel()}, selected={list(self.selected)}, "
            f"meta={self.meta})"
        )
