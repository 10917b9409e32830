"""Per-job uids (JOB_USERS=FIRST-LAST): every running payload holds a uid no other one holds.

`UidPool` is the allocation alone, pure: which uids are free, which payload holds which,
which wait to be reclaimed. `UidLeases` adds the waiting (a payload waits Prepared while the
pool is empty, woken when a uid comes back) and the I/O that reclaims a uid: a uid goes back
to the pool only once no process runs under it and it owns nothing outside payload
directories the client took back.

Reclaiming a uid (`reclaim`, in a thread):
1. A child that switches to the uid sends `kill(-1, SIGKILL)`: the kernel applies it to every
   process of that uid at once (never as root: -1 from root would be every process), so a
   fork bomb or a `setsid` escaper cannot outrun it; psutil then checks that none is left,
   and it is retried a few times.
2. The payload's `work/` and `tmp/` are given back to the client's uid (lchown, never
   following a link), so the next holder of the uid cannot reach them.
3. What the uid left in the shared writable places (/tmp, /var/tmp, /dev/shm, /run/lock) is
   removed (their top-level entries it owns). Not covered: System V IPC objects and POSIX
   message queues a job created, and world-writable directories elsewhere.

The gid is the uid: a private numeric group, no passwd entry needed. Choose a range no
account uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

#: The world-writable places a job may leave files in (beside its own directories).
SHARED_WRITABLE = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), Path("/run/lock"))
#: How often the kill is sent again while a process of the uid is still seen.
KILL_ATTEMPTS = 5
_KILL = shutil.which("kill") or "/bin/kill"


class UidPool:
    """Which uids of the range are free, held (by payload id) or waiting to be reclaimed."""

    def __init__(self, first: int, last: int) -> None:
        self.first = first
        self.last = last
        self._free: deque[int] = deque(range(first, last + 1))
        self._held: dict[int, int] = {}  # payload id -> uid
        self._reclaiming: set[int] = set()

    def __contains__(self, uid: int) -> bool:
        return self.first <= uid <= self.last

    def hold(self, payload_id: int, uid: int) -> None:
        """A re-adopted payload keeps the uid it runs under."""
        if uid not in self or uid in self._held.values():
            raise ValueError(f"uid {uid} cannot be held by payload {payload_id}")
        with contextlib.suppress(ValueError):
            self._free.remove(uid)
        self._reclaiming.discard(uid)
        self._held[payload_id] = uid

    def acquire(self, payload_id: int) -> int | None:
        """A free uid for the payload (the one it holds already, if any); None if none is free."""
        if payload_id in self._held:
            return self._held[payload_id]
        if not self._free:
            return None
        uid = self._free.popleft()
        self._held[payload_id] = uid
        return uid

    def release(self, payload_id: int) -> int | None:
        """The payload ended: its uid is to be reclaimed (not free yet); None if it held none."""
        uid = self._held.pop(payload_id, None)
        if uid is not None:
            self._reclaiming.add(uid)
        return uid

    def reclaimed(self, uid: int) -> None:
        """The uid runs nothing and owns nothing any more: free again (last in line)."""
        self._reclaiming.discard(uid)
        if uid in self and uid not in self._free and uid not in self._held.values():
            self._free.append(uid)

    def withhold(self, uid: int) -> None:
        """Keep a uid out of the pool (it could not be reclaimed)."""
        with contextlib.suppress(ValueError):
            self._free.remove(uid)
        self._reclaiming.add(uid)

    def held_by(self, payload_id: int) -> int | None:
        return self._held.get(payload_id)

    def unheld(self) -> list[int]:
        """Every uid of the range no payload holds (what a start-up reclaims)."""
        held = set(self._held.values())
        return [uid for uid in range(self.first, self.last + 1) if uid not in held]

    @property
    def free_count(self) -> int:
        return len(self._free)


class UidLeases:
    """The pool with waiting and reclaiming: what the runner uses."""

    def __init__(self, first: int, last: int) -> None:
        self.pool = UidPool(first, last)
        self._returned = asyncio.Event()

    async def acquire(self, payload_id: int, gave_up: asyncio.Event) -> int | None:
        """A uid for the payload, waiting while none is free; None once `gave_up` is set."""
        while True:
            uid = self.pool.acquire(payload_id)
            if uid is not None:
                return uid
            if gave_up.is_set():
                return None
            self._returned.clear()
            returned = asyncio.ensure_future(self._returned.wait())
            stopped = asyncio.ensure_future(gave_up.wait())
            try:
                await asyncio.wait({returned, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                returned.cancel()
                stopped.cancel()

    async def release(self, payload_id: int, directories: list[Path]) -> None:
        """The payload's execution ended: reclaim its uid, then give it back to the pool."""
        uid = self.pool.release(payload_id)
        if uid is None:
            return
        if await asyncio.to_thread(reclaim, uid, directories):
            self.pool.reclaimed(uid)
            self._returned.set()
        else:
            logger.error("uid %d still runs processes: kept out of the pool", uid)

    async def reclaim_unheld(self, owned: Iterable[Path]) -> None:
        """At start: reclaim every uid no re-adopted payload holds (a crash may have left
        escapers), and take back the payload directories such a uid still owns."""
        unheld = set(self.pool.unheld())
        for uid in await asyncio.to_thread(_reclaim_all, unheld, list(owned)):
            logger.error("uid %d still runs processes: kept out of the pool", uid)
            self.pool.withhold(uid)


