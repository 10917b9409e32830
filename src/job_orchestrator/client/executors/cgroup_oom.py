"""Whether a container's memory cgroup killed a process for memory, for engines that do not say.

Docker reports it (`State.OOMKilled`); Podman 4 leaves the flag false (its conmon's `oom`
marker, which the executor reads from the payload's exit directory, is the other way). The
cgroup's counter (`oom_kill` in `memory.oom_control` on v1, in `memory.events` on v2) tells,
but only while the cgroup exists, and the engine removes it as soon as the container ends,
which is when a payload whose run.sh was killed for memory ends. So the counter is watched
while the container runs: on v1 through the memory controller's eventfd notification
(registered in `cgroup.event_control`), which fires at the OOM itself; on v2 it is read on
every tick of the executor and once more at the end.

A v1 notifier also fires once when its cgroup is removed: a notification after which the
counter cannot be read is an OOM only if it is not the sole one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_of(pid: int) -> str:
    """The memory cgroup of a process (v1's memory line, else v2's), "" if unknown.

    Podman reports a container's cgroup only once it runs; after `init` its process (runc's
    init, waiting for `start`) is already in it.
    """
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return ""
    unified = ""
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
        if controllers == "":
            unified = path
    return unified


class OomWatch:
    """Watches one container's memory cgroup for OOM kills while it exists."""

    def __init__(self, cgroup_path: str, root: Path = CGROUP_ROOT) -> None:
        relative = cgroup_path.lstrip("/")
        v1 = root / "memory" / relative
        self._v1 = v1.is_dir()
        self._dir = v1 if self._v1 else root / relative
        self._counter = self._dir / ("memory.oom_control" if self._v1 else "memory.events")
        self.seen = False
        self._notifications = 0
        self._eventfd: int | None = None
        self._control: int | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the counter now (an OOM may predate us) and, on v1, ask to be notified."""
        self.check()
        if not self._v1 or self.seen:
            return
        try:
            self._control = os.open(self._counter, os.O_RDONLY | os.O_CLOEXEC)
            self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            with open(self._dir / "cgroup.event_control", "w") as control:
                control.write(f"{self._eventfd} {self._control}")
        except OSError as error:
            logger.debug("no OOM notification for %s: %s", self._dir, error)
            self.close()
            return
        loop.add_reader(self._eventfd, self._notified)
        logger.debug("watching %s for OOM kills", self._dir)

    def _notified(self) -> None:
        """A v1 notification: an OOM while the cgroup exists; else its removal (or both)."""
        if self._eventfd is None:
            return
        with contextlib.suppress(BlockingIOError):
            self._notifications += os.eventfd_read(self._eventfd)
        if not self._notifications:
            return
        logger.debug("%s: %d notification(s)", self._dir, self._notifications)
        if self._read_counter() is not None:
            # The cgroup is there, so this is no removal: an OOM (the kill itself may still
            # be on its way, so the counter can read 0 yet).
            self.seen = True
        elif self._notifications > 1:
            self.seen = True  # its removal notified us too, and an OOM before it

    def check(self) -> bool:
        """Read what is pending and the counter if the cgroup still exists; whether an OOM
        kill was seen."""
        self._notified()
        counted = self._read_counter()
        if counted:
            self.seen = True
        return self.seen

    async def settle(self) -> bool:
        """Once the container ended: whether it saw an OOM kill. A single notification with
        the cgroup gone is an OOM or the removal: the removal's own, if that one was the
        OOM, follows within moments."""
        if self.check() or self._eventfd is None:
            return self.seen
        if self._notifications == 1 and self._read_counter() is None:
            await asyncio.sleep(0.3)
            self.check()
        return self.seen

    def _read_counter(self) -> int | None:
        try:
            text = self._counter.read_text()
        except OSError:
            return None
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill" and value.strip().isdigit():
                return int(value)
        return 0

    def close(self) -> None:
        if self._eventfd is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(self._eventfd)
            os.close(self._eventfd)
            self._eventfd = None
        if self._control is not None:
            os.close(self._control)
            self._control = None
