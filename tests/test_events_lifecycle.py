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


def test_threads_using_new_event_types_at_once_do_not_crash_the_interpreter(
    tmp_path: Path,
) -> None:
    """The first use of an event type builds its msgspec decoder; threads doing that together for
    one class crashed the process (SIGSEGV inside msgspec) before decoders were built under a
    lock. Each round defines fresh types, so every round is a first use, from six threads at once
    (publishing checks a payload by decoding it, reading the log decodes it)."""
    done = _run(
        """
        import sys, threading
        from typing import Optional
        import msgspec
        import forseti as fs
        from forseti.events import decode_event

        sys.setswitchinterval(1e-6)  # switch threads as often as possible
        reg = fs.open("memory://")
        THREADS = 6
        for k in range(300):
            Ref = msgspec.defstruct(
                f"Ref{k}", [("x", int), ("y", "Optional[str]", None)], frozen=True,
                module=__name__,
            )
            Tick = type(f"Tick{k}", (fs.Event,), {
                "__annotations__": {"n": int, "ref": Optional[Ref], "tags": tuple[str, ...]},
                "__module__": __name__, "topic": f"tests.lifecycle.Tick{k}", "ref": None,
                "tags": (),
            }, frozen=True)
            start = threading.Barrier(THREADS)
            failures = []

            def work(i):
                try:
                    start.wait()
                    event = Tick(n=i, ref=Ref(x=i) if i % 2 else None, tags=("a",))
                    if i % 3 == 0:
                        payload = msgspec.msgpack.encode(event)
                        assert decode_event(Tick.topic, payload) == event
                    else:
                        reg.bus.publish(event)
                except BaseException as exc:
                    failures.append(repr(exc))

            threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert failures == [], failures
        reg.close()
        print("ok")
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
