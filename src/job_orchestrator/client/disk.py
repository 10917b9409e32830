"""Disk space: a reserve no job may take from the client, and a size limit per job.

A job that fills DATA_PATH's file system fails every other job on the node and the client
itself (its state files, the results it zips). So the client keeps DISK_RESERVE_MB free:

- every DISK_CHECK_INTERVAL the watcher reads the free space (one statvfs);
- while it is below the reserve, /submit answers 507 and /health says why, so the server
  sends new payloads to another client or keeps them Queued (reason `client_disk_full`), and
  takes them again by itself once a check finds the space back;
- a job that eats into the reserve is stopped and ends Failed, with a message that says the
  disk was full: when the free space falls below the reserve, the job that wrote the most
  since it was last above is stopped at once (even if the disk is so full it can write no
  more); while it stays below, any other job that still writes is stopped too. Jobs that do
  not write carry on: the free space may fall for reasons that are no job's. Sizes are
  measured (one `du` of the running payloads' directories) only while the free space is below
  twice the reserve, so a healthy node spends one statvfs per check; when it falls from
  beyond twice the reserve to below it within one check (nothing measured in between), the
  largest payload is taken for the writer: one that filled the disk to the last byte can
  grow no more, and must not be missed;
- a stopped payload's files are released once the server has what it can keep: right after
  a partial copy of it was sent whole (streamed, so building it needs no disk space), or
  COLLECTED_KEEP_S after its outcome was collected (retention.py).

JOB_MAX_DISK_MB measures every running payload at every check, and stops one whose directory
takes more (Failed). It is enforced by polling, so a job can pass it by what it writes in one
interval; a job's writes outside its directory are not counted (under bwrap its /tmp is in
its directory; without it, /tmp is the node's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from job_orchestrator._loops import wait_any
from job_orchestrator.client.metrics import ClientMetrics
from job_orchestrator.client.registry import Registry
from job_orchestrator.config import ClientSettings
from job_orchestrator.status import Status

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024
#: How the message of a job stopped for JOB_MAX_DISK_MB begins.
LIMIT = "disk limit exceeded"


def _mb(size: int) -> str:
    return f"{size / _MIB:.0f} MB"


@dataclass(frozen=True, slots=True)
class DiskCheck:
    """The free space of DATA_PATH's file system against the reserve."""

    free_bytes: int
    reserve_bytes: int

    @property
    def low(self) -> bool:
        return self.free_bytes < self.reserve_bytes

    def describe(self) -> str:
        return (
            f"disk full: {_mb(self.free_bytes)} free on DATA_PATH, below DISK_RESERVE_MB "
            f"({_mb(self.reserve_bytes)}); new payloads are refused"
        )


@dataclass(slots=True)
class Episode:
    """The payload sizes a check compares with: `before` (the last check above the reserve,
    if it measured) and `previous` (the last check); whether a job was stopped since the free
    space fell below the reserve."""

    before: dict[int, int] = field(default_factory=dict)
    previous: dict[int, int] = field(default_factory=dict)
    stopped: bool = False


