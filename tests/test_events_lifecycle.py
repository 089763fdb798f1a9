"""Lifecycle edges of the bus and the event log: finished loops, unclosed registries, exit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import forseti as fs


class Tick(fs.Event, frozen=True):
    topic = "tests.lifecycle.Tick"
    n: int


def test_a_finished_event_loop_is_not_kept_by_the_bus() -> None:
    bus = fs.EventBus()
    seen: list[int] = []

    async def handler(e: Tick) -> None:
        seen.append(e.n)

    bus.subscribe(Tick, handler)

    async def run(n: int) -> None:
        await bus.apublish(Tick(n=n))
        await bus.drain()

    for n in range(5):
        asyncio.run(run(n))
    assert seen == [0, 1, 2, 3, 4]
    assert len(bus._dispatchers) == 0  # every loop's dispatcher left with its loop
    bus.close()


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_buffered_events_are_written_when_the_process_exits_without_close(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    writer = _run(
        f"""
        import forseti as fs

        class Tick(fs.Event, frozen=True):
            topic = "tests.lifecycle.Tick"
            n: int

        reg = fs.open({url!r}, blob_dir={str(tmp_path / 'b')!r})
        for n in range(10):
            reg.bus.publish(Tick(n=n))
        # no reg.close(): the interpreter exits with the events still buffered
        """,
        tmp_path,
    )
    assert writer.returncode == 0, writer.stderr
    with fs.open(url, blob_dir=tmp_path / "b") as reg:
        assert [s.event.n for s in reg.events(topic=Tick)] == list(range(10))


def test_an_unclosed_bus_with_async_handlers_lets_the_process_exit(tmp_path: Path) -> None:
    done = _run(
        """
        import forseti as fs

        class Tick(fs.Event, frozen=True):
            topic = "tests.lifecycle.Tick"
            n: int

        bus = fs.EventBus()
        seen = []

        async def handler(e):
            seen.append(e.n)

        bus.subscribe(Tick, handler)
        for n in range(3):
            bus.publish(Tick(n=n))  # async handlers run on the bus's loop thread
        assert seen == [0, 1, 2]
        print("ok")
        # the bus is never closed
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
