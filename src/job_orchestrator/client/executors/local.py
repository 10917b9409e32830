"""Runs payloads on this machine: `bash run.sh` in its own process group.

How the script is wrapped (limits, bubblewrap, another user) is client/sandbox.py's business.

The script runs under a tiny bash wrapper that writes run.sh's exit status to a file beside
the work directory. The client awaits its own children, but because the status also reaches
disk, a payload whose client restarted can be re-adopted: its process group is not the
client's, it keeps running, and its true status is read when it ends (watched via a pidfd).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Collection
from typing import Any

import psutil

from job_orchestrator.client.executors.base import Handle, LaunchError, Outcome
from job_orchestrator.client.payload import Payload
from job_orchestrator.client.sandbox import (
    WRAPPER_NAME,
    command_for,
    hand_over,
    job_environment,
    own_uid_environment,
    prepare_own_uid,
    private_tmp,
    recorded_exit_code,
    user_for,
)
from job_orchestrator.config import ClientSettings

KIND = "local"


class LocalExecutor:
    kind = KIND
    runs_at_launch = True
    log_is_local = True

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        #: The processes this client started (awaited directly, not via a pidfd).
        self._children: dict[int, asyncio.subprocess.Process] = {}
        #: When each of them was started, on time.time(): the handle's psutil start time
        #: identifies the process but is off by up to a second (/proc/stat's whole-second
        #: boot time), and the payload's start is reported to the server (and its limit counts).
        self._launched_at: dict[int, float] = {}
        psutil.cpu_percent(interval=None)  # starts the first measuring window of /load

    async def launch(self, payload: Payload) -> Handle:
        paths = payload.paths
        try:
            if self.settings.job_users and payload.uid is None:
                # The runner gives one; never fall back to the client's own uid.
                raise LaunchError("no uid of JOB_USERS was given to the payload")
            private_tmp(self.settings, paths.tmp)
            user = user_for(self.settings, payload.uid)
            environment = job_environment(os.environ)
            # The client's own umask is 077 with JOB_USERS; the job gets the usual one.
            options: dict[str, Any] = {"umask": 0o022} if payload.uid is not None else {}
            if payload.uid is not None and user is not None:
                await asyncio.to_thread(prepare_own_uid, paths.root, paths.work, paths.tmp, user)
                environment = own_uid_environment(environment, paths.work, paths.tmp)
            elif user is not None:  # else nothing to hand over: no thread hop
                await asyncio.to_thread(hand_over, [paths.work, paths.tmp], user)
            # One file for both streams: interleaved as written (client/logs.py serves it).
            with paths.log.open("ab") as log:
                process = await asyncio.create_subprocess_exec(
                    *command_for(self.settings, paths.work, paths.exit_code, paths.tmp, user),
                    cwd=paths.work,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    env=environment,
                    start_new_session=True,
                    **options,
                )
        except OSError as error:
            raise LaunchError(f"could not start run.sh: {error.strerror}") from error
        self._children[process.pid] = process
        self._launched_at[process.pid] = time.time()
        return Handle(KIND, process.pid, _process_start_time(process.pid))

    async def started(self, handle: Handle) -> float:
        return self._launched_at.get(handle.id) or handle.started_at or time.time()

    async def wait(self, payload: Payload, handle: Handle) -> Outcome:
        child = self._children.get(handle.id)
        if child is not None:
            try:
                returncode: int | None = await child.wait()
            finally:
                self._children.pop(handle.id, None)
                self._launched_at.pop(handle.id, None)
            # run.sh is done: whatever it left in the background goes too.
            _signal_group(handle.id, signal.SIGKILL)
            return Outcome(returncode)
        process = _live_process(handle)
        if process is not None:
            await _wait_for_exit(process)
            _signal_group(handle.id, signal.SIGKILL)
        return Outcome(await recorded_exit_code(payload.paths.exit_code))

    def reattach(self, payload: Payload, handle: Handle) -> bool:
        return _live_process(handle) is not None

    def find_launched(self, payload: Payload) -> Handle | None:
        # The wrapper's argv ends with its name and the payload's exit file (sandbox.py).
        tail = [WRAPPER_NAME, str(payload.paths.exit_code)]
        for process in psutil.process_iter(["cmdline", "create_time"]):
            with contextlib.suppress(psutil.Error):
                cmdline = process.info["cmdline"] or []
                if cmdline[-2:] == tail and process.status() != psutil.STATUS_ZOMBIE:
                    return Handle(KIND, process.pid, float(process.info["create_time"]))
        if payload.paths.exit_code.is_file():
            # It ran to its end while the client was down: id 0 is no process, so wait()
            # reads the status it left.
            return Handle(KIND, 0)
        return None

    async def terminate(self, handle: Handle, grace_s: float) -> None:
        if handle.id not in self._children and _live_process(handle) is None:
            return
        pgid = handle.id
        if not _signal_group(pgid, signal.SIGTERM):
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if not _group_alive(pgid):
                return
        _signal_group(pgid, signal.SIGKILL)

    def abandon(self, handle: Handle) -> None:
        _signal_group(handle.id, signal.SIGKILL)

    async def remove_strays(self, keep: Collection[int]) -> None:
        return None  # nothing outlives a payload here but its own directory

    async def load_percent(self) -> float:
        # CPU use since the previous call: no sampling sleep on the request, no idle cost.
        return float(psutil.cpu_percent(interval=None))

    async def capacity(self, running: int, pending: int) -> int | None:
        return self.settings.max_concurrent

    async def close(self) -> None:
        return None


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


def _live_process(handle: Handle) -> psutil.Process | None:
    """The payload's wrapper process if it is still the same, living process (no PID reuse)."""
    if not handle.id:
        return None
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(handle.id)
        if handle.started_at is not None and abs(process.create_time() - handle.started_at) > 0.5:
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
