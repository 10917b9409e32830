"""Jobs in flight that nobody follows: resumed at start, taken over from replicas whose lease
ran out, and re-driven when their task died (rq's StartedJobRegistry.cleanup, per replica).

Whatever the path, a job is followed again by the step its status calls for: Processing is
queued again with its dispatch key (a client that already has the payload answers it instead
of running it twice), Locked finishes its termination, the others are collected.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

from job_orchestrator._loops import wait_any
from job_orchestrator.clock import Clock
from job_orchestrator.errors import StoreError, StoreUnavailableError
from job_orchestrator.server import lifecycle
from job_orchestrator.server.collection import JobCollector, job_fields
from job_orchestrator.server.job_tasks import JobTasks
from job_orchestrator.server.replicas import ReplicaLease
from job_orchestrator.server.storage import JobRecord, Store
from job_orchestrator.server.termination import Terminator
from job_orchestrator.status import ON_CLIENT, Status

logger = logging.getLogger(__name__)

#: The statuses of a job whose work is in flight, owned by one replica under its lease.
IN_FLIGHT = (Status.PROCESSING, *ON_CLIENT, Status.LOCKED)


class Recovery:
    def __init__(
        self,
        store: Store,
        lease: ReplicaLease,
        tasks: JobTasks,
        collector: JobCollector,
        terminator: Terminator,
        wake_dispatch: Callable[[], None],
        clock: Clock,
    ) -> None:
        self._store = store
        self._lease = lease
        self._tasks = tasks
        self._collector = collector
        self._terminator = terminator
        self._wake_dispatch = wake_dispatch
        self._clock = clock
        #: Jobs the last reaper pass found without a task, as it saw them.
        self._unowned: dict[int, JobRecord] = {}

    async def recover(self) -> None:
        """Resume after a restart: nothing in flight is lost or sent twice.

        Takes the jobs this replica owned before (same REPLICA_ID) and those nobody can be
        following (no owner, or a replica that stopped cleanly); jobs of replicas that died
        are taken over by the reaper once their lease runs out.
        """
        # Alone on its database (SQLite), every job in flight is this process's to resume,
        # whatever REPLICA_ID (a port) it ran under before.
        alive_since = 0.0 if self._store.shared else math.inf
        replica = self._lease.replica_id
        self._redrive(await self._store.take_over(replica, IN_FLIGHT, alive_since, own=True))

    async def resume_after_lapse(self) -> None:
        logger.warning(
            "the lease of replica %s lapsed; resuming only the jobs it still owns",
            self._lease.replica_id,
        )
        await self._tasks.cancel_all()
        replica = self._lease.replica_id
        self._redrive(await self._store.take_over(replica, IN_FLIGHT, 0.0, own=True))

    async def reaper_loop(self, stop: asyncio.Event, tick_s: float) -> None:
        while not stop.is_set():
            try:
                await self.reap_once()
            except StoreUnavailableError as error:
                logger.warning("reaping waits for the database: %s", error)
            except StoreError:
                logger.exception("reaping failed")
            await wait_any(stop.wait(), timeout_s=tick_s)

    async def reap_once(self) -> list[int]:
        """Take over the jobs of replicas whose lease ran out, and re-drive every job of this
        replica in a non-final, non-Queued status that has no live task.

        A job counts as unowned only if two passes in a row found it so, unchanged: a job
        just claimed gets its task a moment after its row changes, and a terminate may be
        finishing it in a request of its own.
        """
        now = self._clock.now()
        if self._lease.may_take_over(now):
            taken = await self._store.take_over(
                self._lease.replica_id, IN_FLIGHT, now - self._lease.lease_s, own=False
            )
            for job in taken:
                logger.warning(
                    "taking job %d (%s) over: its replica's lease ran out",
                    job.id,
                    job.status.wire,
                    extra=job_fields(job),
                )
            self._redrive(taken)
        # Ids first: with thousands of jobs running, nearly every one has its task.
        without_task = [
            job_id
            for job_id in await self._store.owned_job_ids(IN_FLIGHT, self._lease.replica_id)
            if job_id not in self._tasks and job_id not in self._tasks.terminating
        ]
        found = {
            record.id: record
            for job_id in without_task
            if (record := await self._store.get_job(job_id)) is not None
            and record.status in IN_FLIGHT
            and record.owner == self._lease.replica_id
        }
        previous, self._unowned = self._unowned, found
        reaped = []
        for job_id, job in list(found.items()):
            if previous.get(job_id) != job or job_id in self._tasks:
                continue
            logger.warning("job %d (%s) has no live task; re-driving it", job_id, job.status.wire)
            del self._unowned[job_id]
            reaped.append(job_id)
            self._redrive([job])
        return reaped

    def _redrive(self, jobs: list[JobRecord]) -> None:
        """Follow jobs this replica has just become the owner of, with no task of its own."""
        for job in jobs:
            if job.status is Status.PROCESSING:
                # Its dispatch may or may not have reached the client: queue it again with
                # its dispatch key, so a client that already has the payload returns it.
                self._tasks.spawn(job.id, self._requeue(job))
            elif job.status is Status.LOCKED:
                self._tasks.spawn(job.id, self._terminator.finish(job))
            else:
                self._tasks.spawn(job.id, self._collector.collect(job))

    async def _requeue(self, job: JobRecord) -> None:
        await lifecycle.requeue(self._store, job.id)
        self._wake_dispatch()
