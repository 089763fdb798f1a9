"""Which module a checkpoint holds, so an exporter can rebuild it from the file alone.

A checkpoint written by :func:`~forseti.export.save_checkpoint` names its architecture and its
configuration in the safetensors header (``forseti.architecture``, ``forseti.config`` as JSON).
:func:`build_module` turns those back into a module for the exporters that need one (ONNX traces
a forward; GGUF maps parameter names). ``TinyCausalLM`` is known out of the box; register your
own with :func:`register_architecture`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import ConfigError, IntegrityError

__all__ = [
    "Architecture",
    "register_architecture",
    "architecture_of",
    "is_registered",
    "describe",
    "build_module",
    "ARCH_KEY",
    "CONFIG_KEY",
]

ARCH_KEY = "forseti.architecture"
CONFIG_KEY = "forseti.config"


@dataclass(frozen=True)
class Architecture:
    """How to describe a module as JSON and build it back (with fresh weights)."""

    name: str
    module_type: type[nn.Module]
    config_of: Callable[[nn.Module], dict[str, Any]]
    build: Callable[[dict[str, Any]], nn.Module]


_ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> Architecture:
    """Make ``arch`` known to :func:`describe` and :func:`build_module` (replaces a namesake)."""
    if not isinstance(arch, Architecture):
        raise ConfigError(f"register_architecture() takes an Architecture, not {arch!r}")
    _ARCHITECTURES[arch.name] = arch
    return arch


def _tiny_lm() -> Architecture:
    from ..gspo.model import TinyCausalLM, TinyLMConfigEntity

    fields = ("name", "vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "mlp_ratio")

    def config_of(module: nn.Module) -> dict[str, Any]:
        cfg = module.config
        return {k: getattr(cfg, k) for k in fields}

    def build(config: dict[str, Any]) -> nn.Module:
        return TinyCausalLM(TinyLMConfigEntity(**config))

    return Architecture("TinyCausalLM", TinyCausalLM, config_of, build)


def _known() -> dict[str, Architecture]:
    if "TinyCausalLM" not in _ARCHITECTURES:
        _ARCHITECTURES["TinyCausalLM"] = _tiny_lm()
    return _ARCHITECTURES


def is_registered(name: str) -> bool:
    """Whether an architecture of this name is registered (``TinyCausalLM`` always is)."""
    return bool(name) and name in _known()


def architecture_of(module: nn.Module) -> Architecture | None:
    """The registered architecture of ``module`` (exact type match), if any."""
    for arch in _known().values():
        if type(module) is arch.module_type:
            return arch
    return None


def describe(module: nn.Module) -> dict[str, str]:
    """Header metadata naming ``module``'s architecture and config (empty if unregistered)."""
    arch = architecture_of(module)
    if arch is None:
        return {ARCH_KEY: type(module).__name__}
    return {ARCH_KEY: arch.name, CONFIG_KEY: json.dumps(arch.config_of(module), sort_keys=True)}


def build_module(metadata: Mapping[str, str]) -> nn.Module:
    """A fresh module of the architecture ``metadata`` names (weights still to be loaded)."""
    name = metadata.get(ARCH_KEY)
    if not name:
        raise ConfigError("the checkpoint does not say which architecture it holds")
    arch = _known().get(name)
    if arch is None:
        raise ConfigError(
            f"the checkpoint holds a {name!r}, which is not a registered architecture: pass the "
            f"module yourself, or register it with forseti.export.register_architecture()"
        )
    try:
        config = json.loads(metadata[CONFIG_KEY])
    except (KeyError, ValueError):
        raise IntegrityError(f"the checkpoint's {CONFIG_KEY} is missing or not JSON") from None
    if not isinstance(config, dict):
        raise IntegrityError(f"the checkpoint's {CONFIG_KEY} is not a JSON object")
    return arch.build(config)
