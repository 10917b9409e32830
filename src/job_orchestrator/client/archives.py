"""Where the client builds its archives: threads of their own, cancellable, one at a time per
payload for partial copies, temporary files swept away.

A result is built into a file (the server downloads it, maybe more than once). A partial copy
is streamed: zipped by a thread into a pipe whose other end is the HTTP answer, so it takes
no disk space. That is what lets a client whose disk a job filled still hand the server what
the job wrote (disk.py).

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
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from job_orchestrator.archive import (
    TEMP_SUFFIX,
    ArchiveError,
    ArchiveSummary,
    stream_directory_zip,
    write_directory_zip,
)

__all__ = ["PARTIAL_PREFIX", "Archiver", "PartialStream", "sweep_temporaries"]

logger = logging.getLogger(__name__)

#: Partial copies were built beside the work directory as ``.partial-<random>.zip`` by
#: earlier versions; `sweep_temporaries` still removes such leftovers.
PARTIAL_PREFIX = ".partial-"
_PIPE_READ_BYTES = 1024 * 1024
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
        self, payload_id: int, source: Path, *, max_total_bytes: int | None
    ) -> PartialStream:
        """A partial copy of `source`, streaming; it holds the payload's turn until closed.

        Raises (ResultTooLargeError, ArchiveError) before the first byte when the files are
        too large or cannot be read at all.
        """
        turn = contextlib.AsyncExitStack()
        await turn.enter_async_context(self._turn(payload_id))
        stream = PartialStream(
            self._partials, self._cancels, source, max_total_bytes, release=turn.aclose
        )
        try:
            await stream.start()
        except BaseException:
            await stream.aclose()
            raise
        return stream

    @contextlib.asynccontextmanager
    async def _turn(self, payload_id: int) -> AsyncIterator[None]:
        lock = self._partial_locks.setdefault(payload_id, asyncio.Lock())
        self._partial_waiters[payload_id] = self._partial_waiters.get(payload_id, 0) + 1
        try:
            async with lock:
                yield
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

    def building_partial(self, payload_id: int) -> bool:
        """Whether a partial copy of the payload is being sent (or waits to be)."""
        return payload_id in self._partial_locks

    def close(self) -> None:
        """Cancel every build; threads still running stop within a chunk."""
        for cancel in list(self._cancels):
            cancel.set()
        self._results.shutdown(wait=False, cancel_futures=True)
        self._partials.shutdown(wait=False, cancel_futures=True)


class PartialStream:
    """A ZIP zipped by a thread into a pipe, read here chunk by chunk.

    `start` waits for the first bytes, so an error the build meets before writing anything
    (too large, unreadable) is raised there, while an HTTP status can still say so. An error
    after that ends the iteration with the error: the answer is cut short, and the requester
    sees a truncated body, never a ZIP it could mistake for whole.
    """

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        cancels: set[threading.Event],
        source: Path,
        max_total_bytes: int | None,
        *,
        release: Callable[[], Awaitable[object]],
    ) -> None:
        self._pool = pool
        self._cancels = cancels
        self._source = source
        self._limit = max_total_bytes
        self._release: Callable[[], Awaitable[object]] | None = release
        self._cancel = threading.Event()
        self._future: Future[ArchiveSummary] | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._reader = asyncio.StreamReader(limit=_PIPE_READ_BYTES)
        self._first = b""
        self._write_fd = -1
        #: Set once every byte was read and the build succeeded.
        self.complete = False

    async def start(self) -> None:
        read_fd, write_fd = os.pipe()
        loop = asyncio.get_running_loop()
        try:
            self._transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(self._reader), os.fdopen(read_fd, "rb", 0)
            )
        except BaseException:
            os.close(write_fd)
            raise
        self._cancels.add(self._cancel)
        self._write_fd = write_fd
        try:
            self._future = self._pool.submit(self._produce, write_fd)
        except BaseException:  # the pool is shut down: the client is stopping
            os.close(write_fd)
            raise
        self._first = await self._reader.read(_PIPE_READ_BYTES)
        if not self._first:
            # Nothing came: the build failed before its first byte.
            await asyncio.wrap_future(self._future)
            raise ArchiveError(f"cannot archive {self._source}: nothing was written")

    def _produce(self, write_fd: int) -> ArchiveSummary:
        with os.fdopen(write_fd, "wb") as sink:
            return stream_directory_zip(
                self._source, sink, max_total_bytes=self._limit, manifest=True, cancel=self._cancel
            )

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            if self._first:
                yield self._first
            while chunk := await self._reader.read(_PIPE_READ_BYTES):
                yield chunk
            assert self._future is not None
            await asyncio.wrap_future(self._future)  # raises what the build met
            self.complete = True
        except (GeneratorExit, asyncio.CancelledError):
            logger.info("partial zip of %s abandoned: requester gone", self._source.parent)
            raise
        except Exception as error:
            logger.warning("partial zip of %s cut short: %s", self._source.parent, error)
            raise
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop the build if it still runs; free the pipe and the payload's turn."""
        self._cancel.set()
        if self._transport is not None:
            # A writer still at work then fails with EPIPE at its next write.
            self._transport.close()
            self._transport = None
        if self._future is not None:
            if self._future.cancel():  # never started: its end of the pipe is ours to close
                os.close(self._write_fd)
            ended = asyncio.wrap_future(self._future)
            # Its error (EPIPE, once we stopped reading) is expected: taken here, so that a
            # close cancelled while it waits leaves no "exception never retrieved".
            ended.add_done_callback(_taken)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(ended)
            self._future = None
        self._cancels.discard(self._cancel)
        release, self._release = self._release, None
        if release is not None:
            await release()


def _taken(future: asyncio.Future[ArchiveSummary]) -> None:
    if not future.cancelled():
        future.exception()


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
