"""Waiting for something the system under test does on its own time.

`eventually` is the one polling loop of the tests and the benchmarks: it calls a predicate
until the predicate returns a truthy value, which it hands back, and fails with what it
waited for (and the last value seen) once the deadline passes. `eventually_async` is the same
for a coroutine predicate, polled without blocking the event loop of an in-process test.
The deadline is a safety net, never a measurement: no test asserts how long a wait took.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Between two calls of the predicate: short, since most waits end within a few calls.
POLL_S = 0.05


def eventually(
    predicate: Callable[[], T | None],
    what: str,
    timeout_s: float = 60.0,
    *,
    poll_s: float = POLL_S,
    retry_on: tuple[type[BaseException], ...] = (),
    detail: Callable[[], object] | None = None,
) -> T:
    """`predicate()`'s first truthy value; AssertionError naming `what` after `timeout_s`.

    `retry_on`: exceptions that mean "not yet", such as `httpx.TransportError` while a
    process starts; the last one is shown if time runs out. `detail`: what else to show
    then, such as a process's log.
    """
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = predicate()
        except retry_on as error:
            last = error
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout_s:g} s waiting for {what}; last: {last!r}"
            if detail is not None:
                message += f"\n{detail()}"
            raise AssertionError(message)
        time.sleep(poll_s)


async def eventually_async(
    predicate: Callable[[], Awaitable[T | None]],
    what: str,
    timeout_s: float = 60.0,
    *,
    poll_s: float = POLL_S,
    detail: Callable[[], object] | None = None,
) -> T:
    """`eventually` for a coroutine predicate: `await predicate()` until it is truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout_s:g} s waiting for {what}; last: {value!r}"
            if detail is not None:
                message += f"\n{detail()}"
            raise AssertionError(message)
        await asyncio.sleep(poll_s)
