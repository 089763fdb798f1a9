"""The bridge between SB3's training loop and Forseti: its logger and callback hooks → events.

* :class:`MetricsWriter` is an SB3 logger output: every time SB3 dumps its log (each rollout for
  PPO/A2C, every few episodes for SAC/TD3/DQN) it publishes one :class:`RLStepMetrics`;
* :class:`Bridge` is an SB3 callback: at each rollout boundary (after an update, before the next
  rollout, the one point where the model is consistent) it asks the run to checkpoint or
  evaluate when due, and it ends training when a handler asked the run to stop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter

from ..progress import Advance

__all__ = ["MetricsWriter", "Bridge", "metrics_of"]

_NO_METRICS: dict[str, float] = {}


def metrics_of(key_values: dict[str, Any]) -> dict[str, float]:
    """SB3's logged values as floats, without their ``rollout/``, ``train/``, ``time/`` prefixes
    (a name stays whole when two would clash); ``entropy`` is added for PPO's ``entropy_loss``."""
    out: dict[str, float] = {}
    for key, value in key_values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)  # numpy scalars
            except (TypeError, ValueError):
                continue
        short = key.rsplit("/", 1)[-1]
        out[key if short in out else short] = float(value)
    if "entropy_loss" in out and "entropy" not in out:
        out["entropy"] = -out["entropy_loss"]
    return {k: v for k, v in out.items() if math.isfinite(v) or k.endswith("loss")}


class MetricsWriter(KVWriter):
    """An SB3 log output that hands each dump to ``emit(timestep, metrics)``."""

    def __init__(self, emit: Callable[[int, dict[str, float]], None]) -> None:
        self.emit = emit

    def write(
        self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0
    ) -> None:
        self.emit(int(step), metrics_of(key_values))

    def close(self) -> None:
        return None


class Bridge(BaseCallback):
    """SB3 callback: ``boundary()`` at each rollout boundary, ``advance(n, {})`` for the
    progress bar, and training stops when ``should_stop()`` says so."""

    def __init__(
        self,
        boundary: Callable[[], None],
        should_stop: Callable[[], bool],
        advance: Advance,
    ) -> None:
        super().__init__(verbose=0)
        self._boundary = boundary
        self._should_stop = should_stop
        self._advance = advance
        self._seen = 0
        self._first = True

    def _on_training_start(self) -> None:
        self._seen = self.model.num_timesteps

    def _on_rollout_start(self) -> None:
        if self._first:  # the state at the start is the resumed (or initial) one
            self._first = False
            return
        self._boundary()

    def _on_step(self) -> bool:
        now = self.model.num_timesteps
        if now > self._seen:
            self._advance(now - self._seen, _NO_METRICS)
            self._seen = now
        return not self._should_stop()
