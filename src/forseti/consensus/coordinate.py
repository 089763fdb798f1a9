"""Coordinate-wise rules: the mean, the median and the trimmed mean.

Median and trimmed mean sort each coordinate's ``n`` values with a sorting network over column
chunks (see :mod:`._sortnet`): no int64 index tensors, peak memory one chunk.
"""

from __future__ import annotations

from typing import Any

import torch

from ._sortnet import reduce_sorted
from ._tensors import as_matrix, column_chunks
from .base import Aggregator, Partial, assemble
from .result import AggResult

# (n, chunk) slabs of the fused mean: small enough to stay in L2 between the two reads
MEAN_CHUNK = 1 << 18

__all__ = ["Mean", "CoordinateMedian", "TrimmedMean"]


class Mean(Aggregator):
    """The plain average: not robust, the baseline every rule is measured against.

    ``f`` is accepted for uniformity and ignored (except that workers sending Inf/NaN are
    dropped, as by every rule here).
    """

    name = "mean"

    def min_workers(self, f: int) -> int:
        return 1

    def parameters(self) -> dict[str, Any]:
        return {"f": self.f} if self.f else {}

    def __call__(self, vectors: Any) -> AggResult:
        # One pass over column chunks computes the mean and the scores while each chunk is in
        # cache; a worker that sent Inf/NaN shows up as a non-finite score, and only then does
        # the general path (which drops such workers) run.
        x, layout = as_matrix(vectors)
        self.check(x.shape[0])
        vector, scores = mean_and_scores(x)
        if not bool(torch.isfinite(scores).all()):
            return super().__call__(x if layout.shapes is None else vectors)
        return assemble(
            Partial(vector, scores=scores), x, x.shape[0], [], layout.split(vector), self.f
        )

    def _aggregate(self, x: torch.Tensor, f: int) -> Partial:
        vector, scores = mean_and_scores(x)
        return Partial(vector, scores=scores)


def mean_and_scores(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The column mean of ``x`` and each row's squared distance to it, in one chunked pass."""
    out = torch.empty(x.shape[1], dtype=x.dtype, device=x.device)
    scores = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for cols in column_chunks(x, MEAN_CHUNK):
        block = x[:, cols]
        out[cols] = part = block.mean(dim=0)
        scores += (block - part).square_().sum(dim=1)
    return out, scores


class CoordinateMedian(Aggregator):
    """The coordinate-wise median (Yin et al. 2018); needs ``n >= 2f + 1``.

    Convention: for an even number of values the median is the *midpoint* of the two middle
    ones (as ``numpy.median``, ``torch.quantile(q=0.5)`` and ByzFL's ``Median``), not the lower
    one that ``torch.median`` returns.
    """

    name = "median"

    def parameters(self) -> dict[str, Any]:
        return {"f": self.f}

    def _aggregate(self, x: torch.Tensor, f: int, mix: torch.Tensor | None = None) -> Partial:
        n = x.shape[0] if mix is None else mix.shape[0]
        lo, hi = (n - 1) // 2, n // 2

        def middle(rows: list[torch.Tensor]) -> torch.Tensor:
            return rows[lo] if lo == hi else rows[lo] * 0.5 + rows[hi] * 0.5  # no overflow

        vector, scores = reduce_sorted(x, middle, mix)
        return Partial(vector, scores=scores)


class TrimmedMean(Aggregator):
    """The coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, drop the ``f``
    largest and ``f`` smallest values and average the rest; needs ``n >= 2f + 1``.

    Workers that sent Inf/NaN count against ``f``: with ``b`` of them, ``f - b`` are trimmed
    from each side of the remaining ``n - b``.
    """

    name = "trimmed_mean"

    def parameters(self) -> dict[str, Any]:
        return {"f": self.f}

    def _aggregate(self, x: torch.Tensor, f: int, mix: torch.Tensor | None = None) -> Partial:
        n = x.shape[0] if mix is None else mix.shape[0]
        if f == 0:
            return Partial(x.mean(dim=0) if mix is None else mix.mean(dim=0) @ x)
        keep = n - 2 * f

        def inner_mean(rows: list[torch.Tensor]) -> torch.Tensor:
            total = rows[f].clone()
            for row in rows[f + 1 : n - f]:
                total += row
            return total.div_(keep)

        vector, scores = reduce_sorted(x, inner_mean, mix)
        return Partial(vector, scores=scores, meta={"trimmed_per_side": f})
