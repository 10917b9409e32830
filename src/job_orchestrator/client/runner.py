"""Runs payloads: the policy above the executors (client/executors/).

The runner validates run.sh, holds the MAX_CONCURRENT slots, waits for the server's lease,
gives the payload a uid of its own with JOB_USERS (client/uids.py; taken just before the
launch, reclaimed once the execution ended), enforces the wall-time limit and finishes a
payload (result ZIP, status, message). How run.sh is executed (a local process group, or a
Slurm batch job) is the executor's business; the payload keeps the executor's handle, so a
restarted client re-adopts its executions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from job_orchestrator.archive import ArchiveError
from job_orchestrator.client.archives import Archiver
from job_orchestrator.client.executors import make_executor
from job_orchestrator.client.executors.base import (
    Executor,
    Handle,
    LaunchError,
    LaunchUnavailableError,
    Outcome,
)
from job_orchestrator.client.lease import ServerLease
from job_orchestrator.client.log_tail import with_last_line
from job_orchestrator.client.metrics import ClientMetrics
from job_orchestrator.client.payload import TERMINATED, Ending, Payload, PayloadChanges
from job_orchestrator.client.registry import Registry
from job_orchestrator.client.sandbox import recorded_exit_code
from job_orchestrator.client.uids import UidLeases
from job_orchestrator.client.validator import validate_script
from job_orchestrator.config import ClientSettings
from job_orchestrator.status import Status

logger = logging.getLogger(__name__)

#: Seconds between launch attempts while the executor is unreachable (slurmctld down).
LAUNCH_RETRY_S = 2.0
#: A run.sh up to this size is checked on the event loop (~0.5 ms at most), a bigger one in a
#: thread: for a small script the hand-off costs more CPU than the check.
INLINE_VALIDATE_BYTES = 2048


class Runner:
    def __init__(
        self,
        settings: ClientSettings,
        registry: Registry,
        metrics: ClientMetrics | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.settings = settings
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
        self.lease = ServerLease(settings.server_lease_s)
        self.uids = UidLeases(*settings.job_users) if settings.job_users else None

    async def resume(self, payloads: list[Payload]) -> None:
        """At start: keep the uids of the payloads still running, reclaim the others, adopt."""
        if self.uids is not None:
            # Files the client makes are its own (state, log, result, exit status); DATA_PATH
            # lets a job traverse to its own work directory, not list the others.
            os.umask(0o077)
            self.settings.data_path.chmod(0o711)
            for payload in payloads:
                # A Prepared payload with a uid but no handle may have been started all the
                # same (see _recover_unrecorded_launch): its uid is held until that is known.
                if payload.uid is not None and not payload.status.is_terminal():
                    self.uids.pool.hold(payload.id, payload.uid)
            owned = [p.paths.work for p in payloads] + [p.paths.tmp for p in payloads]
            await self.uids.reclaim_unheld(owned)
        adopted = []
        for payload in payloads:
            if payload.status is Status.PREPARED and payload.handle is None:
                payload = await self._recover_unrecorded_launch(payload)
            adopted.append(payload)
        # Not final: running, or to start (a container found only later is adopted by its
        # launch, whose create conflicts with it).
        await self.executor.remove_strays([p.id for p in adopted if not p.status.is_terminal()])
        for payload in adopted:
            self.adopt(payload)

    async def _recover_unrecorded_launch(self, payload: Payload) -> Payload:
        """A payload recorded as not started may have been started all the same: the client
        can die between starting run.sh and recording its handle (a SIGKILL lands anywhere).
        Its execution is then re-adopted, never started a second time; if it was not started,
        the uid it had taken is given back (a new one is taken when it starts)."""
        handle = await asyncio.to_thread(self.executor.find_launched, payload)
        if handle is None:
            if payload.uid is not None and self.uids is not None:
                await self._release_uid(payload)
                payload = self.registry.change(payload.id, PayloadChanges(uid=None)) or payload
            return payload
        logger.warning(
            "payload %d was started before the client stopped but not recorded: re-adopting it",
            payload.id,
            extra={"payload_id": payload.id},
        )
        found = self.registry.change(
            payload.id, PayloadChanges(handle=handle.encode()), {Status.PREPARED}
        )
        return found or payload

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
        script = payload.paths.work / "run.sh"
        trap = self.settings.require_exit_trap
        if _size(script) <= INLINE_VALIDATE_BYTES:
            rejection = validate_script(script, require_exit_trap=trap)
        else:
            rejection = await asyncio.to_thread(validate_script, script, require_exit_trap=trap)
        if rejection is not None and rejection.unsafe and not self.settings.validate_scripts:
            rejection = None  # VALIDATE_SCRIPTS=0: only a missing run.sh (or trap) is refused
        if rejection is not None:
            logger.info(
                "payload %d rejected: %s",
                payload.id,
                rejection.reason,
                extra={"payload_id": payload.id},
            )
            self.registry.end(payload.id, Ending(Status.INVALID, rejection.message()))
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
                    if current.dispatch_key is None or self.lease.held(payload.id):
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
        if self.uids is not None:
            with_uid = await self._acquire_uid(payload)
            if with_uid is None:
                return
            payload = with_uid
        launched = time.monotonic()
        handle = await self._launch(payload)
        if handle is None:
            await self._release_uid(payload)
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
        await self._release_uid(payload)
        await self._finish(payload, outcome)
        if (ended := self.registry.get(payload.id)) is not None:
            self.metrics.run_ended(ended.status, time.monotonic() - launched)
            logger.info(
                "payload %d ended: %s",
                payload.id,
                ended.status.wire,
                extra={"payload_id": payload.id},
            )

    async def _acquire_uid(self, payload: Payload) -> Payload | None:
        """The payload with a uid of its own, waiting Prepared while none is free; None if it
        was killed meanwhile (then Killed)."""
        assert self.uids is not None
        while True:
            with self.registry.watch(payload.id) as changed:
                current = self.registry.get(payload.id)
                if current is None or current.killed:
                    self.registry.end(payload.id, TERMINATED)
                    return None
                uid = await self.uids.acquire(payload.id, changed)
            if uid is None:
                continue
            updated = self.registry.change(payload.id, PayloadChanges(uid=uid), {Status.PREPARED})
            if updated is None:  # gone meanwhile: never launched without its uid
                await self._release_uid(payload)
            return updated

    async def _release_uid(self, payload: Payload) -> None:
        """The execution ended: nothing may run or stay under its uid before it is reused."""
        if self.uids is not None:
            await self.uids.release(payload.id, [payload.paths.work, payload.paths.tmp])

    async def _launch(self, payload: Payload) -> Handle | None:
        """Hand run.sh to the executor; None if it refused (the payload is then Failed).

        An unreachable executor (slurmctld down) is no reason to fail a job: the payload
        stays Prepared and the launch is tried again until it works or the job is killed.
        """
        warned = False
        while True:
            try:
                return await self.executor.launch(payload)
            except LaunchUnavailableError as error:
                if not warned:
                    logger.warning(
                        "payload %d waits: %s", payload.id, error, extra={"payload_id": payload.id}
                    )
                    warned = True
            except LaunchError as error:
                self.metrics.executor_errors.inc()
                self.registry.end(payload.id, Ending(Status.FAILED, str(error)))
                return None
            current = self.registry.get(payload.id)
            if current is None or current.killed:
                self.registry.end(payload.id, TERMINATED)
                return None
            with self.registry.watch(payload.id) as changed, contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), LAUNCH_RETRY_S)

    async def _wait_within_limit(
        self, payload: Payload, handle: Handle, ended: Coroutine[Any, Any, Outcome]
    ) -> Outcome:
        """Await the execution's end; past its wall-time limit, terminate it first."""
        waiting = asyncio.ensure_future(ended)
        if payload.timeout_s is None:
            return await waiting
        started_at = payload.started_at or handle.started_at or time.time()
        remaining = payload.timeout_s - (time.time() - started_at)
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
        current = self.registry.get(payload.id)
        if current is None:
            return
        ending = _ending(current, outcome)
        if ending is not None:
            self.registry.end(payload.id, ending)
            return
        try:
            summary = await self.archiver.result(
                current.paths.work,
                current.paths.result,
                max_total_bytes=self.settings.result_max_bytes,
            )
        except ArchiveError as error:
            self.registry.end(payload.id, Ending(Status.FAILED, str(error), exit_code=0))
            return
        # Still Completed, but the user is told (message and the archive's manifest).
        message = "; ".join(part for part in (outcome.note, summary.describe()) if part)
        if message:
            logger.warning("payload %d: %s", payload.id, message)
        self.registry.end(payload.id, Ending(Status.COMPLETED, message, exit_code=0))

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
            await self._release_uid(payload)
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
        await self._release_uid(payload)
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


