"""An executor in process, for the client's Runner in the engine tier: a real implementation
of the `Executor` protocol that runs nothing. Each launched payload's execution ends when the
test says (`end`) or when it is terminated (as a process killed by SIGTERM: status -15)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from job_orchestrator.client.executors.base import Handle, Outcome
from job_orchestrator.client.payload import Payload
from job_orchestrator.clock import Clock


class FakeExecutor:
    kind = "fake"
    runs_at_launch = True
    log_is_local = True

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._ends: dict[int, asyncio.Future[Outcome]] = {}
        #: (payload id, when) of each launch and of each terminate, on the clock.
        self.launched: list[tuple[int, float]] = []
        self.terminated: list[tuple[int, float]] = []

    def running(self) -> set[int]:
        return {payload_id for payload_id, end in self._ends.items() if not end.done()}

    def end(self, payload_id: int, exit_code: int = 0) -> None:
        end = self._ends[payload_id]
        if not end.done():
            end.set_result(Outcome(exit_code))

    async def launch(self, payload: Payload) -> Handle:
        self.launched.append((payload.id, self._clock.now()))
        self._ends[payload.id] = asyncio.get_running_loop().create_future()
        return Handle(self.kind, payload.id, started_at=self._clock.now())

    async def started(self, handle: Handle) -> float:
        return handle.started_at or self._clock.now()

    async def wait(self, payload: Payload, handle: Handle) -> Outcome:
        return await asyncio.shield(self._ends[handle.id])

    async def terminate(self, handle: Handle, grace_s: float) -> None:
        self.terminated.append((handle.id, self._clock.now()))
        self.end(handle.id, exit_code=-15)

    def find_launched(self, payload: Payload) -> Handle | None:
        return None

    def reattach(self, payload: Payload, handle: Handle) -> bool:
        return handle.id in self.running()

    def abandon(self, handle: Handle) -> None:
        self.end(handle.id, exit_code=-9)

    async def remove_strays(self, keep: Collection[int]) -> None:
        return None

    async def load_percent(self) -> float:
        return 0.0

    async def capacity(self, running: int, pending: int) -> int | None:
        return None

    async def close(self) -> None:
        return None
