"""The spawned-worker harness itself: a worker that dies fails the test at once, not at a timeout."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from processes import run_processes


def _crash(barrier: Any, results: Any) -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def _report(value: int, barrier: Any, results: Any) -> None:
    barrier.wait(60)
    results.put(value)


def test_a_worker_that_dies_fails_the_run_at_once_with_its_exit_code() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"died before reporting: exit codes \[-11"):
        run_processes(_crash, [(), ()], wait=120)
    assert time.monotonic() - started < 60  # long before the 240 s a hang would take


def test_every_worker_reports_once() -> None:
    assert sorted(run_processes(_report, [(1,), (2,), (3,)], wait=60)) == [1, 2, 3]
