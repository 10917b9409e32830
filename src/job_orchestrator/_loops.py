"""Helpers for background loops: wait on several things at once, back off with jitter, drop a
task no longer wanted."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any


async def wait_any(*awaitables: Coroutine[Any, Any, Any], timeout_s: float | None = None) -> None:
    """Return when the first awaitable finishes (or the timeout passes); cancel the rest."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def forget(task: asyncio.Future[Any]) -> None:
    """Cancel a task no longer wanted (a no-op once done) and mark its outcome seen: asyncio
    would log an exception that nobody retrieved."""
    task.cancel()
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


def backoff_s(attempt: int, *, base_s: float = 0.5, cap_s: float = 60.0) -> float:
    """Capped exponential backoff with full jitter (attempt counts from 1)."""
    ceiling = min(cap_s, base_s * (2 ** max(0, attempt - 1)))
    return random.uniform(ceiling / 2, ceiling)


class Wakeup:
    """A level-triggered wake-up: `set()` any number of times, `wait()` consumes it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event.clear()
