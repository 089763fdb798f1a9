"""Running test workers in spawned OS processes that meet only through the store."""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections.abc import Callable
from typing import Any


def run_processes(
    target: Callable[..., None], args: list[tuple[Any, ...]], wait: float
) -> list[Any]:
    """Start one spawned process per ``args``; each gets ``(*args, barrier, results)``.

    Every worker puts one outcome on ``results``; they come back in arrival order. A worker that
    dies before reporting (a crash, a signal) fails the test at once, with its exit code; one that
    is still running after ``2 * wait`` seconds fails it as a hang. Every worker must exit 0.
    """
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(args))
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, barrier, results)) for a in args]
    for p in procs:
        p.start()
    outcomes: list[Any] = []
    deadline = time.monotonic() + wait * 2
    try:
        while len(outcomes) < len(procs):
            try:
                outcomes.append(results.get(timeout=1.0))
            except queue.Empty:  # nothing for a second: has a worker died, or is time up?
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                assert not dead, f"worker process(es) died before reporting: exit codes {dead}"
                assert time.monotonic() < deadline, (
                    f"{len(procs) - len(outcomes)} worker process(es) still running after "
                    f"{wait * 2} s (deadlock?)"
                )
    finally:
        for p in procs:
            p.join(wait)
            if p.is_alive():  # pragma: no cover - only on a hang
                p.kill()
    assert [p.exitcode for p in procs] == [0] * len(procs)
    return outcomes
