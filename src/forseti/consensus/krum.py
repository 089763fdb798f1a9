"""Distance-based selection: Krum, Multi-Krum and Bulyan, all from one centred-Gram distance
matrix (one GEMM over the input)."""

from __future__ import annotations

from typing import Any

import torch

from ._sortnet import NETWORK_CHUNK, sorted_rows
from ._tensors import column_chunks
from .base import Aggregator, Partial, check_positive
from .distances import pairwise_sq_distances

__all__ = ["Krum", "MultiKrum", "Bulyan", "krum_scores"]


def krum_scores(dist: torch.Tensor, f: int, neighbours: int | None = None) -> torch.Tensor:
    """Each row's Krum score: the sum of its squared distances to its ``neighbours`` nearest
    *other* rows (default ``n - f - 2``, Blanchard et al. 2017)."""
    n = dist.shape[0]
    k = n - f - 2 if neighbours is None else neighbours
    k = max(1, min(k, n - 1))
    if n == 1:
        return torch.zeros(1, dtype=dist.dtype)
    others = dist.clone()
    others.fill_diagonal_(float("inf"))
    return torch.topk(others, k, dim=1, largest=False).values.sum(dim=1)


class _KrumBase(Aggregator):
    def __init__(self, f: int = 0, *, neighbours: int | None = None) -> None:
        super().__init__(f)
        self.neighbours = None if neighbours is None else check_positive(
            neighbours, "neighbours", integer=True
        )

    def min_workers(self, f: int) -> int:
        return 2 * f + 3

    def parameters(self) -> dict[str, Any]:
        out: dict[str, Any] = {"f": self.f}
        if self.neighbours is not None:
            out["neighbours"] = self.neighbours
        return out

    def _scores(self, x: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor]:
        dist = pairwise_sq_distances(x)
        return krum_scores(dist, f, self.neighbours), dist


class Krum(_KrumBase):
    """Krum (Blanchard et al. 2017): the single vector with the smallest Krum score; needs
    ``n >= 2f + 3``. ``scores`` are the Krum scores.

    Convention: the score sums the squared distances to the ``n - f - 2`` nearest other
    vectors, as in the paper. ByzFL uses ``n - f - 1`` (and the mean instead of the sum, which
    ranks the same); ``Krum(f, neighbours=n - f - 1)`` reproduces it.
    """

    name = "krum"

    def _aggregate(self, x: torch.Tensor, f: int) -> Partial:
        scores, dist = self._scores(x, f)
        best = argmin_unordered(scores, dist, x)
        return Partial(x[best].clone(), selected=(best,), scores=scores)


class MultiKrum(_KrumBase):
    """Multi-Krum: the average of the ``m`` vectors with the smallest Krum scores (default
    ``m = n - f``, as ByzFL and Flower); needs ``n >= 2f + 3``."""

    name = "multi_krum"

    def __init__(self, f: int = 0, *, m: int | None = None, neighbours: int | None = None) -> None:
        super().__init__(f, neighbours=neighbours)
        self.m = None if m is None else check_positive(m, "m", integer=True)

    def parameters(self) -> dict[str, Any]:
        out = super().parameters()
        if self.m is not None:
            out["m"] = self.m
        return out

    def _aggregate(self, x: torch.Tensor, f: int) -> Partial:
        n = x.shape[0]
        m = min(n - f if self.m is None else self.m, n)
        scores, _ = self._scores(x, f)
        chosen = torch.topk(scores, m, largest=False).indices
        selected = tuple(sorted(int(i) for i in chosen))
        weights = torch.zeros(n, dtype=x.dtype, device=x.device)
        weights[list(selected)] = 1.0 / m
        return Partial(weights @ x, selected=selected, scores=scores)  # no copy of the rows