def to_stop(
    check: DiskCheck, episode: Episode, sizes: Mapping[int, int], limit_bytes: int | None
) -> dict[int, str]:
    """The payloads to stop, with their final message, and the episode updated to `sizes`.

    Over the per-job limit; or, below the reserve, the one that grew the most since the free
    space was last above it (the first stop) and then any that grew since the last check.
    Without a measurement from above the reserve, a payload's whole size counts as grown.
    """
    stops: dict[int, str] = {}
    if limit_bytes is not None:
        for payload_id, size in sizes.items():
            if size > limit_bytes:
                stops[payload_id] = (
                    f"{LIMIT}: the job's files took {_mb(size)}, more than "
                    f"JOB_MAX_DISK_MB ({_mb(limit_bytes)})"
                )
    if not check.low:
        episode.before, episode.previous, episode.stopped = dict(sizes), dict(sizes), False
        return stops
    writing = [i for i, size in sizes.items() if size > episode.previous.get(i, size)]
    if not episode.stopped:
        # A payload not measured above the reserve (started since, or the free space fell
        # from beyond twice the reserve within one check) wrote all it holds since.
        grown = {i: size - episode.before.get(i, 0) for i, size in sizes.items()}
        biggest = max(grown, key=lambda i: grown[i], default=None)
        writing = [biggest] if biggest is not None and grown[biggest] > 0 else []
    reason = (
        f"disk full: the job wrote while the client's free disk space ({_mb(check.free_bytes)}) "
        f"was below its reserve (DISK_RESERVE_MB, {_mb(check.reserve_bytes)})"
    )
    for payload_id in writing:
        stops.setdefault(payload_id, reason)
    episode.stopped = episode.stopped or bool(writing)
    episode.previous = dict(sizes)
    return stops


def free_bytes(path: Path) -> int:
    """Space an unprivileged writer may still use on `path`'s file system."""
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


async def disk_usage(roots: Iterable[Path]) -> dict[Path, int]:
    """Bytes allocated under each root (one `du` for all: GNU du walks any depth and counts
    a hard-linked file once)."""
    paths = [str(root) for root in roots]
    if not paths:
        return {}
    process = await asyncio.create_subprocess_exec(
        "du",
        "-s",
        "-B1",
        "--one-file-system",
        "--",
        *paths,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,  # files vanishing under a running job
    )
    out, _ = await process.communicate()
    sizes: dict[Path, int] = {}
    for line in out.decode(errors="replace").splitlines():
        size, _, name = line.partition("\t")
        with contextlib.suppress(ValueError):
            sizes[Path(name)] = int(size)
    return sizes


class DiskWatcher:
    def __init__(
        self,
        settings: ClientSettings,
        registry: Registry,
        stop: Callable[[int, str], None],
        metrics: ClientMetrics,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self._stop = stop
        self._metrics = metrics
        self.latest: DiskCheck | None = None
        self._episode = Episode()

    @property
    def refusal(self) -> str | None:
        """Why new payloads are refused now (None: they are not)."""
        latest = self.latest
        return latest.describe() if latest is not None and latest.low else None

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.check_once()
            except OSError:
                logger.exception("checking the disk space failed")
            await wait_any(stopping.wait(), timeout_s=self.settings.disk_check_interval_s)

    async def check_once(self) -> DiskCheck:
        check = DiskCheck(
            await asyncio.to_thread(free_bytes, self.settings.data_path),
            self.settings.disk_reserve_bytes,
        )
        self._log_change(check)
        self.latest = check
        self._metrics.disk_free.set(check.free_bytes)
        limit = self.settings.job_max_disk_bytes
        if limit is None and check.free_bytes >= 2 * check.reserve_bytes:
            self._episode = Episode()
            return check
        running = {
            payload.id: payload
            for payload in self.registry.with_status(Status.PREPARED, Status.RUNNING)
            if payload.handle is not None and payload.disk_stop is None
        }
        usage = await disk_usage(payload.paths.root for payload in running.values())
        sizes = {
            payload_id: usage[payload.paths.root]
            for payload_id, payload in running.items()
            if payload.paths.root in usage
        }
        for payload_id, reason in to_stop(check, self._episode, sizes, limit).items():
            self._metrics.disk_stops.labels(
                "limit" if reason.startswith(LIMIT) else "reserve"
            ).inc()
            self._stop(payload_id, reason)
        return check

    def _log_change(self, check: DiskCheck) -> None:
        was_low = self.latest is not None and self.latest.low
        if check.low and not was_low:
            logger.warning("%s", check.describe())
        elif was_low and not check.low:
            logger.info(
                "disk space is back (%s free, reserve %s): new payloads are accepted",
                _mb(check.free_bytes),
                _mb(check.reserve_bytes),
            )
