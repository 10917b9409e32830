"""Runs payloads: `bash run.sh` in its own process group, exit capture, kill, re-adoption.

How the script is wrapped (limits, bubblewrap, another user) is client/sandbox.py's business.

The script runs under a tiny bash wrapper that writes run.sh's exit status to a file beside
the work directory. The client awaits its own children, but because the status also reaches
disk, a payload whose client restarted can be re-adopted: its process group is not the
client's, it keeps running, and its true status is read when it ends (watched via a pidfd).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Coroutine
from typing import Any

import psutil

from job_orchestrator.archive import ArchiveError
from job_orchestrator.client.archives import Archiver
from job_orchestrator.client.lease import ServerLease
from job_orchestrator.client.logs import with_last_line
from job_orchestrator.client.metrics import ClientMetrics
from job_orchestrator.client.registry import Payload, Registry
from job_orchestrator.client.sandbox import command_for, hand_over, job_environment, spawn_options
from job_orchestrator.client.validator import validate_script
from job_orchestrator.config import ClientSettings
from job_orchestrator.status import Status

logger = logging.getLogger(__name__)


def _signal_group(pgid: int, signum: int) -> bool:
    """Signal a whole process group; False once nothing of it is left."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Only zombies we cannot reap remain in the group (or the pgid was reused by
        # someone else's group, which we must not touch).
        return False
    return True


