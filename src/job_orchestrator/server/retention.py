"""Retention: remove the files of jobs finished more than MAX_AGE ago, and orphan directories.

Safe to run on every replica at once (no lock needed): removing a directory twice removes it
once (a missing one is ignored), `Cleaned` is a compare-and-set, and an upload in progress on
any replica holds a lock on its staging directory (see uploads.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from job_orchestrator._fs import remove_tree
from job_orchestrator._loops import wait_any
from job_orchestrator.clock import SYSTEM_CLOCK, Clock
from job_orchestrator.config import ServerSettings
from job_orchestrator.errors import StoreError
from job_orchestrator.server import lifecycle
from job_orchestrator.server.storage import Store
from job_orchestrator.server.uploads import UploadLimits, is_staging, remove_abandoned

logger = logging.getLogger(__name__)


class Cleaner:
    def __init__(
        self,
        settings: ServerSettings,
        store: Store,
        uploads: UploadLimits,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.store = store
        self.uploads = uploads

    async def cleaner_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.clean_once()
            except (StoreError, OSError):
                logger.exception("cleaning failed")
            await wait_any(stop.wait(), timeout_s=self.settings.cleaner_interval_s)

    async def clean_once(self) -> int:
        """Remove jobs that finished more than MAX_AGE ago, and orphan directories as old."""
        cutoff = self.clock.now() - self.settings.max_age_s
        cleaned = 0
        for job in await self.store.finished_before(cutoff):
            await asyncio.to_thread(remove_tree, job.loc)
            if await lifecycle.clean(self.store, job):
                cleaned += 1
        cleaned += await self._clean_orphans(cutoff)
        return cleaned

    async def _clean_orphans(self, cutoff: float) -> int:
        data_path = self.settings.data_path
        # Uploads in progress are never orphans; those whose upload died go at once.
        abandoned = await asyncio.to_thread(remove_abandoned, data_path, self.uploads.live)
        with contextlib.suppress(FileNotFoundError):
            old = {
                str(entry): entry
                for entry in data_path.iterdir()
                if entry.is_dir()
                and not entry.is_symlink()
                and not is_staging(entry.name)
                and entry.stat().st_mtime < cutoff
            }
            orphans = set(old) - await self.store.known_locs(list(old))
            for loc in orphans:
                logger.info("removing orphan directory %s", loc)
                await asyncio.to_thread(remove_tree, old[loc])
            return abandoned + len(orphans)
        return abandoned
