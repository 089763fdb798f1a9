"""Environments: what a run names (a gymnasium id, a stored spec, or a factory), checked before use.

:func:`env_spec` turns what the user passed into an :class:`EnvSpecEntity` (its spaces filled in
from one instance, which also goes through SB3's environment checker: a broken environment fails
here with :class:`EnvCheckError`, before any run is stored); :func:`make_vec` builds the
monitored, seeded vector of environments SB3 trains on.
"""

from __future__ import annotations

import pkgutil
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv

from ..entities.frozen import thaw
from ..errors import ValidationError
from .entities import EnvSpecEntity

__all__ = ["EnvCheckError", "EnvLike", "env_spec", "make_env", "make_vec", "check_environment"]

EnvLike = str | EnvSpecEntity | Callable[[], gym.Env] | gym.Env
"""A gymnasium id (``"CartPole-v1"``), a stored :class:`EnvSpecEntity`, a function that makes
the environment, or an environment made by ``gym.make`` (only its id and keyword arguments are
used)."""


_UNNAMED = (
    "environment {!r} was made by a function that cannot be imported by name (a lambda, a "
    "closure, or defined in __main__): pass that function as env= to evaluate or resume"
)


class EnvCheckError(ValidationError):
    """The environment cannot be made, or does not behave as a gymnasium environment must."""


def _factory_path(fn: Callable[..., Any]) -> str | None:
    """``"module:qualname"`` when ``fn`` can be imported back by that name, else ``None``."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or "<" in qualname or module == "__main__":
        return None
    path = f"{module}:{qualname}"
    try:
        return path if pkgutil.resolve_name(path) is fn else None
    except (ImportError, AttributeError, ValueError):
        return None


def _import(path: str) -> Callable[..., gym.Env]:
    try:
        target: Callable[..., gym.Env] = pkgutil.resolve_name(path)
    except (ImportError, AttributeError, ValueError) as exc:
        raise EnvCheckError(f"cannot import the environment factory {path!r}: {exc}") from None
    return target


def make_env(spec: EnvSpecEntity, factory: Callable[..., gym.Env] | None = None) -> gym.Env:
    """One instance of the environment ``spec`` describes (EnvCheckError when it cannot be made)."""
    made: Any = None
    try:
        if factory is not None:
            made = factory(**thaw(spec.env_kwargs))
        elif spec.env_id is not None:
            made = gym.make(spec.env_id, **_make_kwargs(spec))
        elif spec.factory is not None:
            made = _import(spec.factory)(**thaw(spec.env_kwargs))
        else:
            raise EnvCheckError(_UNNAMED.format(spec.name))
    except EnvCheckError:
        raise
    except Exception as exc:  # gymnasium's own errors, or whatever the factory raises
        raise EnvCheckError(f"cannot make environment {spec.name!r}: {exc}") from exc
    if not isinstance(made, gym.Env):
        raise EnvCheckError(f"{spec.name!r} made a {type(made).__name__}, not a gymnasium.Env")
    return made


def _make_kwargs(spec: EnvSpecEntity) -> dict[str, Any]:
    """``gym.make``'s keyword arguments for a registered id: the spec's, and its episode limit."""
    kwargs: dict[str, Any] = thaw(spec.env_kwargs)
    if spec.max_episode_steps is not None:
        kwargs.setdefault("max_episode_steps", spec.max_episode_steps)
    return kwargs


def check_environment(env: gym.Env, name: str) -> None:
    """Run SB3's environment checker; its failures become :class:`EnvCheckError`."""
    if not isinstance(env, gym.Env):
        raise EnvCheckError(f"{name!r} made a {type(env).__name__}, not a gymnasium.Env")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # advice (e.g. "normalise your observations")
            check_env(env, warn=False, skip_render_check=True)
    except Exception as exc:  # the checker asserts; the env itself may raise anything
        msg = str(exc) or type(exc).__name__
        raise EnvCheckError(f"environment {name!r} fails SB3's env checker: {msg}") from exc


def env_spec(
    env: EnvLike,
    *,
    env_kwargs: dict[str, Any] | None = None,
    factory: Callable[..., gym.Env] | None = None,
) -> tuple[EnvSpecEntity, Callable[..., gym.Env] | None]:
    """An (unstored) spec for ``env``, checked on one instance; and the factory to use, if any
    (``factory`` makes a stored spec's environment when its own factory cannot be imported)."""
    if isinstance(env, EnvSpecEntity):
        if env_kwargs:
            raise ValidationError("env_kwargs go into the EnvSpecEntity, not beside it")
        probe = make_env(env, factory)
        try:
            check_environment(probe, env.name)
        finally:
            probe.close()
        return env, factory
    if factory is not None:
        raise ValidationError("env_factory goes with a stored EnvSpecEntity")
    fields: dict[str, Any] = {"env_kwargs": dict(env_kwargs or {})}
    if isinstance(env, str):
        fields.update(name=env, env_id=env)
    elif isinstance(env, gym.Env):
        gspec = env.spec
        if gspec is None:
            raise ValidationError(
                "an environment instance without a gymnasium spec cannot be re-made for each "
                "worker and for evaluation: pass its id, or a function that makes it"
            )
        fields.update(name=gspec.id, env_id=gspec.id, max_episode_steps=gspec.max_episode_steps)
        fields["env_kwargs"] = {**dict(gspec.kwargs), **fields["env_kwargs"]}
        fields["env_kwargs"].pop("render_mode", None)
    elif callable(env):
        factory = env
        fields.update(name=getattr(env, "__name__", type(env).__name__), factory=_factory_path(env))
    else:
        raise ValidationError(
            f"env must be a gymnasium id, an EnvSpecEntity or a factory, not {type(env).__name__}"
        )
    try:
        draft = EnvSpecEntity(**fields)
    except Exception as exc:  # pydantic: e.g. kwargs that are not JSON
        raise ValidationError(f"bad environment spec: {exc}") from None
    probe = make_env(draft, factory)
    try:
        check_environment(probe, draft.name)
        gspec = getattr(probe, "spec", None)
        fields.update(
            observation_space=repr(probe.observation_space),
            action_space=repr(probe.action_space),
            max_episode_steps=fields.get("max_episode_steps")
            or getattr(gspec, "max_episode_steps", None)
            or None,
            reward_threshold=getattr(gspec, "reward_threshold", None),
        )
    finally:
        probe.close()
    return EnvSpecEntity(**fields), factory


def make_vec(
    spec: EnvSpecEntity,
    n_envs: int,
    seed: int,
    factory: Callable[..., gym.Env] | None = None,
) -> VecEnv:
    """``n_envs`` monitored copies of the environment in a ``DummyVecEnv``, seeded ``seed + i``
    (SB3's ``make_vec_env``)."""
    kwargs: dict[str, Any] = thaw(spec.env_kwargs)
    target: str | Callable[..., gym.Env]
    if factory is not None:
        target = factory
    elif spec.env_id is not None:
        target, kwargs = spec.env_id, _make_kwargs(spec)
    elif spec.factory is not None:
        target = _import(spec.factory)
    else:
        raise EnvCheckError(_UNNAMED.format(spec.name))
    try:
        return make_vec_env(target, n_envs=n_envs, seed=seed, env_kwargs=kwargs)
    except Exception as exc:
        raise EnvCheckError(f"cannot make environment {spec.name!r}: {exc}") from exc
