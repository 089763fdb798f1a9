"""An SB3 model's training state, captured for a checkpoint and restored on resume (no pickle).

Captured, at a rollout boundary (after an update, before the next rollout):

* the optimizers' and other state dicts SB3 names in ``_get_torch_save_params`` (Adam moments,
  SAC's entropy-coefficient optimizer) and its torch variables (``log_ent_coef``);
* the algorithm's counters and episode statistics (``num_timesteps``, ``_n_updates``,
  ``_episode_num``, ``_last_obs``, ``ep_info_buffer`` …: every attribute that is plain data);
* the replay buffer of off-policy algorithms (its filled rows only);
* the environments, when they are a ``DummyVecEnv`` of environments whose state is plain data
  (gymnasium's classic-control and toy-text environments, the ``TimeLimit`` and ``Monitor``
  wrappers): their attributes and random generators. When an environment holds anything else
  (a physics engine, an object), or the vector is not a ``DummyVecEnv``, the environments are
  reset on resume instead: training continues from fresh episodes, not bit-identically;
* the random generators: torch's, numpy's global one, Python's, and the spaces'.

With all of that restored, a resumed run on CPU continues bit-identically to one that was never
interrupted (tested for PPO on CartPole and SAC on Pendulum).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.save_util import recursive_getattr
from stable_baselines3.common.utils import get_device
from stable_baselines3.common.vec_env import DummyVecEnv

from ..errors import IntegrityError, ValidationError
from .snapshot import Packer, Unsupported, unpack

__all__ = ["capture", "restore", "STATE_FORMAT"]

logger = logging.getLogger(__name__)

STATE_FORMAT = "forseti.rl.state/1"
#: model attributes that are rebuilt from the config, or set again by ``learn``
_SKIP_MODEL = frozenset(
    {
        "env",
        "policy",
        "replay_buffer",
        "rollout_buffer",
        "start_time",
        "_total_timesteps",
        "_num_timesteps_at_start",
        "_logger",
        "_custom_logger",
        "tensorboard_log",
        "verbose",
    }
)


#: environment attributes that hold no episode state (gymnasium's registration record)
_STATELESS = frozenset({"spec", "_cached_spec"})


def _plain_attrs(
    obj: Any,
    packer: Packer,
    key: str,
    skip: frozenset[str] = frozenset(),
    missed: list[str] | None = None,
) -> dict[str, Any]:
    """The attributes of ``obj`` that are plain data, packed; spaces keep their generators.
    The names of the others (not in ``skip`` or :data:`_STATELESS`) are added to ``missed``."""
    out: dict[str, Any] = {}
    for name, value in vars(obj).items():
        if name in skip:
            continue
        if isinstance(value, gym.spaces.Space):
            rng = getattr(value, "_np_random", None)
            if rng is not None:
                out[name] = {"space_rng": packer.pack(f"{key}.{name}.rng", rng)}
            continue
        try:
            out[name] = packer.pack(f"{key}.{name}", value)
        except Unsupported:
            if missed is not None and name not in _STATELESS:
                missed.append(f"{type(obj).__name__}.{name}")
    return out


def _set_attrs(obj: Any, tree: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    for name, value in tree.items():
        current = getattr(obj, name, None)
        if isinstance(value, dict) and "space_rng" in value:
            if isinstance(current, gym.spaces.Space):
                current._np_random = unpack(value["space_rng"], tensors, current._np_random)
            continue
        setattr(obj, name, unpack(value, tensors, current))


def _env_layers(env: gym.Env) -> list[Any]:
    layers: list[Any] = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


def _optimizer(packer: Packer, name: str, state: Mapping[str, Any]) -> dict[str, Any]:
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                packer.tensors[f"sd.{name}.state.{index}.{key}"] = value.detach().cpu().clone()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(
    name: str, saved: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    prefix = f"sd.{name}.state."
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        if key.startswith(prefix):
            index, field = key[len(prefix) :].split(".", 1)
            state.setdefault(int(index), {})[field] = tensor
    for index, values in saved.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": saved["param_groups"]}


def capture(
    model: BaseAlgorithm, *, replay_buffer: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The training state of ``model`` as tensors and header metadata (JSON strings)."""
    packer = Packer()
    tree: dict[str, Any] = {}
    names, variables = model._get_torch_save_params()
    dicts: dict[str, Any] = {}
    for name in names:
        if name == "policy":
            continue  # the weights blob
        sd = recursive_getattr(model, name).state_dict()
        if "param_groups" in sd:
            dicts[name] = {"optimizer": _optimizer(packer, name, sd)}
        else:
            for key, tensor in sd.items():
                packer.tensors[f"sd.{name}.{key}"] = tensor.detach().cpu().clone()
            dicts[name] = {"module": sorted(sd)}
    tree["state_dicts"] = dicts
    for name in variables:
        packer.tensors[f"var.{name}"] = recursive_getattr(model, name).detach().cpu().clone()
    tree["variables"] = list(variables)
    tree["model"] = _plain_attrs(model, packer, "model", _SKIP_MODEL)
    buffer = getattr(model, "replay_buffer", None)
    tree["replay_buffer"] = None
    if replay_buffer and isinstance(buffer, ReplayBuffer):
        rows = buffer.buffer_size if buffer.full else buffer.pos
        out: dict[str, Any] = {}
        for name, value in vars(buffer).items():
            sliced = (
                isinstance(value, np.ndarray) and value.shape[:1] == (buffer.buffer_size,)
            ) or (
                isinstance(value, dict) and all(isinstance(v, np.ndarray) for v in value.values())
            )
            try:
                out[name] = packer.pack(f"rb.{name}", value, rows if sliced else None)
            except Unsupported:
                continue
        tree["replay_buffer"] = {"type": type(buffer).__name__, "attrs": out}
    tree["envs"] = None
    if isinstance(model.env, DummyVecEnv):
        missed: list[str] = []
        layers = [
            [
                _plain_attrs(layer, packer, f"env.{i}.{j}", frozenset({"env"}), missed)
                for j, layer in enumerate(_env_layers(e))
            ]
            for i, e in enumerate(model.env.envs)
        ]
        tree["envs"] = {
            "vec": _plain_attrs(model.env, packer, "vec"),
            "layers": layers,
            "missed": sorted(set(missed)),
        }
    else:
        logger.info(
            "environments of type %s are not captured; they restart on resume",
            type(model.env).__name__,
        )
    tree["rng"] = {
        "python": packer.pack("rng.python", random.getstate()),
        "numpy": packer.pack("rng.numpy", np.random.get_state()),
    }
    packer.tensors["rng.torch"] = torch.get_rng_state()
    if get_device(model.device).type == "cuda":
        packer.tensors["rng.cuda"] = torch.cuda.get_rng_state(model.device)
    meta = {"forseti.format": STATE_FORMAT, "forseti.rl.state": json.dumps(tree)}
    return packer.tensors, meta


