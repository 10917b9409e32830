"""Retention on the client: remove payloads whose outcome the server has had long enough, and
orphan directories.

A final payload is removed MAX_AGE after its outcome was collected (a /retrieve answered its
final status), but not before COLLECTED_KEEP_S (the server's follow-up calls come right after
the final status); a killed one (the server gave it up) counts from its end; one never
collected is kept at least UNCOLLECTED_KEEP_S after its end, so a server that was away still
finds its result. One stopped for disk space (disk.py) goes COLLECTED_KEEP_S after its
collection, whatever MAX_AGE says. A removed payload leaves the registry; its id answers
Cleaned from then on (registry.py `lookup`). A directory no payload holds, older than
MAX_AGE, is an orphan and goes too, unless a /submit is still writing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Set

from job_orchestrator._fs import remove_tree
from job_orchestrator._loops import wait_any
from job_orchestrator.client.archives import Archiver
from job_orchestrator.client.payload import Payload
from job_orchestrator.client.registry import Registry
from job_orchestrator.config import ClientSettings

logger = logging.getLogger(__name__)

#: A result no server has collected yet is kept at least this long whatever MAX_AGE says: a
#: server retries an unreachable client for RETRY_DEADLINE (6 h by default) before it gives up.
UNCOLLECTED_KEEP_S = 6 * 3600.0
#: ... and a collected one at least this long: the server's follow-up calls (the copy of a
#: failed job's files) come right after the final status.
COLLECTED_KEEP_S = 5.0


class Cleaner:
    def __init__(
        self,
        settings: ClientSettings,
        registry: Registry,
        archiver: Archiver,
        receiving: Set[str],
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.archiver = archiver
        #: Payload directories a /submit is still writing: never orphans.
        self.receiving = receiving

    async def cleaner_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.clean_once()
            except OSError:
                logger.exception("cleaning failed")
            await wait_any(stop.wait(), timeout_s=self.settings.cleaner_interval_s)

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
            if self.archiver.building_partial(payload.id):
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