class Bulyan(Aggregator):
    """Bulyan (El Mhamdi et al. 2018); needs ``n >= 4f + 3``.

    Selects ``theta = n - 2f`` vectors by repeated Krum (each round picks the lowest Krum score
    among those left, with ``max(1, left - f - 2)`` neighbours), then, per coordinate, averages
    the ``beta = theta - 2f`` selected values closest to their median. ``scores`` are the
    first round's Krum scores.
    """

    name = "bulyan"

    def min_workers(self, f: int) -> int:
        return 4 * f + 3

    def parameters(self) -> dict[str, Any]:
        return {"f": self.f}

    def _aggregate(self, x: torch.Tensor, f: int) -> Partial:
        n = x.shape[0]
        theta, beta = n - 2 * f, n - 4 * f
        dist = pairwise_sq_distances(x)
        left = list(range(n))
        chosen: list[int] = []
        first_scores: torch.Tensor | None = None
        for _ in range(theta):
            sub = dist[left][:, left]
            scores = krum_scores(sub, f)
            if first_scores is None:
                first_scores = scores
            chosen.append(left.pop(argmin_unordered(scores, sub, x, left)))
        selected = tuple(sorted(chosen))
        vector = _closest_to_median_mean(x, selected, beta)
        return Partial(vector, selected=selected, scores=first_scores, meta={"beta": beta})


def argmin_unordered(
    scores: torch.Tensor, dist: torch.Tensor, x: torch.Tensor, rows: list[int] | None = None
) -> int:
    """The index of the lowest score, with exact ties broken without regard to worker order:
    the smaller total distance to the others, then the lexicographically smaller vector (tied
    identical vectors give the same result whichever is picked). ``rows`` maps positions in
    ``scores`` to rows of ``x`` (default: the same)."""
    tied = (scores == scores.min()).nonzero().flatten()
    if tied.numel() > 1:
        total = dist[tied].sum(dim=1)
        tied = tied[total == total.min()]
    if tied.numel() > 1:
        picked = x[tied if rows is None else [rows[int(i)] for i in tied]]
        if bool((picked == picked[0]).all()):
            return int(tied[0])
        differs = (picked != picked[0]).any(dim=0).nonzero().flatten()
        for col in differs.tolist():
            values = picked[:, col]
            keep = values == values.min()
            tied, picked = tied[keep], picked[keep]
            if tied.numel() == 1:
                break
    return int(tied[0])


def _closest_to_median_mean(x: torch.Tensor, rows: tuple[int, ...], beta: int) -> torch.Tensor:
    """Per coordinate, the mean of the ``beta`` values of ``x[rows]`` closest to their median.

    Those values are a window of ``beta`` consecutive sorted values, the one reaching least far
    from the median (ties: the lowest window, so the result does not depend on worker order):
    a running sum over the ``m - beta + 1`` windows, chunk by chunk, the selected rows gathered
    per chunk (never copied whole).
    """

    index = torch.tensor(rows, device=x.device)
    m = len(rows)
    out = torch.empty(x.shape[1], dtype=x.dtype, device=x.device)
    lo, hi = (m - 1) // 2, m // 2
    for cols in column_chunks(x, NETWORK_CHUNK * x.shape[0] // max(1, m)):
        block = x[:, cols].index_select(0, index)
        if beta >= m:
            out[cols] = block.mean(dim=0)
            continue
        ranked = sorted_rows(block)
        median = ranked[lo] * 0.5 + ranked[hi] * 0.5
        total = ranked[0].clone()
        for row in ranked[1:beta]:
            total += row
        best_sum = total.clone()
        best_reach = torch.maximum(median - ranked[0], ranked[beta - 1] - median)
        for j in range(1, m - beta + 1):
            total += ranked[j + beta - 1] - ranked[j - 1]
            reach = torch.maximum(median - ranked[j], ranked[j + beta - 1] - median)
            better = reach < best_reach
            best_reach = torch.where(better, reach, best_reach)
            best_sum = torch.where(better, total, best_sum)
        out[cols] = best_sum.div_(beta)
    return out