def restore(
    model: BaseAlgorithm, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]
) -> None:
    """Put the state :func:`capture` took back into ``model`` (built from the same config and
    environment spec, its policy's weights already loaded)."""
    if meta.get("forseti.format") != STATE_FORMAT:
        raise IntegrityError(f"not an RL training state (format {meta.get('forseti.format')!r})")
    try:
        tree = json.loads(meta["forseti.rl.state"])
    except (KeyError, ValueError):
        raise IntegrityError("the RL training state has no readable description") from None
    for name, entry in tree["state_dicts"].items():
        target = recursive_getattr(model, name)
        try:
            if "optimizer" in entry:
                target.load_state_dict(_optimizer_state(name, entry["optimizer"], tensors))
            else:
                target.load_state_dict({k: tensors[f"sd.{name}.{k}"] for k in entry["module"]})
        except (KeyError, ValueError, RuntimeError) as exc:
            raise ValidationError(f"the stored {name} does not fit this model: {exc}") from None
    for name in tree["variables"]:
        stored = tensors.get(f"var.{name}")
        if stored is None:
            raise IntegrityError(f"the training state lacks the variable {name!r}")
        recursive_getattr(model, name).data.copy_(stored)
    _set_attrs(model, tree["model"], tensors)
    buffer = getattr(model, "replay_buffer", None)
    if tree["replay_buffer"] is not None and buffer is not None:
        _set_attrs(buffer, tree["replay_buffer"]["attrs"], tensors)
    envs = tree["envs"]
    if envs is not None and not envs.get("missed") and isinstance(model.env, DummyVecEnv):
        if len(envs["layers"]) != model.env.num_envs:
            raise ValidationError("the checkpoint was taken with another number of environments")
        _set_attrs(model.env, envs["vec"], tensors)
        for env, layers in zip(model.env.envs, envs["layers"], strict=True):
            for layer, attrs in zip(_env_layers(env), layers, strict=False):
                _set_attrs(layer, attrs, tensors)
    else:  # the environments' state was not (all) stored: they start fresh episodes
        missed = ", ".join((envs or {}).get("missed", [])) or type(model.env).__name__
        logger.warning("the environments restart from a reset on resume (not stored: %s)", missed)
        model._last_obs = None  # learn() resets the environments
        model._last_original_obs = None
    random.setstate(unpack(tree["rng"]["python"], tensors))
    np.random.set_state(unpack(tree["rng"]["numpy"], tensors))
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and get_device(model.device).type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], model.device)
