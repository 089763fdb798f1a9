"""Coordinate-wise order statistics of a few rows over very many columns.

``torch.sort`` along the worker axis of an ``(n, d)`` slab costs ~20-60 ns per element on a CPU
(it sorts ``d`` tiny strided columns and allocates int64 indices). For the small ``n`` of data
parallel training a sorting *network* is an order of magnitude faster: Batcher's odd-even merge
sort is a fixed list of compare-exchanges, each one ``minimum``/``maximum`` of two whole rows,
so the work is a few dozen vectorised passes over cache-sized column chunks and no indices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ._tensors import column_chunks

__all__ = ["sorted_rows", "reduce_sorted", "MAX_NETWORK_ROWS"]

# Above this many rows the network (n log^2 n / 4 comparators) loses to torch.sort.
MAX_NETWORK_ROWS = 128


@functools.lru_cache(maxsize=64)
def comparators(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort for ``n`` inputs, as (low, high) index pairs in order.

    Built for the next power of two and pruned: the missing inputs count as ``+inf`` at the end,
    so a comparator touching them never moves anything.
    """

    size = 1
    while size < n:
        size *= 2
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


def sorted_rows(block: torch.Tensor) -> list[torch.Tensor]:
    """The rows of ``block`` (shape ``(n, c)``) sorted column by column, smallest first."""
    n = block.shape[0]
    if n > MAX_NETWORK_ROWS:
        return list(torch.sort(block.T.contiguous(), dim=1).values.T.unbind(0))
    rows = [row.clone() for row in block.unbind(0)]
    for lo, hi in comparators(n):
        a, b = rows[lo], rows[hi]
        rows[lo] = torch.minimum(a, b)
        torch.maximum(a, b, out=b)
    return rows


# Elements of the input sorted at a time: measured best on a 2-core CPU for n from 16 to 64
# (the per-comparator dispatch cost amortised, the chunk's rows still in L2/L3).
NETWORK_CHUNK = 1 << 20


def reduce_sorted(
    x: torch.Tensor,
    reduce: Callable[[list[torch.Tensor]], torch.Tensor],
    mix: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``reduce`` applied to the column-sorted rows of ``x`` (of ``mix @ x`` when a mixing
    matrix is given, as NNM's), chunk by chunk over ``d``, and each row of ``x``'s squared
    distance to the result (accumulated while the chunk is in cache).

    Peak extra memory is one chunk, whatever ``d`` is: a mixed copy of ``x`` never exists.
    """

    out = torch.empty(x.shape[1], dtype=x.dtype, device=x.device)
    scores = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    # small inputs in at least four chunks, so the working set stays well under the input
    elements = min(NETWORK_CHUNK, max(NETWORK_CHUNK // 4, x.numel() // 4))
    for cols in column_chunks(x, elements):
        block = x[:, cols]
        # the sorted rows die before the scores' temporary is made: one chunk alive at a time
        out[cols] = part = reduce(sorted_rows(block if mix is None else mix @ block))
        scores += (block - part).square_().sum(dim=1)
    return out, scores
