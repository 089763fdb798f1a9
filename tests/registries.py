"""Throwaway in-memory registries for tests, closed after each test by ``conftest.py``."""

from __future__ import annotations

from typing import Any

import forseti as fs

_OPENED: list[fs.EntityRegistry] = []


def memory(**kwargs: Any) -> fs.EntityRegistry:
    """A throwaway in-memory registry, closed after the test (its writer thread stops)."""
    registry = fs.open("memory://", **kwargs)
    _OPENED.append(registry)
    return registry


def close_opened() -> None:
    """Close every registry :func:`memory` opened."""
    while _OPENED:
        _OPENED.pop().close()
