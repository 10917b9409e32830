"""The server's engine: dispatch queued jobs, collect outcomes, terminate, clean.

Dispatch is woken by an event (an upload, a job leaving its slot) with a slow fallback tick
as a safety net. Each job on a client has one collector task that long-polls the client for
its outcome (or polls, for clients without long-polling); collection.py does the
following and settling, this module owns the tasks. Every status change goes through
the Store's compare-and-set, so the loops, the API and a restart can never double-move a job.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from job_orchestrator._loops import Wakeup, backoff_s, wait_any
from job_orchestrator.clock import SYSTEM_CLOCK, Clock
from job_orchestrator.config import ServerSettings, ServiceConfig
from job_orchestrator.errors import (
    ClientCallError,
    ClientDiskFullError,
    ClientLeftError,
    ClientUnauthorizedError,
    OutOfDescriptorsError,
    PayloadLostError,
    PermanentClientError,
    StoreError,
    StoreUnavailableError,
    TransientClientError,
    UndeliveredError,
)
from job_orchestrator.server import lifecycle
from job_orchestrator.server.collection import JobCollector, job_fields
from job_orchestrator.server.jobfiles import input_dir
from job_orchestrator.server.metrics import ServerMetrics
from job_orchestrator.server.node_calls import NodeCalls
from job_orchestrator.server.nodes import Fleet, NodeClient
from job_orchestrator.server.replicas import ReplicaLease
from job_orchestrator.server.retention import Cleaner
from job_orchestrator.server.scheduler import Placement, ServiceLimits
from job_orchestrator.server.storage import JobRecord, ServerStore
from job_orchestrator.server.uploads import UploadLimits
from job_orchestrator.server.waiting import FinalWaiters, wait_final
from job_orchestrator.status import ON_CLIENT, TERMINAL, Status
from job_orchestrator.wire import REFUSING_DISK_FULL

logger = logging.getLogger(__name__)

#: How often a service with no usable client is logged as such.
NO_CLIENT_WARNING_EVERY_S = 60.0
#: The statuses of a job whose work is in flight, owned by one replica under its lease.
IN_FLIGHT = (Status.PROCESSING, *ON_CLIENT, Status.LOCKED)


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


class Orchestrator:
    def __init__(
        self,
        settings: ServerSettings,
        store: ServerStore,
        gateway: NodeCalls,
        metrics: ServerMetrics | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics or ServerMetrics()
        self.store = store
        self.gateway = gateway
        self.fleet = Fleet(settings, store, gateway, clock)
        self.lease = ReplicaLease(settings, store, clock)
        self.uploads = UploadLimits(settings.upload_max_concurrent, settings.upload_max_per_client)
        self.cleaner = Cleaner(settings, store, self.uploads, clock)
        self._dispatch_wakeup = Wakeup()
        self._stop = asyncio.Event()
        #: Set when a stop signal arrives, before uvicorn waits for open requests to end.
        self.draining = asyncio.Event()
        self.collector = JobCollector(
            settings, store, self.fleet, self.metrics, self._stop, self.wake_dispatch, clock
        )
        self._final_waiters = FinalWaiters()
        store.on_final(self._final_waiters.notify)
        self._job_tasks: dict[int, asyncio.Task[object]] = {}
        #: Jobs a /terminate request is finishing in its own task (not in _job_tasks).
        self._terminating: set[int] = set()
        #: Jobs the last reaper pass found without a task, as it saw them.
        self._unowned: dict[int, JobRecord] = {}
        self._loops: list[asyncio.Task[None]] = []
        #: Services with no usable client: when one of their jobs last tried the clients,
        #: and when that was last logged.
        self._probed_at: dict[str, float] = {}
        self._warned_at: dict[str, float] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.lease.join()
        self.store.subscribe(self.wake_dispatch)
        await self._recover()
        self._loops = [
            asyncio.create_task(
                self.lease.lease_loop(self._stop, self._resume_after_lapse), name="lease_loop"
            ),
            asyncio.create_task(self._dispatch_loop(), name="dispatch_loop"),
            asyncio.create_task(self.cleaner.cleaner_loop(self._stop), name="cleaner_loop"),
            asyncio.create_task(self._node_loop(), name="node_loop"),
            asyncio.create_task(self._reaper_loop(), name="reaper_loop"),
        ]
        for task in self._loops:
            task.add_done_callback(self._loop_died)

    async def stop(self) -> None:
        self._stop.set()
        tasks = [*self._loops, *self._job_tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self.lease.retire()
        except StoreError as error:
            logger.warning("could not retire replica %s: %s", self.lease.replica_id, error)

    def _loop_died(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stop.is_set():
            return
        logger.critical(
            "background loop %s died: %r; stopping the server", task.get_name(), task.exception()
        )
        os.kill(os.getpid(), 15)

    def wake_dispatch(self) -> None:
        self._dispatch_wakeup.set()

    async def wait_final(self, job_id: int, timeout_s: float) -> None:
        """Return once the job is final or absent, `timeout_s` passed, or the server stops."""
        await wait_any(
            wait_final(self.store, self._final_waiters, job_id, timeout_s, self._stop),
            self.draining.wait(),
        )

    async def _recover(self) -> None:
        """Resume after a restart: nothing in flight is lost or sent twice.

        Takes the jobs this replica owned before (same REPLICA_ID) and those nobody can be
        following (no owner, or a replica that stopped cleanly); jobs of replicas that died
        are taken over by the reaper once their lease runs out.
        """
        # Alone on its database (SQLite), every job in flight is this process's to resume,
        # whatever REPLICA_ID (a port) it ran under before.
        alive_since = 0.0 if self.store.shared else math.inf
        taken = await self.store.take_over(self.lease.replica_id, IN_FLIGHT, alive_since, own=True)
        self._redrive(taken)

    def _redrive(self, jobs: list[JobRecord]) -> None:
        """Follow jobs this replica has just become the owner of, with no task of its own."""
        for job in jobs:
            if job.status is Status.PROCESSING:
                # Its dispatch may or may not have reached the client: queue it again with
                # its dispatch key, so a client that already has the payload returns it.
                self._spawn(job.id, self._requeue(job))
            elif job.status is Status.LOCKED:
                self._spawn(job.id, self._finish_termination(job))
            else:
                self._spawn(job.id, self.collector.collect(job))

    async def _requeue(self, job: JobRecord) -> None:
        await lifecycle.requeue(self.store, job.id)
        self.wake_dispatch()

    async def _resume_after_lapse(self) -> None:
        logger.warning(
            "the lease of replica %s lapsed; resuming only the jobs it still owns",
            self.lease.replica_id,
        )
        tasks = [task for task in self._job_tasks.values() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._redrive(await self.store.take_over(self.lease.replica_id, IN_FLIGHT, 0.0, own=True))

    def _spawn(self, job_id: int, coroutine: Coroutine[Any, Any, object]) -> None:
        """Run one job's dispatch/collection; a job never has two such tasks."""
        if job_id in self._job_tasks or self._stop.is_set():
            coroutine.close()
            return
        task = asyncio.create_task(coroutine, name=f"job-{job_id}")
        self._job_tasks[job_id] = task

        def forget(done: asyncio.Task[object]) -> None:
            if self._job_tasks.get(job_id) is done:
                del self._job_tasks[job_id]
            if not done.cancelled() and (error := done.exception()) is not None:
                # The reaper re-drives the job; say why it needed to.
                logger.error(
                    "task of job %d failed: %r",
                    job_id,
                    error,
                    exc_info=error,
                    extra={"job_id": job_id},
                )

        task.add_done_callback(forget)

    # ---- dispatch --------------------------------------------------------------------------

    def _service(self, job: JobRecord) -> ServiceConfig | None:
        return self.settings.services.get(job.service)

    async def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            started = self.clock.now()
            try:
                await self.dispatch_once()
                # Jobs due already and still queued were left by this pass (a quota, or no
                # client to take them): a wake-up brings them, not a spin every 10 ms.
                retry_at = await self.store.next_retry_at(after=started)
            except StoreUnavailableError as error:
                logger.warning("dispatch waits for the database: %s", error)
                retry_at = None
            except StoreError:
                logger.exception("dispatch failed; retrying on the next tick")
                retry_at = None
            timeout = self.settings.safety_tick_s
            if retry_at is not None:
                timeout = min(timeout, max(0.0, retry_at - self.clock.now()) + 0.01)
            await wait_any(self._dispatch_wakeup.wait(), self._stop.wait(), timeout_s=timeout)

    async def dispatch_once(self) -> int:
        now = self.clock.now()
        placements = {
            name: placement
            for name, service in self.settings.services.items()
            if (placement := self._placement(name, service, now)) is not None
        }
        if not placements:
            return 0
        limits = {
            name: ServiceLimits(runs_per_user=s.runs_per_user, max_runs=s.max_runs)
            for name, s in self.settings.services.items()
            if name in placements
        }
        claimed = await self.store.claim_dispatchable(
            limits, now, placements, owner=self.lease.replica_id
        )
        for job in claimed:
            self._spawn(job.id, self._send(job))
        return len(claimed)

    def _placement(self, name: str, service: ServiceConfig, now: float) -> Placement | None:
        """Where the service's jobs may go in this claim; None: leave its queue alone now.

        With no usable client, its jobs wait in Queued, and one of them tries the clients
        every NODE_CHECK_INTERVAL (it fails, backs off and, past RETRY_DEADLINE, ends the
        job): the work and the log lines do not grow with the queue. The health checks wake
        dispatch as soon as a client answers again.
        """
        if any(self.fleet.usable(node) for node in service.nodes):
            self._probed_at.pop(name, None)
            return self.fleet.placement(service.nodes, probe=False)
        down = self._unusable_since(service) is not None  # not merely unchecked yet
        if down and now - self._warned_at.get(name, 0.0) >= NO_CLIENT_WARNING_EVERY_S:
            self._warned_at[name] = now
            logger.warning(
                "service %s: no client can take work; its queued jobs wait (one tries the "
                "clients every %g s)",
                name,
                self.settings.node_check_interval_s,
            )
        if now - self._probed_at.get(name, 0.0) < self.settings.node_check_interval_s:
            return None
        self._probed_at[name] = now
        return self.fleet.placement(service.nodes, probe=True)

    async def fail_stranded(self) -> list[int]:
        """Fail the jobs queued for RETRY_DEADLINE while no client of their service answered.

        Probing tries one job at a time, so without this the others would wait as long as
        the service is down. It reads the queue only while a service has had no usable
        client for RETRY_DEADLINE, so it costs nothing otherwise.
        """
        now = self.clock.now()
        deadline_s = self.settings.retry_deadline_s
        stranded = {
            name: "; ".join(
                self.fleet.state[node.upload_url].last_error or node.upload_url
                for node in service.nodes
            )
            for name, service in self.settings.services.items()
            if (since := self._unusable_since(service)) is not None and now - since >= deadline_s
        }
        if not stranded:
            return []
        failed = []
        for job in await self.store.jobs_with_status([Status.QUEUED]):
            waited_since = job.created_at or job.queued_at or 0.0
            if job.service in stranded and now - waited_since >= deadline_s:
                await self.collector.fail(
                    job,
                    lifecycle.FAIL_QUEUED,
                    f"could not reach the client for {now - waited_since:.0f} s: "
                    f"{stranded[job.service]}",
                )
                failed.append(job.id)
        return failed

    def _unusable_since(self, service: ServiceConfig) -> float | None:
        """Since when none of the service's clients is usable (None: one is, or not known)."""
        since = []
        for node in service.nodes:
            state = self.fleet.state.get(node.upload_url)
            if state is None or self.fleet.usable(node) or state.down_since is None:
                return None
            since.append(state.down_since)
        return max(since, default=None)

    async def _send(self, job: JobRecord) -> None:
        try:
            client = self.fleet.client_for(job)
        except ClientLeftError as error:
            # Its last dispatch may have reached that client: never send it to another.
            await self.collector.fail(job, lifecycle.FAIL_UNSENT, f"job lost: {error}")
            return
        service = self._service(job)
        if service is None or client is None:
            await self.collector.fail(
                job, lifecycle.FAIL_UNSENT, f"service {job.service!r} is not configured"
            )
            return
        assert job.dispatch_key is not None
        try:
            dest_id = await client.submit(
                input_dir(job.loc),
                dispatch_key=job.dispatch_key,
                timeout_s=service.timeout_s,
                container_image=service.container_image,
            )
        except OutOfDescriptorsError as error:
            # This server's shortage, not the node's: the node keeps its health.
            await self._retry_dispatch(job, str(error))
            return
        except UndeliveredError as error:
            # It never reached the node, so any node may take it: another one, at once.
            self.fleet.report_failure(client.url, definite=True, reason=str(error))
            elsewhere = self.fleet.others_usable(service.nodes, client.url)
            await self._retry_dispatch(job, str(error), unpin=elsewhere)
            return
        except TransientClientError as error:
            self.fleet.report_failure(client.url, reason=str(error))
            await self._retry_dispatch(job, str(error))
            return
        except ClientUnauthorizedError:
            # Refused before the body was read: no payload there. The job waits, saying why,
            # for this client to accept the token or for another (none is sent to it so).
            self.fleet.report_refusing(client.url, "unauthorized")
            await self._requeue_refused(job, ClientUnauthorizedError.MESSAGE)
            return
        except ClientDiskFullError:
            # Refused before the body was read, like a 401: the job waits for space there
            # or for another client.
            self.fleet.report_refusing(client.url, REFUSING_DISK_FULL)
            await self._requeue_refused(job, ClientDiskFullError.MESSAGE)
            return
        except ClientCallError as error:
            await self.collector.fail(
                job, lifecycle.FAIL_DISPATCH, f"client refused the job: {error}"
            )
            return
        submitted = await lifecycle.mark_submitted(self.store, job, dest_id, self.clock.now())
        if submitted is not None:
            self.metrics.job_started(job)
            # The row is what the compare-and-set just wrote: no need to read it back. A
            # /terminate from now on cancels this task before it touches the job.
            await self.collector.collect(submitted)
            return
        # /terminate arrived while the dispatch was in flight: kill what we just created.
        fresh = await lifecycle.record_payload(self.store, job.id, dest_id)
        if fresh is not None:
            await self._finish_termination(fresh)

    async def _requeue_refused(self, job: JobRecord, refused: str) -> None:
        requeued = await lifecycle.requeue_refused(self.store, job.id, refused)
        # Not Processing: terminated meanwhile, and never sent.
        if not requeued and await lifecycle.kill_locked(self.store, job.id):
            self.metrics.job_finished(job, Status.KILLED)
        self.wake_dispatch()

    async def _retry_dispatch(self, job: JobRecord, reason: str, *, unpin: bool = False) -> None:
        """Queue the job again: after a backoff, or, unpinned, at once for another node."""
        now = self.clock.now()
        since = job.failing_since or now
        if now - since >= self.settings.retry_deadline_s:
            await self.collector.fail(
                job,
                lifecycle.FAIL_DISPATCH,
                f"could not reach the client for {now - since:.0f} s: {reason}",
            )
            return
        delay = 0.0 if unpin else backoff_s(job.attempts + 1)
        logger.warning(
            "dispatch of job %d failed (%s); retrying %s",
            job.id,
            reason,
            "on another client now" if unpin else f"in {delay:.1f} s",
            extra=job_fields(job),
        )
        moved = await lifecycle.retry_dispatch(
            self.store,
            job,
            failing_since=since,
            not_before=now + delay if delay else None,
            unpin=unpin,
        )
        # Not Processing: terminated meanwhile, and never sent.
        if not moved and await lifecycle.kill_locked(self.store, job.id):
            self.metrics.job_finished(job, Status.KILLED)
        self.wake_dispatch()

    # ---- termination -----------------------------------------------------------------------

    async def terminate(self, job_id: int) -> TerminateOutcome | None:
        while True:
            job = await self.store.get_job(job_id)
            if job is None:
                return None
            if job.status in TERMINAL:
                return TerminateOutcome(
                    Termination.ALREADY_FINAL,
                    job.status,
                    f"Job {job_id} already finished with status {job.status.wire}",
                )
            if job.status is Status.QUEUED:
                if await lifecycle.kill_queued(self.store, job_id):
                    self.metrics.job_finished(job, Status.KILLED)
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
            owner = None if job.status is Status.PROCESSING else self.lease.replica_id
            if not await lifecycle.lock_for_kill(self.store, job, owner):
                continue
            if job.status is Status.PROCESSING:
                # The dispatch in flight sees Locked and kills the payload it creates.
                return TerminateOutcome(Termination.DONE, Status.LOCKED, "job terminated")
            self._terminating.add(job_id)
            try:
                locked = await self.store.get_job(job_id)
                assert locked is not None
                task = self._job_tasks.get(job_id)
                if task is not None and task is not asyncio.current_task():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                return await self._finish_termination(locked, restore=job.status)
            finally:
                self._terminating.discard(job_id)

    async def _finish_termination(
        self, job: JobRecord, restore: Status | None = None
    ) -> TerminateOutcome:
        try:
            client = self.fleet.client_for(job)
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
                # Nobody waits for an answer (a restart resumed this): kill it when the
                # client answers again, and report the job Killed now.
                await self.fleet.revoke(client.url, job)
            elif restore is not None and await lifecycle.unlock(self.store, job.id, restore):
                fresh = await self.store.get_job(job.id)
                if fresh is not None:
                    self._spawn(job.id, self.collector.collect(fresh))
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
        if await asyncio.shield(lifecycle.kill_locked(self.store, job.id, message)):
            self.metrics.job_finished(job, Status.KILLED)
        self.wake_dispatch()
        if client is not None and job.dest_id:
            await self.collector.keep_partial(job, client)
        return TerminateOutcome(Termination.DONE, Status.KILLED, "job terminated")

    # ---- nodes -----------------------------------------------------------------------------

    async def _node_loop(self) -> None:
        """Sample node health in the background; fail over from nodes that stay down."""
        while not self._stop.is_set():
            try:
                woke = await self.fleet.check_once()
                moved = await self.fleet.fail_over(owner=self.lease.replica_id)
                await self.fail_stranded()
            except StoreError:
                logger.exception("node check failed")
                woke, moved = False, []
            for job_id in moved:
                task = self._job_tasks.get(job_id)
                if task is not None:
                    task.cancel()
            if woke or moved:
                self.wake_dispatch()
            await wait_any(self._stop.wait(), timeout_s=self.settings.node_check_interval_s)

    # ---- reaper ----------------------------------------------------------------------------

    async def _reaper_loop(self) -> None:
        """Re-drive jobs whose task died (rq's StartedJobRegistry.cleanup, in one process)."""
        while not self._stop.is_set():
            try:
                await self.reap_once()
            except StoreUnavailableError as error:
                logger.warning("reaping waits for the database: %s", error)
            except StoreError:
                logger.exception("reaping failed")
            await wait_any(self._stop.wait(), timeout_s=self.settings.safety_tick_s)

    async def reap_once(self) -> list[int]:
        """Re-drive every job in a non-final, non-Queued status that has no live task.

        A job counts as unowned only if two passes in a row found it so, unchanged: a job
        just claimed gets its task a moment after its row changes, and a terminate may be
        finishing it in a request of its own.
        """
        if self.lease.may_take_over(self.clock.now()):
            taken = await self.store.take_over(
                self.lease.replica_id, IN_FLIGHT, self.clock.now() - self.lease.lease_s, own=False
            )
            for job in taken:
                logger.warning(
                    "taking job %d (%s) over: its replica's lease ran out",
                    job.id,
                    job.status.wire,
                    extra=job_fields(job),
                )
            self._redrive(taken)
        found: dict[int, JobRecord] = {}
        for job in await self.store.jobs_with_status(IN_FLIGHT):
            if (
                job.owner == self.lease.replica_id
                and job.id not in self._job_tasks
                and job.id not in self._terminating
            ):
                found[job.id] = job
        previous, self._unowned = self._unowned, found
        reaped = []
        for job_id, job in list(found.items()):
            if previous.get(job_id) != job or job_id in self._job_tasks:
                continue
            logger.warning("job %d (%s) has no live task; re-driving it", job_id, job.status.wire)
            del self._unowned[job_id]
            reaped.append(job_id)
            if job.status is Status.PROCESSING:
                # As after a restart: the dispatch key is kept, so a client that already
                # has the payload returns it instead of running it twice.
                await lifecycle.requeue(self.store, job_id)
                self.wake_dispatch()
            elif job.status is Status.LOCKED:
                self._spawn(job_id, self._finish_termination(job))
            else:
                self._spawn(job_id, self.collector.collect(job))
        return reaped