def _ending(current: Payload, outcome: Outcome) -> Ending | None:
    """How an execution that ended did, unless it exited 0 (then its result decides)."""
    returncode = outcome.exit_code
    if current.killed:
        return Ending(Status.KILLED, "job terminated", returncode)
    if current.disk_stop is not None:
        return Ending(Status.FAILED, current.disk_stop, returncode)
    if current.timed_out:
        message = f"wall-time limit of {current.timeout_s:g} s exceeded"
        return Ending(Status.FAILED, message, returncode)
    if outcome.failure is not None:
        # The executor ended it (Slurm's wall-time limit, out of memory, a node failure, a
        # cancellation by someone else): never a success, whatever the exit status.
        return Ending(Status.FAILED, outcome.failure, returncode)
    if returncode is None:
        lost = "run.sh ended while the client was down and its exit status was lost"
        return Ending(Status.FAILED, lost)
    if returncode != 0:
        message = with_last_line(_describe_exit(returncode), current.paths.log)
        return Ending(Status.FAILED, message, returncode)
    return None


def _still_running(payload: Payload) -> bool:
    """Whether a payload found at start was handed to its executor and has not ended."""
    return payload.status is Status.RUNNING or (
        payload.status is Status.PREPARED and payload.handle is not None
    )


def _size(path: Path) -> int:
    """The file's size; 0 if it is missing (validate_script then says so at once)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"run.sh was killed by {signal.Signals(-returncode).name}"
        return f"run.sh was killed by signal {-returncode}"
    # The wrapper's bash reports a script killed by signal n as status 128 + n.
    if 128 < returncode <= 128 + signal.SIGRTMAX:
        with contextlib.suppress(ValueError):
            name = signal.Signals(returncode - 128).name
            return f"run.sh exited with status {returncode} (killed by {name})"
    return f"run.sh exited with status {returncode}"
