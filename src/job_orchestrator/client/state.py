"""The client's state for one process: its registry, runner and loops (retention, disk).

One process owns a client's DATA_PATH (its registry lives in memory). The lifespan (app.py)
makes one `ClientState` and keeps it on the application; the routes (routes.py, logs.py)
reach it through `client_state(request)`, the one typed way to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import Request

from job_orchestrator.client.archives import sweep_temporaries
from job_orchestrator.client.disk import DiskWatcher
from job_orchestrator.client.metrics import ClientMetrics
from job_orchestrator.client.registry import Registry
from job_orchestrator.client.retention import Cleaner
from job_orchestrator.client.runner import Runner
from job_orchestrator.config import ClientSettings
from job_orchestrator.exposure import client_warnings

logger = logging.getLogger(__name__)


class ClientState:
    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        #: What the client printed at start; /health passes them on to the server's /status.
        self.warnings = client_warnings(settings)
        self.registry = Registry(settings.data_path)
        self.metrics = ClientMetrics(self.registry)
        self.runner = Runner(settings, self.registry, self.metrics)
        self.disk = DiskWatcher(settings, self.registry, self.runner.stop_for_disk, self.metrics)
        self._stop = asyncio.Event()
        #: Set as soon as a stop signal arrives: long-polls answer at once.
        self.draining = asyncio.Event()
        #: Payload directories a /submit is still writing: never orphans (one process owns
        #: a client's DATA_PATH, since its registry lives in memory).
        self.receiving: set[str] = set()
        self.cleaner = Cleaner(settings, self.registry, self.runner.archiver, self.receiving)
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await asyncio.to_thread(sweep_temporaries, self.settings.data_path)
        await self.runner.resume(self.registry.rebuild())
        # Once before the first request: a client started on a full disk refuses at once.
        with contextlib.suppress(OSError):
            await self.disk.check_once()
        self._loops = [
            asyncio.create_task(self.cleaner.cleaner_loop(self._stop), name="cleaner_loop"),
            asyncio.create_task(self.disk.run(self._stop), name="disk_loop"),
        ]

    async def stop(self) -> None:
        self._stop.set()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.runner.stop()


def client_state(request: Request) -> ClientState:
    """The state the lifespan keeps on the application (app.py)."""
    state: ClientState = request.app.state.client
    return state
