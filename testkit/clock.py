"""A clock that follows the running event loop, for tests on a virtual-time loop.

Under looptime (`@pytest.mark.looptime`), the loop's time jumps to the next timer whenever
nothing is ready, so a 5 s lease or a 60 s backoff passes in microseconds. Handing the engine
this clock makes its stored timestamps move with those jumps: the deadlines it computes and
the timeouts it waits on stay in step, and no test sleeps.
"""

from __future__ import annotations

import asyncio
import time


class LoopClock:
    """Wall time that starts at the real time of the first reading, then advances as the
    running event loop's clock does (virtual under looptime, real otherwise)."""

    def __init__(self) -> None:
        self._origin: tuple[float, float] | None = None

    def now(self) -> float:
        loop_now = asyncio.get_running_loop().time()
        if self._origin is None:
            self._origin = (time.time(), loop_now)
        wall, loop_then = self._origin
        return wall + (loop_now - loop_then)

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()
