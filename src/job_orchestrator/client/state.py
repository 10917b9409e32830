"""The client's state for one process: its registry, runner and loops (retention, disk).

One process owns a client's DATA_PATH (its registry lives in memory); the routes (app.py,
logs.py) reach this state through `client_state(request)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import Request

from job_orchestrator._fs import remove_tree
from job_orchestrator._loops import wait_any
from job_orchestrator.client.archives import sweep_temporaries
from job_orchestrator.client.disk import DiskWatcher
from job_orchestrator.client.metrics import ClientMetrics
from job_orchestrator.client.payload import Payload
from job_orchestrator.client.registry import Registry
from job_orchestrator.client.runner import Runner
from job_orchestrator.config import ClientSettings

logger = logging.getLogger(__name__)

#: A result no server has collected yet is kept at least this long whatever MAX_AGE says: a
#: server retries an unreachable client for RETRY_DEADLINE (6 h by default) before it gives up.
UNCOLLECTED_KEEP_S = 6 * 3600.0
#: ... and a collected one at least this long: the server's follow-up calls (the copy of a
#: failed job's files) come right after the final status.
COLLECTED_KEEP_S = 5.0


class ClientState:
    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
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
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await asyncio.to_thread(sweep_temporaries, self.settings.data_path)
        await self.runner.resume(self.registry.rebuild())
        # Once before the first request: a client started on a full disk refuses at once.
        with contextlib.suppress(OSError):
            await self.disk.check_once()
        self._loops = [
            asyncio.create_task(self._cleaner_loop(), name="cleaner_loop"),
            asyncio.create_task(self.disk.run(self._stop), name="disk_loop"),
        ]

    async def stop(self) -> None:
        self._stop.set()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.runner.stop()

    async def _cleaner_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.clean_once()
            except OSError:
                logger.exception("cleaning failed")
            await wait_any(self._stop.wait(), timeout_s=self.settings.cleaner_interval_s)

    async def release(self, payload: Payload) -> None:
        """Remove a final payload's directory; its id answers Cleaned from now on."""
        await asyncio.to_thread(remove_tree, payload.paths.root)
        self.registry.remove(payload.id)

    async def clean_once(self) -> int:
        """Remove payloads collected more than MAX_AGE ago (COLLECTED_KEEP_S ago for those
        stopped for disk space), and our orphan directories."""
        now = time.time()
        max_age_s = self.settings.max_age_s
        cutoff = now - max_age_s
        cleaned = 0
        expired = self.registry.cleanable(
            now - max(max_age_s, COLLECTED_KEEP_S), now - max(max_age_s, UNCOLLECTED_KEEP_S)
        )
        for payload in {
            payload.id: payload
            for payload in [*expired, *self.registry.released_early(now - COLLECTED_KEEP_S)]
        }.values():
            if self.runner.archiver.building_partial(payload.id):
                continue  # a copy of it is on its way to the server: released after it
            await self.release(payload)
            cleaned += 1
        self.registry.forget_abandoned()
        with contextlib.suppress(FileNotFoundError):
            for entry in self.settings.data_path.iterdir():
                if (
                    entry.name.isdigit()
                    and entry.name not in self.receiving
                    and entry.is_dir()
                    and not self.registry.holds(int(entry.name))
                    and entry.stat().st_mtime < cutoff
                ):
                    await asyncio.to_thread(remove_tree, entry)
                    cleaned += 1
        if cleaned:
            held = self.registry.count()
            logger.info(
                "retention: removed %d payload(s); %d left in the registry",
                cleaned,
                held,
                extra={"removed": cleaned, "registry_rows": held},
            )
        return cleaned


def client_state(request: Request) -> ClientState:
    state: ClientState = request.app.state.client
    return state
