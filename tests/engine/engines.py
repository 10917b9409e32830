"""The engine tier's building blocks: the real Orchestrator on an in-memory Store, driving
in-process nodes (fake_nodes.py), on the clock of the running event loop.

The tests run on looptime's virtual-time loop (`pytestmark = pytest.mark.looptime`): when
nothing is ready the loop's clock jumps to the next timer, and `LoopClock` moves the engine's
stored timestamps with it, so a lease of 35 s or a backoff of a minute passes in
microseconds and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

from job_orchestrator.config import ServerSettings, load_server_settings
from job_orchestrator.server.dispatcher import Orchestrator
from job_orchestrator.server.storage import JobRecord, MemoryDatabase, MemoryStore
from job_orchestrator.status import TERMINAL
from testkit.clock import LoopClock
from tests.engine.fake_nodes import FakeNode, FakeNodes, Script, completes

#: Never contacted: the fake nodes answer in process.
NODE_URLS = ("http://127.0.0.1:1", "http://127.0.0.1:2")
RUN_SH = b"echo hello > output.txt\n"


@dataclasses.dataclass
class Engine:
    orchestrator: Orchestrator
    store: MemoryStore
    nodes: FakeNodes
    settings: ServerSettings
    clock: LoopClock

    @property
    def node_a(self) -> FakeNode:
        return self.nodes[self.settings.services["example"].nodes[0].upload_url]

    @property
    def node_b(self) -> FakeNode:
        return self.nodes[self.settings.services["example"].nodes[1].upload_url]

    async def upload(self, user_id: int = 1, callback_url: str | None = None) -> int:
        loc = self.settings.data_path / str(uuid.uuid4())
        (loc / "input").mkdir(parents=True)
        (loc / "input" / "run.sh").write_bytes(RUN_SH)
        job_id = await self.store.create_job(
            user_id=user_id, service="example", loc=str(loc), callback_url=callback_url
        )
        self.orchestrator.wake_dispatch()
        return job_id

    async def final(self, job_id: int, timeout_s: float = 20) -> JobRecord:
        await self.orchestrator.wait_final(job_id, timeout_s=timeout_s)
        job = await self.store.get_job(job_id)
        assert job is not None
        assert job.status in TERMINAL, job
        return job

    async def job(self, job_id: int) -> JobRecord:
        job = await self.store.get_job(job_id)
        assert job is not None
        return job


def engine_settings(tmp_path: Path, **env: str) -> ServerSettings:
    settings = load_server_settings(
        {
            "DB_PATH": str(tmp_path / "unused.db"),
            "DATA_PATH": str(tmp_path / "data"),
            "SERVICE_EXAMPLE_CLIENTS": ",".join(NODE_URLS),
            **env,
        }
    )
    # The loops' safety tick (a missed wake-up, the reaper) at a second of loop time, which
    # costs nothing on the virtual-time loop, where a shorter one would only spin the CPU
    # through the minutes of loop time a lease or deadline test plays out.
    return dataclasses.replace(settings, safety_tick_s=1.0)


class running:
    """An Orchestrator over `store` and two fake nodes running `script`, started on enter,
    stopped on exit. Several share one `nodes` and one `database` as replicas."""

    def __init__(
        self,
        tmp_path: Path,
        store: MemoryStore | None = None,
        *,
        script: Script | None = completes,
        nodes: FakeNodes | None = None,
        database: MemoryDatabase | None = None,
        clock: LoopClock | None = None,
        **env: str,
    ) -> None:
        self.clock = clock or LoopClock()
        self.settings = engine_settings(tmp_path, **env)
        if store is None:
            store = MemoryStore(database, clock=self.clock)
        self.store = store
        self.nodes = nodes or FakeNodes(
            *(
                FakeNode(node.upload_url, script=script, clock=self.clock)
                for node in self.settings.services["example"].nodes
            )
        )

    async def __aenter__(self) -> Engine:
        self.orchestrator = Orchestrator(self.settings, self.store, self.nodes, clock=self.clock)
        await self.orchestrator.start()
        return Engine(self.orchestrator, self.store, self.nodes, self.settings, self.clock)

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        await self.orchestrator.stop()
        await self.store.close()


def payloads(engine: Engine) -> int:
    return sum(len(node.payloads) for node in engine.nodes.nodes.values())


async def until(
    condition: Callable[[], Awaitable[bool]], *, within_s: float, step_s: float = 0.5
) -> float:
    """Let the engine run until `condition()` holds, looking every `step_s` of loop time;
    the loop time it took. On the virtual-time loop the steps cost no real time."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await condition():
        assert loop.time() - started < within_s, f"not within {within_s} s"
        await asyncio.sleep(step_s)
    return loop.time() - started


async def let_time_pass(seconds: float) -> None:
    """Let `seconds` of loop time pass with nothing to wait for (on the virtual-time loop,
    at no real cost): for what must *not* happen within a span."""
    await asyncio.sleep(seconds)
