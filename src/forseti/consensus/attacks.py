"""Simulated Byzantine workers, for evaluating and testing the robust rules.

An attack sees the honest workers' vectors and returns what ``f`` Byzantine workers send::

    byz = ALIE()(honest, f=3)              # (3, d): three identical copies of mean + z_max * std
    rule(torch.cat([honest, byz]))

* By default the ``f`` rows are identical copies of one attack vector (what ByzFL sends).
  ``jitter > 0`` adds independent Gaussian noise of ``jitter`` times the honest per-coordinate
  standard deviation (``ddof=1``) to each copy: identical copies make Krum and NNM *prefer* the
  attackers (they are each other's nearest neighbours), so test rules against both.
* Each attack vector equals ByzFL's (``byzfl.attacks``) on the same input: :class:`SignFlip`,
  :class:`Gaussian`, :class:`InfNaN` (ByzFL's ``Inf`` and more), :class:`IPM`, :class:`ALIE`
  (ByzFL's sign, ``mean + z * std``), :class:`Mimic`, :class:`LabelFlip`, and the line-searched
  :class:`~forseti.consensus.attacks_optimal.OptimalALIE` / ``OptimalIPM``.
* ``honest`` may be an ``(h, d)`` tensor or array, a list of vectors or per-layer tensors (the
  result is always flat, ``(f, d)``); the result has the honest dtype and device. Randomness
  (Gaussian, jitter) comes from ``generator`` when given, else from torch's global RNG.
* Bad parameters raise :class:`~forseti.errors.ConfigError`, bad inputs (non-finite honest
  vectors, too few of them) :class:`~forseti.errors.ValidationError`.

:func:`build_attack` rebuilds an attack from its ``config()``; :data:`ATTACKS` maps the names.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from statistics import NormalDist
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from ..errors import ConfigError, ValidationError
from ._tensors import as_matrix
from .base import check_f, check_number, check_positive, parse_config

__all__ = [
    "Attack",
    "SignFlip",
    "Gaussian",
    "InfNaN",
    "IPM",
    "ALIE",
    "Mimic",
    "LabelFlip",
    "flip_labels",
    "alie_z_max",
    "build_attack",
    "ATTACKS",
]

_REGISTRY: dict[str, type[Attack]] = {}
ATTACKS: Mapping[str, type[Attack]] = MappingProxyType(_REGISTRY)
"""Every attack class by its config name (the optimised attacks included)."""


def _honest(honest: Any, *, need: int = 1, why: str = "") -> torch.Tensor:
    x, _ = as_matrix(honest, what="honest")
    if x.shape[0] < need:
        raise ValidationError(f"{why} needs at least {need} honest vectors; got {x.shape[0]}")
    if not bool(torch.isfinite(x).all()):
        raise ValidationError("honest vectors must be finite (they hold Inf or NaN)")
    return x


def _std(x: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.var(x, dim=0, correction=1))


def randn(
    shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Standard normal draws with ``like``'s dtype and device, from ``generator`` when given (on
    the generator's device, then moved), else from torch's global RNG."""
    device = like.device if generator is None else generator.device
    out = torch.randn(shape, generator=generator, dtype=like.dtype, device=device)
    return out.to(like.device)


def alie_z_max(n: int, f: int) -> float:
    """Baruch et al.'s largest undetectable ``z`` for ``f`` attackers among ``n`` workers:
    ``s = floor(n/2 + 1) - f`` workers must be won over, ``z_max = Phi^-1((n - s) / n)``."""
    n, f = check_f(n, "n"), check_f(f)
    s = n // 2 + 1 - f
    if f < 1 or s < 1:
        raise ValidationError(f"z_max is defined for 1 <= f < floor(n/2 + 1); got n={n}, f={f}")
    return NormalDist().inv_cdf((n - s) / n)


