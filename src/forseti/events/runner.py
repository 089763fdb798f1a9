"""Running async handlers from synchronous code, whatever thread or loop the caller is in."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

__all__ = ["AsyncRunner"]

T = TypeVar("T")


class AsyncRunner:
    """Runs coroutine functions to completion from sync code on a private event-loop thread.

    The caller may itself be inside a running loop (a notebook), or even on the runner's own loop
    thread (a sync ``publish`` from inside an async handler); in that last case the coroutine runs
    on a short-lived helper thread instead, since a loop cannot block on itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``await fn()`` and return its result (or raise its exception)."""
        portal = self._portal or self._start()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running is self._loop:
            with ThreadPoolExecutor(1, thread_name_prefix="forseti-nested-handler") as pool:
                return pool.submit(asyncio.run, _call(fn)).result()
        return portal.call(fn)  # type: ignore[arg-type]

    def _start(self) -> BlockingPortal:
        with self._lock:
            if self._portal is None:
                self._cm = start_blocking_portal()
                portal = self._cm.__enter__()
                self._loop = portal.call(_current_loop)
                self._portal = portal
            return self._portal

    def close(self) -> None:
        """Stop the loop thread (idempotent)."""
        with self._lock:
            cm, self._cm, self._portal, self._loop = self._cm, None, None, None
        if cm is not None:
            cm.__exit__(None, None, None)


async def _current_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


async def _call(fn: Callable[[], Awaitable[Any]]) -> Any:
    return await fn()
