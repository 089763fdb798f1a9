"""Tuned hyper-parameters from rl-baselines3-zoo (``hyperparams/ppo.yml``, ``sac.yml``).

``preset("PPO", "CartPole-v1")`` returns a :class:`PPOConfigEntity` with the zoo's settings (and
its ``n_envs``); the zoo's training budget is :func:`preset_timesteps`. The curves these presets
give through Forseti are on the RL docs page (``docs/rl.md``, made by ``benchmarks/bench_rl.py``).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .entities import PPOConfigEntity, RLConfigEntity, SACConfigEntity

__all__ = ["PRESETS", "preset", "preset_timesteps"]

_CONFIGS: dict[str, type[RLConfigEntity]] = {"PPO": PPOConfigEntity, "SAC": SACConfigEntity}

#: (algorithm, environment id) → (the zoo's training budget, its settings)
PRESETS: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {
    ("PPO", "CartPole-v1"): (
        100_000,
        {
            "n_envs": 8,
            "n_steps": 32,
            "batch_size": 256,
            "gae_lambda": 0.8,
            "gamma": 0.98,
            "n_epochs": 20,
            "ent_coef": 0.0,
            "learning_rate": "lin_1e-3",
            "clip_range": "lin_0.2",
        },
    ),
    ("SAC", "Pendulum-v1"): (20_000, {"learning_rate": 1e-3}),
}


def _key(algorithm: str, env_id: str) -> tuple[str, str]:
    key = (str(algorithm).upper(), env_id)
    if key not in PRESETS:
        known = ", ".join(f"{a} {e}" for a, e in PRESETS)
        raise ConfigError(f"no rl-baselines3-zoo preset for {algorithm} on {env_id!r} ({known})")
    return key


def preset(algorithm: str, env_id: str, **overrides: Any) -> RLConfigEntity:
    """The zoo's tuned config for ``algorithm`` on ``env_id`` (``overrides`` replace fields)."""
    key = _key(algorithm, env_id)
    _, settings = PRESETS[key]
    fields = {"name": f"{key[0].lower()}-{env_id}", "preset": f"rl-zoo:{env_id}", **settings}
    fields.update(overrides)
    return _CONFIGS[key[0]](**fields)


def preset_timesteps(algorithm: str, env_id: str) -> int:
    """The zoo's training budget (environment steps) for ``algorithm`` on ``env_id``."""
    return PRESETS[_key(algorithm, env_id)][0]
