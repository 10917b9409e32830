"""Where the engine reads the time: one clock, handed to each part that needs it.

The engine's rules are written in wall-clock seconds (a job's dispatch time, a node's lease,
a callback's next attempt), stored in the rows. Reading them through one injected clock
instead of `time.time()` in each loop lets the engine tier run failover after a lease,
replica take-over and retry schedules on a virtual-time event loop, in milliseconds.
The loops' own waits are asyncio timeouts (the loop's clock), so a clock that follows the
running loop (testkit.clock.LoopClock) keeps the two in step.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch, as the job rows store them."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never set back: for spans within a process."""
        ...


class SystemClock:
    """The wall clock: what every deployment uses."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK: Clock = SystemClock()
