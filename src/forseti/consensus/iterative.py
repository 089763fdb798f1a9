"""Iterative rules: the geometric median (smoothed Weiszfeld) and centered clipping (stateful)."""

from __future__ import annotations

from typing import Any, Literal

import torch

from ..errors import ConfigError, ValidationError
from .base import Aggregator, Partial, check_number, check_positive
from .coordinate import CoordinateMedian
from .distances import sq_distances_to

__all__ = ["GeometricMedian", "CenteredClipping"]

Init = Literal["median", "mean", "zeros"]


class GeometricMedian(Aggregator):
    """The geometric median (RFA, Pillutla et al.) by smoothed Weiszfeld iterations; needs
    ``n >= 2f + 1`` (``f`` is only checked: the rule itself does not use it).

    Each iteration weighs worker ``i`` by ``1 / max(|x_i - z|, nu)`` and sets ``z`` to the
    weighted mean; it stops after ``max_iter`` iterations or when ``z`` moves less than
    ``tol * (|z| + tol)``. ``init`` is the starting point: the coordinate-wise median (default),
    the mean, or zeros. ByzFL's ``GeometricMedian(nu, T)`` is ``init="zeros", max_iter=T,
    tol=0``.
    """

    name = "geometric_median"

    def __init__(
        self,
        f: int = 0,
        *,
        nu: float = 1e-6,
        max_iter: int = 100,
        tol: float = 1e-7,
        init: Init = "median",
    ) -> None:
        super().__init__(f)
        self.nu = check_positive(nu, "nu")
        self.max_iter = check_positive(max_iter, "max_iter", integer=True)
        self.tol = check_number(tol, "tol", minimum=0.0, maximum=1.0, open_above=True)
        if init not in ("median", "mean", "zeros"):
            raise ConfigError(f"init must be 'median', 'mean' or 'zeros'; got {init!r}")
        self.init: Init = init

    def parameters(self) -> dict[str, Any]:
        return {
            "f": self.f,
            "nu": self.nu,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "init": self.init,
        }

    def _aggregate(self, x: torch.Tensor, f: int) -> Partial:
        if self.init == "median":
            z = CoordinateMedian()._aggregate(x, 0).vector
        elif self.init == "mean":
            z = x.mean(dim=0)
        else:
            z = torch.zeros_like(x[0])
        iterations = 0
        for iterations in range(1, self.max_iter + 1):  # noqa: B007
            dist = sq_distances_to(x, z).sqrt_().clamp_min_(self.nu)
            w = (1.0 / dist).to(x.dtype)
            new = (w @ x) / w.sum()
            moved = float(torch.linalg.vector_norm(new - z))
            z = new
            if moved <= self.tol * (float(torch.linalg.vector_norm(z)) + self.tol):
                break
        return Partial(z, meta={"iterations": iterations})


class CenteredClipping(Aggregator):
    """Centered clipping (Karimireddy, He & Jaggi 2021); stateful, needs ``n >= 2f + 1``.

    Starting from the previous round's aggregate (``center``; zeros at first), each of the
    ``iterations`` steps moves the center by the mean of the workers' differences to it, each
    clipped to norm ``tau``: ``v += mean_i (x_i - v) * min(1, tau / |x_i - v|)``. With
    ``tau=None`` the radius adapts every step to the median distance of the workers to the
    center (scale-free; the paper instead scales a fixed ``tau`` with the momentum, roughly
    ``tau0 / (1 - beta)``). ByzFL's ``CenteredClipping(L, tau)`` is ``iterations=L, tau=tau``.
    :meth:`reset` forgets the center.
    """

    name = "centered_clipping"

    def __init__(
        self,
        f: int = 0,
        *,
        tau: float | None = None,
        iterations: int = 3,
        center: torch.Tensor | None = None,
    ) -> None:
        super().__init__(f)
        self.tau = None if tau is None else check_positive(tau, "tau")
        self.iterations = check_positive(iterations, "iterations", integer=True)
        if center is not None and (not isinstance(center, torch.Tensor) or center.dim() != 1):
            raise ConfigError("center must be a 1-d tensor (the starting aggregate)")
        self.center = None if center is None else center.detach().clone()

    def parameters(self) -> dict[str, Any]:
        return {"f": self.f, "tau": self.tau, "iterations": self.iterations}

    def reset(self) -> None:
        """Forget the center: the next round starts from zeros."""
        self.center = None

    def _aggregate(self, x: torch.Tensor, f: int) -> Partial:
        n, d = x.shape
        v = torch.zeros_like(x[0]) if self.center is None else self.center.to(x).clone()
        if v.shape[0] != d:
            raise ValidationError(
                f"CenteredClipping's center has {v.shape[0]} coordinates; the vectors have {d} "
                "(call reset() when the model changes)"
            )
        radius = 0.0
        spare = torch.empty_like(v)  # two buffers, swapped: no fresh d-sized tensor per step
        for _ in range(self.iterations):
            dist = sq_distances_to(x, v).sqrt_()
            radius = float(dist.median()) if self.tau is None else self.tau
            scale = torch.where(dist > radius, radius / dist.clamp_min(1e-30), 1.0).to(x.dtype)
            # v + mean_i scale_i (x_i - v), as one GEMV
            total = float(scale.sum())
            torch.addmv(v, x.T, scale, beta=1.0 - total / n, alpha=1.0 / n, out=spare)
            v, spare = spare, v
        self.center = v.detach().clone()
        return Partial(v, meta={"tau": radius})