def reclaim(uid: int, directories: list[Path]) -> bool:
    """Kill every process of `uid`, take back `directories`, remove what it left; True if
    nothing of it runs any more."""
    if not kill_all(uid):
        return False
    for directory in directories:
        take_back(directory)
    remove_left_behind({uid})
    return True


def kill_all(uid: int) -> bool:
    """SIGKILL every process of `uid` (as that uid: kill(-1)); True once psutil sees none.

    psutil looks first: a job that left nothing costs one scan and no spawn. (The kernel's
    own answer cannot stand in: kill(-1, 0) succeeds even when it may signal nothing.)
    """
    for attempt in range(KILL_ATTEMPTS):
        if not processes_of({uid}):
            return True
        _kill_as(uid)
        time.sleep(0.01 * attempt)
    return not processes_of({uid})


def _kill_as(uid: int) -> None:
    """As `uid`: SIGKILL to every process it may signal, all of that uid's but this one.

    RLIMIT_NPROC does not stop it: nothing forks after the switch.
    """
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [_KILL, "-9", "--", "-1"],
            user=uid,
            group=uid,
            extra_groups=[],
            cwd="/",
            env={},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )


def processes_of(uids: set[int]) -> list[psutil.Process]:
    """Living (non-zombie) processes whose real, effective or saved uid is one of `uids`."""
    found = []
    for process in psutil.process_iter(["uids", "status"]):
        with contextlib.suppress(psutil.Error):
            ids = process.info["uids"]
            if ids is None or process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if {ids.real, ids.effective, ids.saved} & uids:
                found.append(process)
    return found


def take_back(top: Path) -> None:
    """Give `top` and everything below it to the client's uid, never following a link."""
    me, group = os.geteuid(), os.getegid()
    with contextlib.suppress(FileNotFoundError):
        os.chown(top, me, group, follow_symlinks=False)
    for directory, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(directory, name), me, group, follow_symlinks=False)


def remove_left_behind(uids: set[int]) -> None:
    """Remove the entries of the shared writable places owned by one of `uids`."""
    for place in SHARED_WRITABLE:
        try:
            entries = list(os.scandir(place))
        except OSError:
            continue
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_uid not in uids:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)  # fd-based: follows no link
                else:
                    os.unlink(entry.path)


def _reclaim_all(uids: set[int], owned: list[Path]) -> list[int]:
    """Reclaim many uids with one scan of the processes; the uids that still run some."""
    running: set[int] = set()
    for process in processes_of(uids):
        with contextlib.suppress(psutil.Error):
            ids = process.uids()
            running |= {ids.real, ids.effective, ids.saved} & uids
    failed = [uid for uid in sorted(running) if not kill_all(uid)]
    for directory in owned:
        with contextlib.suppress(OSError):
            if directory.lstat().st_uid in uids:
                take_back(directory)
    remove_left_behind(uids)
    return failed
