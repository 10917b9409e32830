"""Runs payloads: the policy above the executors (client/executors/).

The runner validates run.sh, holds the MAX_CONCURRENT slots, waits for the server's lease,
gives the payload a uid of its own with JOB_USERS (client/uids.py; taken just before the
launch, reclaimed once the execution ended), enforces the wall-time limit and finishes a
payload (result ZIP, status, message). How run.sh is executed (a local process group, or a
Slurm batch job) is the executor's business; the payload keeps the executor's handle, so a
restarted client re-adopts its executions.

What comes before the launch (the screen, the uid, the launch itself) is launching.py's; how
an ended execution settles its payload is settling.py's. The runner keeps the order of the
steps, the slots and the lease, and supervises what runs: the wall-time limit, kills and
stops for disk space, and the executions it re-adopts after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from job_orchestrator.client.archives import Archiver
from job_orchestrator.client.executors import make_executor
from job_orchestrator.client.executors.base import Executor, Handle, Outcome
from job_orchestrator.client.launching import Launcher
from job_orchestrator.client.lease import ServerLease
from job_orchestrator.client.metrics import ClientMetrics
from job_orchestrator.client.payload import TERMINATED, Payload, PayloadChanges
from job_orchestrator.client.registry import Registry
from job_orchestrator.client.sandbox import recorded_exit_code
from job_orchestrator.client.settling import settle
from job_orchestrator.clock import SYSTEM_CLOCK, Clock
from job_orchestrator.config import ClientSettings
from job_orchestrator.status import Status

logger = logging.getLogger(__name__)


class Runner:
    def __init__(
        self,
        settings: ClientSettings,
        registry: Registry,
        metrics: ClientMetrics | None = None,
        executor: Executor | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self.registry = registry
        self.metrics = metrics or ClientMetrics(registry)
        self.executor = executor or make_executor(settings, self.metrics)
        self._slots = (
            asyncio.Semaphore(settings.max_concurrent) if settings.max_concurrent else None
        )
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._kill_tasks: set[asyncio.Task[None]] = set()
        self._held: dict[int, asyncio.TimerHandle] = {}
        self._stopping = False
        self.archiver = Archiver()
        self.lease = ServerLease(settings.server_lease_s, clock)
        self.launcher = Launcher(settings, registry, self.metrics, self.executor)

    async def resume(self, payloads: list[Payload]) -> None:
        """At start: keep the uids of the payloads still running, reclaim the others, adopt."""
        await self.launcher.hold_uids(payloads)
        adopted = []
        for payload in payloads:
            if payload.status is Status.PREPARED and payload.handle is None:
                payload = await self.launcher.recover_unrecorded_launch(payload)
            adopted.append(payload)
        # Not final: running, or to start (a container found only later is adopted by its
        # launch, whose create conflicts with it).
        await self.executor.remove_strays([p.id for p in adopted if not p.status.is_terminal()])
        for payload in adopted:
            self.adopt(payload)

    def start(self, payload: Payload) -> None:
        self._spawn(payload.id, self._run(payload))

    def adopt(self, payload: Payload) -> None:
        """Resume a payload found on disk at start-up.

        A payload that had not started yet waits until its server asks for it again (or
        ADOPT_HOLD passes): while this client was down, the server may have given the job to
        another client, and then it sends a kill instead. One already handed to its executor
        (a Slurm job still pending) is watched like a running one.
        """
        if payload.status is Status.PREPARED and payload.handle is None:
            handle = asyncio.get_running_loop().call_later(
                self.settings.adopt_hold_s, self.release, payload.id
            )
            self._held[payload.id] = handle
        elif payload.status in (Status.PREPARED, Status.RUNNING):
            # Running, or already handed to the executor (pending in Slurm).
            self._spawn(payload.id, self._watch_orphan(payload))
        elif payload.status is Status.COMPLETED and not payload.paths.result.is_file():
            self._spawn(payload.id, self._finish(payload, Outcome(0)))

    async def capacity(self) -> int | None:
        """How many payloads the server may keep here (the X-Orchestrator-Max-Concurrent)."""
        running = len(self.registry.with_status(Status.RUNNING))
        pending = sum(1 for p in self.registry.with_status(Status.PREPARED) if p.handle)
        capacity = await self.executor.capacity(running, pending)
        if capacity is not None and self.settings.max_concurrent:
            return min(capacity, self.settings.max_concurrent)
        return capacity or self.settings.max_concurrent

    def release(self, payload_id: int) -> None:
        """Start a held payload (the server still wants it)."""
        handle = self._held.pop(payload_id, None)
        if handle is None:
            return
        handle.cancel()
        payload = self.registry.get(payload_id)
        if payload is not None and payload.status is Status.PREPARED:
            self.start(payload)

    def asked_by(self, clock: str | None) -> None:
        """A server asked for its changes: renew what it holds, and start those it holds of
        the payloads adopted at start-up (as a /retrieve of each would)."""
        instance = self.lease.asked_by(clock)
        if instance is None:
            return
        for payload_id in list(self._held):
            payload = self.registry.get(payload_id)
            if payload is not None and payload.holder == instance:
                self.release(payload_id)

    def _spawn(self, payload_id: int, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine, name=f"payload-{payload_id}")
        self._tasks[payload_id] = task
        task.add_done_callback(lambda done: self._forget(payload_id, done))

    def _forget(self, payload_id: int, done: asyncio.Task[None]) -> None:
        if self._tasks.get(payload_id) is done:
            del self._tasks[payload_id]
        if not done.cancelled() and done.exception() is not None:
            self.metrics.executor_errors.inc()
            logger.error(
                "payload %d task failed",
                payload_id,
                exc_info=done.exception(),
                extra={"payload_id": payload_id},
            )

    async def stop(self) -> None:
        """Stop watching; the scripts themselves keep running and are re-adopted at start."""
        self._stopping = True
        for handle in self._held.values():
            handle.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.executor.close()
        self.archiver.close()

    # ---- one payload -----------------------------------------------------------------------

    async def _run(self, payload: Payload) -> None:
        if payload.killed:
            self.registry.end(payload.id, TERMINATED)
            return
        if not await self.launcher.screen(payload):
            return
        try:
            while True:
                async with self._slots if self._slots is not None else contextlib.nullcontext():
                    current = self.registry.get(payload.id)
                    if current is None or current.killed or current.status is not Status.PREPARED:
                        self.registry.end(payload.id, TERMINATED)
                        return
                    # Only our server fails jobs over (it sends a dispatch key); the original
                    # server never moves a job, and holding its payloads Prepared until its
                    # next 500 ms poll would widen its quota gap (it does not count Prepared).
                    if current.dispatch_key is None or self.lease.held(payload.id, current.holder):
                        await self._execute(current)
                        return
                # The server has not asked about it within SERVER_LEASE: it may have given
                # the job to another client. Start it only when it asks again (or kill it).
                logger.debug("payload %d waits for the server to ask for it", payload.id)
                await self.lease.renewed(payload.id)
        finally:
            self.lease.forget(payload.id)

    async def _execute(self, payload: Payload) -> None:
        payload.paths.exit_code.unlink(missing_ok=True)
        if self.launcher.uids is not None:
            with_uid = await self.launcher.acquire_uid(payload)
            if with_uid is None:
                return
            payload = with_uid
        launched = self._clock.monotonic()
        handle = await self.launcher.launch(payload)
        if handle is None:
            await self.launcher.release_uid(payload)
            return
        before = self.registry.get(payload.id)
        running_now = self.executor.runs_at_launch and before is not None and not before.killed
        if running_now:
            # One state write instead of two (handle, then Running): nothing is awaited in
            # between that a crash could fall into.
            started_at = await self.executor.started(handle)
            current = self.registry.start_running(payload.id, started_at, handle.encode())
        else:
            current = self.registry.change(
                payload.id, PayloadChanges(handle=handle.encode()), {Status.PREPARED}
            )
        if current is None or current.killed:
            # Killed while we were starting it.
            await self.executor.terminate(handle, self.settings.kill_grace_s)
        try:
            running = current if running_now else None
            if running is None:
                started_at = await self.executor.started(handle)
                if (now := self.registry.get(payload.id)) is not None and not now.killed:
                    # A job killed while pending in Slurm goes from Prepared to Killed.
                    running = self.registry.start_running(payload.id, started_at)
            outcome = await self._wait_within_limit(
                running or payload, handle, self.executor.wait(payload, handle)
            )
        except asyncio.CancelledError:
            if not self._stopping:
                self.executor.abandon(handle)
            raise
        await self.launcher.release_uid(payload)
        await self._finish(payload, outcome)
        if (ended := self.registry.get(payload.id)) is not None:
            self.metrics.run_ended(ended.status, self._clock.monotonic() - launched)
            logger.info(
                "payload %d ended: %s",
                payload.id,
                ended.status.wire,
                extra={"payload_id": payload.id},
            )

    async def _wait_within_limit(
        self, payload: Payload, handle: Handle, ended: Coroutine[Any, Any, Outcome]
    ) -> Outcome:
        """Await the execution's end; past its wall-time limit, terminate it first."""
        waiting = asyncio.ensure_future(ended)
        if payload.timeout_s is None:
            return await waiting
        started_at = payload.started_at or handle.started_at or self._clock.now()
        remaining = payload.timeout_s - (self._clock.now() - started_at)
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), max(0.0, remaining))
        except TimeoutError:
            logger.info(
                "payload %d exceeded its wall-time limit of %g s", payload.id, payload.timeout_s
            )
            self.registry.change(payload.id, PayloadChanges(timed_out=True))
            await self.executor.terminate(handle, self.settings.kill_grace_s)
            return await waiting

    async def _finish(self, payload: Payload, outcome: Outcome) -> None:
        await settle(
            self.registry,
            self.archiver,
            payload.id,
            outcome,
            result_max_bytes=self.settings.result_max_bytes,
        )

    async def _watch_orphan(self, payload: Payload) -> None:
        """A payload the executor had when the client stopped: wait for it, then settle it."""
        handle = Handle.decode(payload.handle)
        if handle is None or handle.kind != self.executor.kind:
            if handle is not None:
                logger.warning(
                    "payload %d was started by the %s executor, not %s: its end is unknown",
                    payload.id,
                    handle.kind,
                    self.executor.kind,
                )
            await self.launcher.release_uid(payload)
            await self._finish(payload, Outcome(await recorded_exit_code(payload.paths.exit_code)))
            return
        if self.executor.reattach(payload, handle):
            logger.info("re-adopting payload %d (%s %d)", payload.id, handle.kind, handle.id)
        if payload.status is Status.PREPARED:
            started_at = await self.executor.started(handle)
            payload = self.registry.start_running(payload.id, started_at) or payload
        outcome = await self._wait_within_limit(
            payload, handle, self.executor.wait(payload, handle)
        )
        await self.launcher.release_uid(payload)
        await self._finish(payload, outcome)

    # ---- kill ------------------------------------------------------------------------------

    def stop_for_disk(self, payload_id: int, reason: str) -> None:
        """Stop a running payload that takes disk space it may not (disk.py); it ends Failed
        with `reason`. Like a kill: SIGTERM, SIGKILL after the grace."""
        current = self.registry.get(payload_id)
        if current is None or current.disk_stop is not None or not _still_running(current):
            return
        updated = self.registry.change(payload_id, PayloadChanges(disk_stop=reason))
        handle = Handle.decode(updated.handle) if updated is not None else None
        if handle is None or handle.kind != self.executor.kind:
            return
        logger.warning("payload %d stopped: %s", payload_id, reason)
        self._terminate(payload_id, handle)

    def _terminate(self, payload_id: int, handle: Handle) -> None:
        task = asyncio.create_task(
            self.executor.terminate(handle, self.settings.kill_grace_s),
            name=f"kill-{payload_id}",
        )
        self._kill_tasks.add(task)
        task.add_done_callback(self._kill_tasks.discard)

    def kill(self, payload: Payload) -> None:
        """Mark the payload killed; a running one gets SIGTERM, then SIGKILL after the grace."""
        if payload.status.is_terminal():
            return  # nothing to kill; its outcome stands
        updated = self.registry.change(payload.id, PayloadChanges(killed=True))
        if updated is None or updated.status.is_terminal():
            return
        handle = Handle.decode(updated.handle)
        if updated.status is Status.PREPARED and handle is None:
            held = self._held.pop(payload.id, None)
            if held is not None:
                held.cancel()
            self.lease.wake(payload.id)
            task = self._tasks.get(payload.id)
            if task is None:
                self.registry.end(payload.id, TERMINATED)
            return
        if handle is not None and handle.kind == self.executor.kind:
            self._terminate(payload.id, handle)


def _still_running(payload: Payload) -> bool:
    """Whether a payload found at start was handed to its executor and has not ended."""
    return payload.status is Status.RUNNING or (
        payload.status is Status.PREPARED and payload.handle is not None
    )
