"""Running async handlers from synchronous code, whatever thread or loop the caller is in."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

__all__ = ["AsyncRunner"]

T = TypeVar("T")


class AsyncRunner:
    """Runs coroutine functions to completion from sync code on a private event-loop thread.

    The loop runs on a daemon thread, so an unclosed runner never holds up interpreter exit.
    The caller may itself be inside a running loop (a notebook), or even on the runner's own loop
    thread (a sync ``publish`` from inside an async handler); in that last case the coroutine runs
    on a short-lived helper thread instead, since a loop cannot block on itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``await fn()`` and return its result (or raise its exception).

        The coroutine sees the caller's context variables (causation links, the active registry).
        """
        loop = self._loop or self._start()
        context = contextvars.copy_context()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            with ThreadPoolExecutor(1, thread_name_prefix="forseti-nested-handler") as pool:
                return cast(T, pool.submit(asyncio.run, _call(fn, context)).result())
        return cast(T, asyncio.run_coroutine_threadsafe(_call(fn, context), loop).result())

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="forseti-async-handlers", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def close(self) -> None:
        """Stop the loop thread (idempotent)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()


async def _call(fn: Callable[[], Awaitable[Any]], context: contextvars.Context) -> Any:
    for var, value in context.items():  # this task's own context: the caller's is untouched
        var.set(value)
    return await fn()