class Attack(ABC):
    """An attack: ``attack(honest, f, generator=None) -> (f, d)`` tensor of Byzantine vectors.

    Subclasses implement :meth:`vector` (the one attack vector, from finite honest rows ``x``);
    the base class validates, copies it ``f`` times and adds the jitter (:meth:`rows`). A
    subclass with a ``name`` is registered in :data:`ATTACKS` (so :func:`build_attack` finds it).
    """

    name: ClassVar[str] = ""
    #: the fewest honest vectors the attack needs (the std needs 2)
    min_honest: ClassVar[int] = 1

    def __init__(self, *, jitter: float = 0.0) -> None:
        self.jitter = check_number(jitter, "jitter", minimum=0.0)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise ConfigError(f"attack name {name!r} is taken by {_REGISTRY[name].__name__}")
            _REGISTRY[name] = cls

    def __call__(
        self, honest: Any, f: int, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The ``f`` Byzantine vectors, shape ``(f, d)``, with the honest dtype and device."""
        f = check_f(f)
        need = max(self.min_honest, 2 if self.jitter > 0 else 1)
        x = _honest(honest, need=need, why=f"{type(self).__name__} (jitter={self.jitter})")
        if f == 0:
            return x.new_empty((0, x.shape[1]))
        return self.rows(x, f, generator)

    @abstractmethod
    def vector(self, x: torch.Tensor, f: int, generator: torch.Generator | None) -> torch.Tensor:
        """The attack vector (shape ``(d,)``) against finite honest rows ``x``, for ``f >= 1``."""

    def rows(self, x: torch.Tensor, f: int, generator: torch.Generator | None) -> torch.Tensor:
        """The ``f >= 1`` rows: copies of :meth:`vector`, plus :meth:`noise` when jittered."""
        out = self.vector(x, f, generator).to(x.dtype).expand(f, -1).clone()
        if self.jitter > 0:
            out += self.noise(x, f, generator)
        return out

    def noise(self, x: torch.Tensor, f: int, generator: torch.Generator | None) -> torch.Tensor:
        """Independent ``N(0, (jitter * std_j)^2)`` noise per row and coordinate ``j``."""
        return randn((f, x.shape[1]), x, generator) * (self.jitter * _std(x))

    def parameters(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this attack."""
        return {"jitter": self.jitter}

    def config(self) -> dict[str, Any]:
        """``{"name": ..., "parameters": {...}}``, accepted by :func:`build_attack`."""
        return {"name": self.name, "parameters": self.parameters()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.parameters().items())
        return f"{type(self).__name__}({args})"


class SignFlip(Attack):
    """Send the opposite of the honest mean (Allen-Zhu et al. 2020; ByzFL's ``SignFlipping``)."""

    name = "sign_flip"

    def vector(self, x: torch.Tensor, f: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.mean(x, dim=0) * -1


class IPM(Attack):
    """Inner product manipulation (Xie et al. 2020): ``-eps * mean`` of the honest vectors
    (ByzFL's ``InnerProductManipulation(tau=eps)``). A small ``eps`` (0.1) hides inside the
    honest spread; a large one (10) reverses the mean outright."""

    name = "ipm"

    def __init__(self, eps: float = 0.1, *, jitter: float = 0.0) -> None:
        super().__init__(jitter=jitter)
        self.eps = float(check_positive(eps, "eps"))

    def vector(self, x: torch.Tensor, f: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.mean(x, dim=0) * -self.eps

    def parameters(self) -> dict[str, Any]:
        return {"eps": self.eps, **super().parameters()}


class ALIE(Attack):
    """A little is enough (Baruch et al. 2019): ``mean + z * std`` of the honest vectors, ``std``
    per coordinate with ``ddof=1`` (ByzFL's ``ALittleIsEnough(tau=z)``, same sign).

    ``z=None`` uses Baruch et al.'s :func:`alie_z_max` with ``n = h + f`` at each call (which
    needs ``f < floor(n/2 + 1)``). Needs at least 2 honest vectors."""

    name = "alie"
    min_honest = 2

    def __init__(self, z: float | None = None, *, jitter: float = 0.0) -> None:
        super().__init__(jitter=jitter)
        self.z = None if z is None else check_number(z, "z")

    def vector(self, x: torch.Tensor, f: int, generator: torch.Generator | None) -> torch.Tensor:
        z = alie_z_max(x.shape[0] + f, f) if self.z is None else self.z
        return torch.mean(x, dim=0) + _std(x) * z

    def parameters(self) -> dict[str, Any]:
        return {"z": self.z, **super().parameters()}


class Gaussian(Attack):
    """Vectors of i.i.d. ``N(mu, sigma^2)`` coordinates (ByzFL's ``Gaussian``; same default
    ``sigma=1.0``; pass a large ``sigma`` for a loud attack). One vector is drawn (``d`` draws
    from ``generator``) and copied ``f`` times, then jittered if asked. With a CPU generator
    seeded like torch's global RNG, the vector equals ByzFL's on float32 input."""

    name = "gaussian"

    def __init__(self, mu: float = 0.0, sigma: float = 1.0, *, jitter: float = 0.0) -> None:
        super().__init__(jitter=jitter)
        self.mu = check_number(mu, "mu")
        self.sigma = check_number(sigma, "sigma", minimum=0.0)

    def vector(self, x: torch.Tensor, f: int, generator: torch.Generator | None) -> torch.Tensor:
        return randn((x.shape[1],), x, generator) * self.sigma + self.mu

    def parameters(self) -> dict[str, Any]:
        return {"mu": self.mu, "sigma": self.sigma, **super().parameters()}


class InfNaN(Attack):
    """Vectors full of ``value``: ``"inf"`` (ByzFL's ``Inf``), ``"-inf"`` or ``"nan"``. Jitter is
    accepted for uniform configs but changes nothing (noise cannot move a non-finite value)."""

    name = "inf_nan"
    VALUES: ClassVar[dict[str, float]] = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}

    def __init__(self, value: str = "inf", *, jitter: float = 0.0) -> None:
        super().__init__(jitter=jitter)
        if not isinstance(value, str) or value not in self.VALUES:
            raise ConfigError(f"value must be one of {sorted(self.VALUES)}; got {value!r}")
        self.value = value

    def __call__(
        self, honest: Any, f: int, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        f = check_f(f)
        x = _honest(honest)
        return torch.full((f, x.shape[1]), self.VALUES[self.value], dtype=x.dtype, device=x.device)

    def vector(self, x: torch.Tensor, f: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.full((x.shape[1],), self.VALUES[self.value], dtype=x.dtype, device=x.device)

    def parameters(self) -> dict[str, Any]:
        return {"value": self.value, **super().parameters()}


class Mimic(Attack):
    """Copy honest worker ``target``'s vector (Karimireddy et al. 2022; ByzFL's
    ``Mimic(epsilon=target)``): it sits inside the honest spread and over-weights one worker,
    which hurts most on non-IID data."""

    name = "mimic"

    def __init__(self, target: int = 0, *, jitter: float = 0.0) -> None:
        super().__init__(jitter=jitter)
        self.target = check_f(target, "target")

    def vector(self, x: torch.Tensor, f: int, generator: torch.Generator | None) -> torch.Tensor:
        if self.target >= x.shape[0]:
            raise ValidationError(
                f"Mimic target={self.target} is not an honest worker: only {x.shape[0]} vectors"
            )
        return x[self.target]

    def parameters(self) -> dict[str, Any]:
        return {"target": self.target, **super().parameters()}


def flip_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The label-flipping map ``y -> num_classes - 1 - y`` (ByzFL's), for integer labels in
    ``[0, num_classes)``."""
    num_classes = check_positive(num_classes, "num_classes", integer=True)
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
        raise ValidationError(f"labels must be an integer tensor; got {labels!r:.80}")
    if labels.dtype == torch.bool:
        raise ValidationError("labels must be an integer tensor; got a bool tensor")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValidationError(
            f"labels must lie in [0, {num_classes}); got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return num_classes - 1 - labels


class LabelFlip(Attack):
    """Label flipping, a *data-level* attack: the Byzantine workers compute their gradients on
    labels mapped by :func:`flip_labels` (or :meth:`flip`), and the caller passes **those**
    gradients as ``honest``; the attack returns ``f`` copies of their mean, as ByzFL's
    ``LabelFlipping`` does (pass the gradients from the honest workers' data with flipped labels).
    ``num_classes`` is only needed by :meth:`flip`."""

    name = "label_flip"

    def __init__(self, num_classes: int | None = None, *, jitter: float = 0.0) -> None:
        super().__init__(jitter=jitter)
        if num_classes is not None:
            check_positive(num_classes, "num_classes", integer=True)
        self.num_classes = num_classes

    def flip(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` flipped with this attack's ``num_classes``."""
        if self.num_classes is None:
            raise ConfigError("LabelFlip.flip needs num_classes: LabelFlip(num_classes=...)")
        return flip_labels(labels, self.num_classes)

    def vector(self, x: torch.Tensor, f: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.mean(x, dim=0)

    def parameters(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, **super().parameters()}


def build_attack(
    config: Mapping[str, Any] | str,
    *,
    aggregator: Any = None,
    pre: Any = None,
) -> Attack:
    """An attack from ``{"name": ..., "parameters": {...}}`` (or just a name; the class name
    works too). Every attack's ``config()`` is accepted back.

    The optimised attacks need the rule they attack: pass it as ``aggregator=`` (any callable,
    e.g. a rule object) and optionally ``pre=`` (pre-aggregators), or put rule configs under
    ``"aggregator"`` / ``"pre"`` in the parameters (built with :func:`forseti.consensus.build`).
    ``aggregator`` and ``pre`` override the parameters and are ignored by the other attacks, so
    one loop can build every attack against the rule under test.
    """

    cls, params = parse_config(config, "attack", _REGISTRY)
    if getattr(cls, "needs_aggregator", False):
        if aggregator is not None:
            params["aggregator"] = aggregator
        if pre is not None:
            params["pre"] = pre
        if params.get("aggregator") is None:
            raise ConfigError(
                f"attack {cls.name!r} needs the rule it attacks: build_attack(config, "
                "aggregator=rule) or an 'aggregator' config in its parameters"
            )
    try:
        attack: Attack = cls(**params)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for attack {cls.name!r}: {exc}") from None
    return attack


# Registers OptimalALIE and OptimalIPM in ATTACKS (they subclass Attack, so they come after it).
from . import attacks_optimal as _attacks_optimal  # noqa: E402, F401
