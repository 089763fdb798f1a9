"""Which SB3 algorithm a run uses, its config entity, and building the SB3 model from both."""

from __future__ import annotations

import pkgutil
from typing import Any

import stable_baselines3
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from ..entities.frozen import thaw
from ..errors import ConfigError, ValidationError
from .entities import (
    PPOConfigEntity,
    RLConfigEntity,
    SACConfigEntity,
    SB3ConfigEntity,
    linear_start,
)

__all__ = ["AlgorithmLike", "algorithm_class", "algorithm_path", "config_for", "build_model"]

AlgorithmLike = str | type[BaseAlgorithm]
_TYPED: dict[str, type[RLConfigEntity]] = {"PPO": PPOConfigEntity, "SAC": SACConfigEntity}
_SCHEDULES = ("learning_rate", "clip_range", "clip_range_vf")


class LinearDecay:
    """rl-baselines3-zoo's linear schedule, ``"lin_<start>"``: ``progress_remaining * start``
    (from ``start`` at the first update to 0 at the end of the run), computed as the zoo does."""

    def __init__(self, start: float) -> None:
        self.start = float(start)

    def __call__(self, progress_remaining: float) -> float:
        return progress_remaining * self.start

    def __repr__(self) -> str:
        return f"LinearDecay({self.start!r})"


def algorithm_path(cls: type[BaseAlgorithm]) -> str:
    """How a config names ``cls``: ``"PPO"`` for SB3's own classes, else ``"module:Class"``."""
    if getattr(stable_baselines3, cls.__name__, None) is cls:
        return str(cls.__name__)
    return f"{cls.__module__}:{cls.__qualname__}"


def algorithm_class(algo: AlgorithmLike) -> type[BaseAlgorithm]:
    """The SB3 algorithm class ``algo`` names (a class, ``"PPO"``, or ``"module:Class"``)."""
    if isinstance(algo, type):
        if not issubclass(algo, BaseAlgorithm):
            raise ValidationError(f"{algo.__name__} is not a stable-baselines3 algorithm class")
        return algo
    if not isinstance(algo, str) or not algo:
        raise ValidationError(f"algo is an SB3 algorithm class or its name, not {algo!r}")
    if ":" in algo:
        try:
            found: Any = pkgutil.resolve_name(algo)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(f"cannot import the algorithm {algo!r}: {exc}") from None
    else:
        found = getattr(stable_baselines3, algo.upper(), None) or getattr(
            stable_baselines3, algo, None
        )
        if found is None:
            known = ", ".join(
                n
                for n in stable_baselines3.__all__
                if isinstance(getattr(stable_baselines3, n), type)
            )
            raise ConfigError(
                f"stable-baselines3 has no algorithm {algo!r} ({known}; or 'module:Class')"
            )
    if not (isinstance(found, type) and issubclass(found, BaseAlgorithm)):
        raise ConfigError(f"{algo!r} is not a stable-baselines3 algorithm class")
    return found


def config_for(cls: type[BaseAlgorithm], config: RLConfigEntity | None) -> RLConfigEntity:
    """``config`` checked against the algorithm (or the algorithm's default config)."""
    path = algorithm_path(cls)
    typed = _TYPED.get(path)
    if config is None:
        return typed() if typed is not None else SB3ConfigEntity(algorithm_path=path)
    if not isinstance(config, RLConfigEntity):
        raise ValidationError(
            f"config must be a PPOConfigEntity, SACConfigEntity or SB3ConfigEntity, not "
            f"{type(config).__name__}"
        )
    if algorithm_class(config.algorithm_name()) is not cls:
        raise ValidationError(
            f"a {type(config).__name__} ({config.algorithm_name()}) cannot configure {path}"
        )
    return config


def _resolve(name: str, value: Any) -> Any:
    """Policy keyword arguments named by string: ``activation_fn="ReLU"`` → ``torch.nn.ReLU``."""
    if isinstance(value, str) and (name.endswith("_fn") or name.endswith("_class")):
        for module in (torch.nn, torch.optim):
            found = getattr(module, value, None)
            if isinstance(found, type):
                return found
        raise ConfigError(f"policy_kwargs[{name!r}]: torch.nn / torch.optim have no {value!r}")
    if isinstance(value, dict):
        return {k: _resolve(k, v) for k, v in value.items()}
    return value


def sb3_kwargs(config: RLConfigEntity) -> dict[str, Any]:
    """The SB3 constructor's keyword arguments: schedules as callables, classes resolved."""
    kwargs = config.algorithm_kwargs()
    for name in _SCHEDULES:
        value = kwargs.get(name)
        if isinstance(value, str) and value.startswith("lin_"):
            kwargs[name] = LinearDecay(linear_start(value))
    given = kwargs.pop("policy_kwargs", None) or {}  # SB3ConfigEntity.hyperparameters may hold it
    policy_kwargs = _resolve("policy_kwargs", {**given, **thaw(config.policy_kwargs)})
    if policy_kwargs:
        kwargs["policy_kwargs"] = policy_kwargs
    return kwargs


def build_model(
    cls: type[BaseAlgorithm],
    config: RLConfigEntity,
    env: VecEnv,
    seed: int,
    device: str | torch.device = "cpu",
) -> BaseAlgorithm:
    """The SB3 model ``config`` describes, on ``env``, seeded (SB3's ``seed=``)."""
    try:
        return cls(config.policy, env, seed=seed, device=device, verbose=0, **sb3_kwargs(config))
    except (TypeError, ValueError, AssertionError, KeyError, NotImplementedError) as exc:
        raise ConfigError(f"{algorithm_path(cls)} rejects this config: {exc}") from exc
