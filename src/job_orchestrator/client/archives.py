"""Where the client builds its archives: threads of their own, cancellable, one at a time per
payload for partial copies, temporary files swept away.

Zipping a big tree takes minutes of a thread. On the default executor (asyncio.to_thread)
a few partial downloads would occupy every thread that validating, starting, killing and
finishing other payloads need, so archives get their own pools: one for results (a payload
cannot finish without one) and a smaller one for partial copies (anyone may ask for those,
any number of times). A build stops when its awaiting task is cancelled (the requester went
away, the client is stopping), so no thread is left zipping for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from job_orchestrator.archive import TEMP_SUFFIX, ArchiveSummary, write_directory_zip

__all__ = ["PARTIAL_PREFIX", "Archiver", "sweep_temporaries"]

logger = logging.getLogger(__name__)

#: Partial copies are built beside the work directory as ``.partial-<random>.zip``.
PARTIAL_PREFIX = ".partial-"
_RESULT_WORKERS = 2
_PARTIAL_WORKERS = 2


class Archiver:
    def __init__(self) -> None:
        self._results = ThreadPoolExecutor(_RESULT_WORKERS, thread_name_prefix="result-zip")
        self._partials = ThreadPoolExecutor(_PARTIAL_WORKERS, thread_name_prefix="partial-zip")
        self._cancels: set[threading.Event] = set()
        #: One partial build per payload at a time; later requests wait for their turn.
        self._partial_locks: dict[int, asyncio.Lock] = {}
        self._partial_waiters: dict[int, int] = {}

    async def result(
        self, source: Path, destination: Path, *, max_total_bytes: int | None
    ) -> ArchiveSummary:
        return await self._build(
            self._results, source, destination, max_total_bytes=max_total_bytes, manifest=True
        )

    async def partial(
        self, payload_id: int, source: Path, destination: Path, *, max_total_bytes: int | None
    ) -> ArchiveSummary:
        with self._turn(payload_id) as lock:
            async with lock:
                return await self._build(
                    self._partials,
                    source,
                    destination,
                    max_total_bytes=max_total_bytes,
                    manifest=True,
                )

    @contextlib.contextmanager
    def _turn(self, payload_id: int) -> Iterator[asyncio.Lock]:
        lock = self._partial_locks.setdefault(payload_id, asyncio.Lock())
        self._partial_waiters[payload_id] = self._partial_waiters.get(payload_id, 0) + 1
        try:
            yield lock
        finally:
            self._partial_waiters[payload_id] -= 1
            if not self._partial_waiters[payload_id]:
                del self._partial_waiters[payload_id]
                del self._partial_locks[payload_id]

    async def _build(
        self,
        pool: ThreadPoolExecutor,
        source: Path,
        destination: Path,
        *,
        max_total_bytes: int | None,
        manifest: bool,
    ) -> ArchiveSummary:
        cancel = threading.Event()
        self._cancels.add(cancel)
        work = functools.partial(
            write_directory_zip,
            source,
            destination,
            max_total_bytes=max_total_bytes,
            manifest=manifest,
            cancel=cancel,
        )
        future = pool.submit(work)
        try:
            # Cancelling the await cancels a build still queued.
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # A running one sees `cancel` within a chunk and removes its temporary file; wait
            # for that, so that no archive it might still have completed outlives us.
            cancel.set()
            if not future.cancelled():
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(asyncio.wrap_future(future))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(destination)  # one syscall; not worth a thread
            raise
        finally:
            self._cancels.discard(cancel)

    def close(self) -> None:
        """Cancel every build; threads still running stop within a chunk."""
        for cancel in list(self._cancels):
            cancel.set()
        self._results.shutdown(wait=False, cancel_futures=True)
        self._partials.shutdown(wait=False, cancel_futures=True)


def sweep_temporaries(data_path: Path) -> int:
    """Remove the archives a stopped or killed client left half-built or unsent."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for root in data_path.iterdir():
            if not root.name.isdigit() or not root.is_dir():
                continue
            for entry in root.iterdir():
                name = entry.name
                leftover = name.startswith(PARTIAL_PREFIX) and name.endswith(".zip")
                half_built = name.startswith(".") and ".zip." in name and name.endswith(TEMP_SUFFIX)
                if (leftover or half_built) and entry.is_file():
                    entry.unlink(missing_ok=True)
                    removed += 1
    if removed:
        logger.info("removed %d leftover temporary archives", removed)
    return removed
