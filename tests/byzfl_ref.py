"""ByzFL's aggregators and attacks, the reference of the consensus parity tests.

``import byzfl`` runs the package's ``__init__``, which imports its federated-learning framework
and benchmark (torchvision, matplotlib, seaborn): the Makefile installs byzfl without those
dependencies, because torchvision would replace the CPU torch with a CUDA build. This module puts
an empty ``byzfl`` package object in ``sys.modules`` pointing at the installed directory, so that
``byzfl.aggregators`` and ``byzfl.attacks`` import their real code (numpy, torch, scipy) without
the ``__init__``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

__all__ = ["aggregators", "attacks", "preaggregators"]


def _load(name: str) -> Any:
    if "byzfl" not in sys.modules:
        spec = importlib.util.find_spec("byzfl")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("byzfl is not installed: run `make venv` (it installs byzfl==0.0.11)")
        package = types.ModuleType("byzfl")
        package.__path__ = list(spec.submodule_search_locations)
        package.__file__ = str(Path(package.__path__[0]) / "__init__.py")
        sys.modules["byzfl"] = package
    return importlib.import_module(f"byzfl.{name}")


aggregators = _load("aggregators.aggregators")
preaggregators = _load("aggregators.preaggregators")
attacks = _load("attacks.attacks")
