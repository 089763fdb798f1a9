"""Coordinate-wise rules: the mean, the median and the trimmed mean.

Median and trimmed mean sort each coordinate's ``n`` values with a sorting network over column
chunks (see :mod:`._sortnet`): no int64 index tensors, peak memory one chunk.
"""

from __future__ import annotations

from typing import Any

import torch

from ._sortnet import reduce_sorted
from .base import Aggregator, Partial

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

    def _aggregate(self, x: torch.Tensor, f: int) -> Partial:
        return Partial(x.mean(dim=0))


class CoordinateMedian(Aggregator):
    """The coordinate-wise median (Yin et al. 2018); needs ``n >= 2f + 1``.

    Convention: for an even number of values the median is the *midpoint* of the two middle
    ones (as ``numpy.median``, ``torch.quantile(q=0.5)`` and ByzFL's ``Median``), not the lower
    one that ``torch.median`` returns.
    """

    name = "median"

    def parameters(self) -> dict[str, Any]:
        return {"f": self.f}

    def _aggregate(self, x: torch.Tensor, f: int) -> Partial:
        n = x.shape[0]
        lo, hi = (n - 1) // 2, n // 2

        def middle(rows: list[torch.Tensor]) -> torch.Tensor:
            return rows[lo] if lo == hi else rows[lo] * 0.5 + rows[hi] * 0.5  # no overflow

        return Partial(reduce_sorted(x, middle))


class TrimmedMean(Aggregator):
    """The coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, drop the ``f``
    largest and ``f`` smallest values and average the rest; needs ``n >= 2f + 1``.

    Workers that sent Inf/NaN count against ``f``: with ``b`` of them, ``f - b`` are trimmed
    from each side of the remaining ``n - b``.
    """

    name = "trimmed_mean"

    def parameters(self) -> dict[str, Any]:
        return {"f": self.f}

    def _aggregate(self, x: torch.Tensor, f: int) -> Partial:
        n = x.shape[0]
        if f == 0:
            return Partial(x.mean(dim=0))
        keep = n - 2 * f

        def inner_mean(rows: list[torch.Tensor]) -> torch.Tensor:
            total = rows[f].clone()
            for row in rows[f + 1 : n - f]:
                total += row
            return total.div_(keep)

        return Partial(reduce_sorted(x, inner_mean), meta={"trimmed_per_side": f})
