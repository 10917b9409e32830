"""The server's engine: dispatch queued jobs, collect outcomes, terminate, clean.

Dispatch is woken by an event (an upload, a job leaving its slot) with a slow fallback tick
as a safety net. Each job on a client has one collector task that long-polls the client for
its outcome (or polls, for clients without long-polling); collection.py does the
following and settling, this module owns the tasks. Every status change goes through
the Store's compare-and-set, so the loops, the API and a restart can never double-move a job.
"""

from __future__ import annotations

import asyncio
import logging
import os

from job_orchestrator._loops import Wakeup, backoff_s, forget, wait_any
from job_orchestrator.clock import SYSTEM_CLOCK, Clock
from job_orchestrator.config import ServerSettings, ServiceConfig
from job_orchestrator.errors import (
    ClientCallError,
    ClientDiskFullError,
    ClientLeftError,
    ClientUnauthorizedError,
    OutOfDescriptorsError,
    StoreError,
    StoreUnavailableError,
    TransientClientError,
    UndeliveredError,
)
from job_orchestrator.server import lifecycle
from job_orchestrator.server.collection import JobCollector, job_fields
from job_orchestrator.server.feeds import Feeds
from job_orchestrator.server.job_tasks import JobTasks
from job_orchestrator.server.jobfiles import input_dir
from job_orchestrator.server.metrics import ServerMetrics
from job_orchestrator.server.node_calls import NodeCalls
from job_orchestrator.server.nodes import Fleet
from job_orchestrator.server.recovery import Recovery
from job_orchestrator.server.replicas import ReplicaLease
from job_orchestrator.server.retention import Cleaner
from job_orchestrator.server.scheduler import Placement, ServiceLimits
from job_orchestrator.server.storage import JobRecord, ServerStore
from job_orchestrator.server.termination import TerminateOutcome, Terminator
from job_orchestrator.server.uploads import UploadLimits
from job_orchestrator.server.waiting import FinalWaiters, wait_final
from job_orchestrator.status import Status
from job_orchestrator.wire import REFUSING_DISK_FULL

logger = logging.getLogger(__name__)

#: How often a service with no usable client is logged as such.
NO_CLIENT_WARNING_EVERY_S = 60.0


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
        self.feeds = Feeds(self.fleet, gateway, self._stop, clock)
        self.collector = JobCollector(
            settings,
            store,
            self.fleet,
            self.metrics,
            self._stop,
            self.wake_dispatch,
            clock,
            self.feeds,
        )
        self.tasks = JobTasks(self._stop)
        self.terminator = Terminator(
            store,
            self.fleet,
            self.collector,
            self.metrics,
            self.tasks,
            self.lease.replica_id,
            self.wake_dispatch,
        )
        self.recovery = Recovery(
            store,
            self.lease,
            self.tasks,
            self.collector,
            self.terminator,
            self.wake_dispatch,
            clock,
        )
        self._final_waiters = FinalWaiters()
        store.on_final(self._final_waiters.notify)
        self._loops: list[asyncio.Task[None]] = []
        #: Services with no usable client: when one of their jobs last tried the clients,
        #: and when that was last logged.
        self._probed_at: dict[str, float] = {}
        self._warned_at: dict[str, float] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.lease.join()
        self.store.subscribe(self.wake_dispatch)
        await self.recovery.recover()
        self._loops = [
            asyncio.create_task(
                self.lease.lease_loop(self._stop, self.recovery.resume_after_lapse),
                name="lease_loop",
            ),
            asyncio.create_task(self._dispatch_loop(), name="dispatch_loop"),
            asyncio.create_task(self.cleaner.cleaner_loop(self._stop), name="cleaner_loop"),
            asyncio.create_task(self._node_loop(), name="node_loop"),
            asyncio.create_task(
                self.recovery.reaper_loop(self._stop, self.settings.safety_tick_s),
                name="reaper_loop",
            ),
            *self.feeds.loops(),
        ]
        for task in self._loops:
            task.add_done_callback(self._loop_died)

    async def stop(self) -> None:
        self._stop.set()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, self.tasks.cancel_all(), return_exceptions=True)
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

    # ---- dispatch --------------------------------------------------------------------------

    def _service(self, job: JobRecord) -> ServiceConfig | None:
        return self.settings.services.get(job.service)

    async def _dispatch_loop(self) -> None:
        tick_s = self.settings.safety_tick_s
        passed_at = -tick_s
        while not self._stop.is_set():
            started = self.clock.now()
            # Another replica dispatches for all: this one only on its tick, in case that one
            # cannot (every replica deciding on every wake-up multiplied the decisions).
            if not self.store.leads_dispatch() and (due_s := passed_at + tick_s - started) > 0:
                await wait_any(self._dispatch_wakeup.wait(), self._stop.wait(), timeout_s=due_s)
                continue
            passed_at = started
            # Jobs due now and left queued (a quota, no client) wait for a wake-up, not a spin;
            # those due later are read while the claim runs (on PostgreSQL, a fifth of a pass).
            retry_read = asyncio.ensure_future(self.store.next_retry_at(after=started))
            try:
                await self.dispatch_once()
                retry_at = await retry_read
            except StoreUnavailableError as error:
                logger.warning("dispatch waits for the database: %s", error)
                retry_at = None
            except StoreError:
                logger.exception("dispatch failed; retrying on the next tick")
                retry_at = None
            finally:
                forget(retry_read)  # after a failed claim or a stop: that failure is logged
            timeout = tick_s
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
            self.tasks.spawn(job.id, self._send(job))
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
        down = self.fleet.unusable_since(service.nodes) is not None  # not merely unchecked yet
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
            if (since := self.fleet.unusable_since(service.nodes)) is not None
            and now - since >= deadline_s
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
        self.metrics.job_started(job)  # out of the queue: the client holds it
        now = self.clock.now()
        recorded = lifecycle.mark_submitted(self.store, job, dest_id, now)
        # Followed while its Submitted is written (JobCollector.collect), as that write makes
        # it. A /terminate from then on cancels this task before it touches the job.
        if await self.collector.collect(lifecycle.as_submitted(job, dest_id, now), recorded):
            return
        # /terminate arrived while the dispatch was in flight: kill what we just created.
        fresh = await lifecycle.record_payload(self.store, job.id, dest_id)
        if fresh is not None:
            await self.terminator.finish(fresh)

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
            message = f"could not reach the client for {now - since:.0f} s: {reason}"
            await self.collector.fail(job, lifecycle.FAIL_DISPATCH, message)
            return
        delay = 0.0 if unpin else backoff_s(job.attempts + 1)
        logger.warning(
            "dispatch of job %d failed (%s); retrying %s",
            job.id,
            reason,
            "on another client now" if unpin else f"in {delay:.1f} s",
            extra=job_fields(job),
        )
        not_before = now + delay if delay else None
        moved = await lifecycle.retry_dispatch(
            self.store, job, failing_since=since, not_before=not_before, unpin=unpin
        )
        # Not Processing: terminated meanwhile, and never sent.
        if not moved and await lifecycle.kill_locked(self.store, job.id):
            self.metrics.job_finished(job, Status.KILLED)
        self.wake_dispatch()

    # ---- termination -----------------------------------------------------------------------

    async def terminate(self, job_id: int) -> TerminateOutcome | None:
        """End the job as a user asked (termination.py); None: there is no such job."""
        return await self.terminator.terminate(job_id)

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
                self.tasks.cancel(job_id)
            if woke or moved:
                self.wake_dispatch()
            await wait_any(self._stop.wait(), timeout_s=self.settings.node_check_interval_s)
