"""The server's own copy of a finished job's log, `<job dir>/output.log` (server/logs.py).

LogKeeper fetches it from the job's client in the background when this server sees the job
end, so the log outlives the client's retention; readers ask the client until it is there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Coroutine
from typing import Any

from job_orchestrator.config import NodeConfig, ServerSettings
from job_orchestrator.errors import (
    ClientCallError,
    ClientLeftError,
    PayloadLostError,
    PermanentClientError,
    StoreError,
)
from job_orchestrator.server.jobfiles import log_path, temporary_name
from job_orchestrator.server.node_calls import NodeCalls
from job_orchestrator.server.node_client import recorded_node
from job_orchestrator.server.storage import JobRecord, Store
from job_orchestrator.status import Status

logger = logging.getLogger(__name__)


def client_of(settings: ServerSettings, job: JobRecord) -> tuple[NodeConfig, str | None] | None:
    """The client a dispatched job is on (and its token), as the dispatcher chose it.

    None when there is none to ask: not dispatched, or its client is no longer configured
    (no other client is ever asked about it).
    """
    service = settings.services.get(job.service)
    if service is None or not job.dest_id:
        return None
    try:
        node = recorded_node(settings, job)
    except ClientLeftError:
        return None
    return (node, service.client_token) if node is not None else None


class LogKeeper:
    """Copies a job's log from its client to the server once the job is final.

    Registered as a Store final-status listener: the copy is made off the job's path, and
    readers fall back to the client until it is in place (it appears atomically, whole).

    The replica that moved the job copies it at once. The others (they share DATA_PATH) hear
    of it at the same moment and used to copy it too, each from the client; they now stand
    by for `standby_s` and copy only if no copy is there by then (its maker died first),
    while the client still keeps the payload.
    """

    def __init__(self, settings: ServerSettings, store: Store, gateway: NodeCalls) -> None:
        self.settings = settings
        self.store = store
        self.gateway = gateway
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def standby_s(self) -> float:
        """Longer than its maker's copy can take (`keep`'s deadline), and a margin."""
        return 2 * self.settings.long_poll_s + 5.0

    def job_final(self, job_id: int) -> None:
        self._spawn(self.keep(job_id), f"keep-log-{job_id}")

    def job_final_elsewhere(self, job_id: int) -> None:
        self._spawn(self._stand_by(job_id), f"stand-by-log-{job_id}")

    async def _stand_by(self, job_id: int) -> None:
        await asyncio.sleep(self.standby_s)
        await self.keep(job_id)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def keep(self, job_id: int) -> None:
        try:
            job = await self.store.get_job(job_id)
        except StoreError:
            logger.exception("could not read job %d to keep its log", job_id)
            return
        target = client_of(self.settings, job) if job is not None else None
        if job is None or target is None or job.status is Status.CLEANED:
            return
        node, token = target
        destination = log_path(job.loc)
        if destination.exists():
            return  # another replica sharing DATA_PATH kept it already
        # A name of its own: every replica hears of the final status and may copy at once.
        partial = temporary_name(destination)
        # A job killed by /terminate may still run its traps (the client's KILL_GRACE): the
        # client's answer then streams until the payload ends, within this deadline.
        deadline = time.monotonic() + 2 * self.settings.long_poll_s
        offset, final, cut = 0, False, False
        # A job writes its log unbounded: the server keeps at most this much of it.
        max_bytes = self.settings.log_keep_max_mb * 2**20 or None
        try:
            with partial.open("wb") as sink:
                while not final and (remaining := deadline - time.monotonic()) > 0:
                    async with self.gateway.open_log(
                        node,
                        job.dest_id,
                        offset=offset,
                        wait_s=min(self.settings.long_poll_s, remaining),
                        token=token,
                        key=job.dispatch_key,
                    ) as answer:
                        async for chunk in answer.chunks:
                            if max_bytes is not None and offset + len(chunk) > max_bytes:
                                await asyncio.to_thread(sink.write, chunk[: max_bytes - offset])
                                await asyncio.to_thread(sink.write, self._cut_note())
                                offset, cut = max_bytes, True
                                break
                            await asyncio.to_thread(sink.write, chunk)
                            offset += len(chunk)
                    final = answer.final or cut
            if final:
                os.replace(partial, destination)
                logger.info("kept the log of job %d (%d bytes)", job_id, offset)
            else:
                # Incomplete: readers go on asking the client, which still has the payload.
                logger.warning("log of job %d: its payload did not end in time", job_id)
        except (PayloadLostError, PermanentClientError) as error:
            # The original client (no /logs), or a payload already cleaned.
            logger.debug("no log to keep for job %d: %s", job_id, error)
        except (ClientCallError, OSError) as error:
            logger.warning("could not keep the log of job %d: %s", job_id, error)
        finally:
            partial.unlink(missing_ok=True)

    def _cut_note(self) -> bytes:
        limit = self.settings.log_keep_max_mb
        return (
            f"\n[job-orchestrator: log cut at {limit} MB (LOG_KEEP_MAX_MB); "
            "the rest was not kept]\n"
        ).encode()