class Runner:
    def __init__(
        self, settings: ClientSettings, registry: Registry, metrics: ClientMetrics | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics or ClientMetrics(registry)
        self._slots = (
            asyncio.Semaphore(settings.max_concurrent) if settings.max_concurrent else None
        )
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._kill_tasks: set[asyncio.Task[None]] = set()
        self._held: dict[int, asyncio.TimerHandle] = {}
        self._stopping = False
        self.archiver = Archiver()
        self.lease = ServerLease(settings.server_lease_s)

    def start(self, payload: Payload) -> None:
        self._spawn(payload.id, self._run(payload))

    def adopt(self, payload: Payload) -> None:
        """Resume a payload found on disk at start-up.

        A payload that had not started yet waits until its server asks for it again (or
        ADOPT_HOLD passes): while this client was down, the server may have given the job to
        another client, and then it sends a kill instead.
        """
        if payload.status is Status.PREPARED:
            handle = asyncio.get_running_loop().call_later(
                self.settings.adopt_hold_s, self.release, payload.id
            )
            self._held[payload.id] = handle
        elif payload.status is Status.RUNNING:
            self._spawn(payload.id, self._watch_orphan(payload))
        elif payload.status is Status.COMPLETED and not payload.paths.result.is_file():
            self._spawn(payload.id, self._finish(payload, 0))

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
        self.archiver.close()

    # ---- one payload -----------------------------------------------------------------------

    async def _run(self, payload: Payload) -> None:
        if payload.killed:
            self.registry.update(payload.id, status=Status.KILLED, message="job terminated")
            return
        script = payload.paths.work / "run.sh"
        rejection = await asyncio.to_thread(
            validate_script, script, require_exit_trap=self.settings.require_exit_trap
        )
        if rejection is not None:
            logger.info(
                "payload %d rejected: %s",
                payload.id,
                rejection.reason,
                extra={"payload_id": payload.id},
            )
            self.registry.update(payload.id, status=Status.INVALID, message=rejection.message())
            return
        try:
            while True:
                async with self._slots if self._slots is not None else contextlib.nullcontext():
                    current = self.registry.get(payload.id)
                    if current is None or current.killed or current.status is not Status.PREPARED:
                        self.registry.update(
                            payload.id, status=Status.KILLED, message="job terminated"
                        )
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
        paths = payload.paths
        paths.exit_code.unlink(missing_ok=True)
        try:
            await asyncio.to_thread(
                hand_over, [paths.work, paths.exit_code.parent, paths.tmp], self.settings
            )
            # One file for both streams: interleaved as written (client/logs.py serves it).
            with paths.log.open("ab") as log:
                process = await asyncio.create_subprocess_exec(
                    *command_for(self.settings, paths.work, paths.exit_code, paths.tmp),
                    cwd=paths.work,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    env=job_environment(os.environ),
                    start_new_session=True,
                    **spawn_options(self.settings),
                )
        except OSError as error:
            self.metrics.executor_errors.inc()
            self.registry.update(
                payload.id,
                status=Status.FAILED,
                message=f"could not start run.sh: {error.strerror}",
            )
            return
        launched = time.monotonic()
        started_at = _process_start_time(process.pid)
        running = self.registry.update(
            payload.id,
            {Status.PREPARED},
            status=Status.RUNNING,
            pid=process.pid,
            pid_started_at=started_at,
        )
        if running is None or running.killed:
            # Killed while we were starting it.
            await self.terminate_group(process.pid)
        try:
            returncode = await self._wait_within_limit(payload, process.pid, process.wait())
        except asyncio.CancelledError:
            if not self._stopping:
                _signal_group(process.pid, signal.SIGKILL)
            raise
        # run.sh is done: whatever it left in the background goes too.
        _signal_group(process.pid, signal.SIGKILL)
        await self._finish(payload, returncode)
        if (ended := self.registry.get(payload.id)) is not None:
            self.metrics.run_ended(ended.status, time.monotonic() - launched)
            logger.info(
                "payload %d ended: %s",
                payload.id,
                ended.status.wire,
                extra={"payload_id": payload.id},
            )

    async def _wait_within_limit(
        self, payload: Payload, pgid: int, exited: Coroutine[Any, Any, int | None]
    ) -> int | None:
        """Await the script's end; past its wall-time limit, kill its group first."""
        waiting = asyncio.ensure_future(exited)
        if payload.timeout_s is None:
            return await waiting
        started_at = payload.pid_started_at or time.time()
        remaining = payload.timeout_s - (time.time() - started_at)
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), max(0.0, remaining))
        except TimeoutError:
            logger.info(
                "payload %d exceeded its wall-time limit of %g s", payload.id, payload.timeout_s
            )
            self.registry.update(payload.id, timed_out=True)
            await self.terminate_group(pgid)
            return await waiting

    async def _finish(self, payload: Payload, returncode: int | None) -> None:
        current = self.registry.get(payload.id)
        if current is None:
            return
        if current.killed:
            self.registry.update(
                payload.id, status=Status.KILLED, exit_code=returncode, message="job terminated"
            )
            return
        if current.timed_out:
            self.registry.update(
                payload.id,
                status=Status.FAILED,
                exit_code=returncode,
                message=f"wall-time limit of {current.timeout_s:g} s exceeded",
            )
            return
        if returncode is None:
            self.registry.update(
                payload.id,
                status=Status.FAILED,
                message="run.sh ended while the client was down and its exit status was lost",
            )
            return
        if returncode != 0:
            self.registry.update(
                payload.id,
                status=Status.FAILED,
                exit_code=returncode,
                message=with_last_line(_describe_exit(returncode), current.paths.log),
            )
            return
        try:
            summary = await self.archiver.result(
                current.paths.work,
                current.paths.result,
                max_total_bytes=self.settings.result_max_bytes,
            )
        except ArchiveError as error:
            self.registry.update(payload.id, status=Status.FAILED, exit_code=0, message=str(error))
            return
        # Still Completed, but the user is told (message and the archive's manifest).
        message = summary.describe()
        if message:
            logger.warning("payload %d: %s", payload.id, message)
        self.registry.update(payload.id, status=Status.COMPLETED, exit_code=0, message=message)

    async def _watch_orphan(self, payload: Payload) -> None:
        """A payload that was running when the client stopped: wait for it, then settle it."""
        process = _live_process(payload)
        if process is not None:
            logger.info("re-adopting payload %d (pid %d)", payload.id, payload.pid)
            await self._wait_within_limit(payload, payload.pid, _wait_for_exit(process))
            _signal_group(payload.pid, signal.SIGKILL)
        await self._finish(payload, _read_exit_code(payload))

    # ---- kill ------------------------------------------------------------------------------

    def kill(self, payload: Payload) -> None:
        """Mark the payload killed; a running one gets SIGTERM, then SIGKILL after the grace."""
        if payload.status.is_terminal():
            return  # nothing to kill; its outcome stands
        updated = self.registry.update(payload.id, killed=True)
        if updated is None or updated.status.is_terminal():
            return
        if updated.status is Status.PREPARED:
            held = self._held.pop(payload.id, None)
            if held is not None:
                held.cancel()
            self.lease.wake(payload.id)
            task = self._tasks.get(payload.id)
            if task is None:
                self.registry.update(payload.id, status=Status.KILLED, message="job terminated")
            return
        if updated.status is Status.RUNNING and updated.pid and _live_process(updated) is not None:
            task = asyncio.create_task(self.terminate_group(updated.pid), name=f"kill-{payload.id}")
            self._kill_tasks.add(task)
            task.add_done_callback(self._kill_tasks.discard)

    async def terminate_group(self, pgid: int) -> None:
        if not _signal_group(pgid, signal.SIGTERM):
            return
        deadline = time.monotonic() + self.settings.kill_grace_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if not _group_alive(pgid):
                return
        _signal_group(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in the group (zombies are reaped by others)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                return True
    return False


def _process_start_time(pid: int) -> float | None:
    with contextlib.suppress(psutil.Error):
        return float(psutil.Process(pid).create_time())
    return None


def _live_process(payload: Payload) -> psutil.Process | None:
    """The payload's wrapper process if it is still the same, living process (no PID reuse)."""
    if not payload.pid:
        return None
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(payload.pid)
        if (
            payload.pid_started_at is not None
            and abs(process.create_time() - payload.pid_started_at) > 0.5
        ):
            return None
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    return None


async def _wait_for_exit(process: psutil.Process) -> None:
    """Wait for a process that is not our child, without polling where Linux allows."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except (OSError, AttributeError):
        # No pidfd (old kernel): nothing signals a non-child's exit, so poll.
        while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        return
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, on_exit)
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def _read_exit_code(payload: Payload) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(payload.paths.exit_code.read_text().strip())
    return None


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
