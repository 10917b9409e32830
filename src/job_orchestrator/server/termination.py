"""Terminate: cancel a queued job, or lock a dispatched one and kill its payload.

The replica answering the request finishes the termination itself (it owns the job from the
lock on), except for a dispatch in flight: its sender alone learns the payload's id, sees
Locked and kills what it created. The outcome is said in the engine's words
(`Termination`); the route maps them to the original's HTTP codes.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from job_orchestrator.errors import (
    ClientCallError,
    ClientLeftError,
    OutOfDescriptorsError,
    PayloadLostError,
    PermanentClientError,
)
from job_orchestrator.server import lifecycle
from job_orchestrator.server.collection import JobCollector
from job_orchestrator.server.job_tasks import JobTasks
from job_orchestrator.server.metrics import ServerMetrics
from job_orchestrator.server.node_client import NodeClient
from job_orchestrator.server.nodes import Fleet
from job_orchestrator.server.storage import JobRecord, Store
from job_orchestrator.status import TERMINAL, Status

logger = logging.getLogger(__name__)


class Termination(enum.Enum):
    """How a /terminate ended, in the engine's words; the route maps each to HTTP."""

    DONE = "terminated"  # killed, cancelled, or locked for the dispatch in flight to kill
    ALREADY_FINAL = "already final"
    NOT_TERMINABLE = "not terminable"  # a status this server never writes (Unknown)
    KILL_FAILED = "kill failed"  # the client could not be asked; the job runs on
    OUT_OF_DESCRIPTORS = "out of descriptors"  # this server's shortage; retry later


@dataclass(frozen=True, slots=True)
class TerminateOutcome:
    result: Termination
    status: Status
    message: str


class Terminator:
    def __init__(
        self,
        store: Store,
        fleet: Fleet,
        collector: JobCollector,
        metrics: ServerMetrics,
        tasks: JobTasks,
        replica_id: str,
        wake_dispatch: Callable[[], None],
    ) -> None:
        self._store = store
        self._fleet = fleet
        self._collector = collector
        self._metrics = metrics
        self._tasks = tasks
        self._replica_id = replica_id
        self._wake_dispatch = wake_dispatch

    async def terminate(self, job_id: int) -> TerminateOutcome | None:
        """End the job as a user asked; None: there is no such job."""
        while True:
            job = await self._store.get_job(job_id)
            if job is None:
                return None
            if job.status in TERMINAL:
                return TerminateOutcome(
                    Termination.ALREADY_FINAL,
                    job.status,
                    f"Job {job_id} already finished with status {job.status.wire}",
                )
            if job.status is Status.QUEUED:
                if await lifecycle.kill_queued(self._store, job_id):
                    self._metrics.job_finished(job, Status.KILLED)
                    return TerminateOutcome(Termination.DONE, Status.KILLED, "job terminated")
                continue
            if job.status is Status.LOCKED:
                return TerminateOutcome(Termination.DONE, Status.LOCKED, "job terminated")
            if not lifecycle.may_lock(job.status):
                # Unknown: a stored status this server never writes; nothing to kill known.
                return TerminateOutcome(
                    Termination.NOT_TERMINABLE,
                    job.status,
                    f"Job {job_id} cannot be terminated from {job.status.wire}",
                )
            # The replica answering the request finishes the termination, so it owns the job
            # now; a dispatch in flight stays its sender's, who alone learns the payload id.
            owner = None if job.status is Status.PROCESSING else self._replica_id
            if not await lifecycle.lock_for_kill(self._store, job, owner):
                continue
            if job.status is Status.PROCESSING:
                # The dispatch in flight sees Locked and kills the payload it creates.
                return TerminateOutcome(Termination.DONE, Status.LOCKED, "job terminated")
            self._tasks.terminating.add(job_id)
            try:
                locked = await self._store.get_job(job_id)
                assert locked is not None
                await self._tasks.cancel_and_wait(job_id)
                return await self.finish(locked, restore=job.status)
            finally:
                self._tasks.terminating.discard(job_id)

    async def finish(self, job: JobRecord, restore: Status | None = None) -> TerminateOutcome:
        """Kill the payload of a Locked job and end it Killed.

        `restore`: the status it was locked from, by a request waiting for the answer: if
        the client cannot be asked, the job goes back to it and is followed again. Without
        one (a restart resumed the termination), the kill waits for the client to answer
        again, and the job is reported Killed now.
        """
        try:
            client = self._fleet.client_for(job)
        except ClientLeftError as error:
            # Nothing may be asked about it (no other client holds it): it is given up.
            return await self._killed(job, None, f"job terminated; {error}")
        try:
            if client is None:
                raise PermanentClientError(f"service {job.service!r} is not configured")
            if job.dest_id:
                await client.kill(job.dest_id, key=job.dispatch_key)
        except PayloadLostError:
            pass  # nothing left to kill on the client
        except ClientCallError as error:
            logger.warning("could not terminate job %d: %s", job.id, error)
            if restore is None and client is not None and job.dest_id:
                await self._fleet.revoke(client.url, job)
            elif restore is not None and await lifecycle.unlock(self._store, job.id, restore):
                fresh = await self._store.get_job(job.id)
                if fresh is not None:
                    self._tasks.spawn(job.id, self._collector.collect(fresh))
                if isinstance(error, OutOfDescriptorsError):
                    return TerminateOutcome(
                        Termination.OUT_OF_DESCRIPTORS,
                        restore,
                        "could not terminate job; retry later",
                    )
                return TerminateOutcome(Termination.KILL_FAILED, restore, "could not terminate job")
        return await self._killed(job, client)

    async def _killed(
        self, job: JobRecord, client: NodeClient | None, message: str = "job terminated"
    ) -> TerminateOutcome:
        if await asyncio.shield(lifecycle.kill_locked(self._store, job.id, message)):
            self._metrics.job_finished(job, Status.KILLED)
        self._wake_dispatch()
        if client is not None and job.dest_id:
            await self._collector.keep_partial(job, client)
        return TerminateOutcome(Termination.DONE, Status.KILLED, "job terminated")
