"""Moving big files between disk and a socket without stalling the event loop on either.

Writing a fresh page-cache page costs more than receiving it (this VM: ~0.8 s of system time
per 390 MiB, several times the socket's share), so a write done on the loop stops the socket
for its whole length. These helpers put the disk on a worker thread, one batch at a time, and
let the loop go on with the socket meanwhile: the writer collects what arrives while its last
batch is written; the reader has the next chunk read while the current one is sent. Memory
stays bounded (one batch being written plus one being collected; one chunk being sent plus
one read ahead). Small files never leave the loop: the writer writes a body of less than one
batch inline on close, as a plain write would have, so a small result costs no thread hop.
Shared by the server (dispatch bodies, result downloads) and the client (uploads, ZIP
answers).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

__all__ = ["CHUNK_BYTES", "ThreadedWriter", "read_ahead"]

#: A batch written, or a chunk read, per thread hop: 400 hops for a 400 MB file.
CHUNK_BYTES = 1024 * 1024
_THREADS = 8


#: The threads that read and write; their own, so a busy default executor (the client's
#: subprocess work, the server's database) never holds up a transfer.
_POOL = ThreadPoolExecutor(_THREADS, thread_name_prefix="file-io")


def _write_all(sink: BinaryIO, batch: list[bytes | memoryview]) -> None:
    for data in batch:
        sink.write(data)


class ThreadedWriter:
    """Appends to an open binary file, in batches of `batch_bytes`, on worker threads.

    Queued data must not change afterwards. Only the batch before the current one is ever
    waited for; OSError from a write comes out of a later call. Before the file is closed,
    call `finish` (writes the rest and waits), `finish_now` (the same, blocking: for
    synchronous callers) or, on failure, `abandon` (waits for a write still running).
    """

    def __init__(self, sink: BinaryIO, *, batch_bytes: int = CHUNK_BYTES) -> None:
        self._sink = sink
        self._batch_bytes = batch_bytes
        self._batch: list[bytes | memoryview] = []
        self._batched = 0
        self._inflight: Future[None] | None = None
        self._threaded = False

    @property
    def sink(self) -> BinaryIO:
        """The file written to (the caller closes it, after `finish` or `abandon`)."""
        return self._sink

    def queue(self, data: bytes | memoryview) -> None:
        """Add data to the current batch (no I/O, so synchronous callbacks may call it)."""
        if data:
            self._batch.append(data)
            self._batched += len(data)

    @property
    def batch_full(self) -> bool:
        return self._batched >= self._batch_bytes

    async def write(self, data: bytes | memoryview) -> None:
        self.queue(data)
        if self.batch_full:
            await self.flush()

    async def flush(self) -> None:
        """Hand the current batch to a thread, once the one before it is written."""
        if self._inflight is not None:
            # Cleared only once written: if this wait is cancelled, `abandon` still waits.
            await asyncio.wrap_future(self._inflight)
            self._inflight = None
        if self._batch:
            batch, self._batch, self._batched = self._batch, [], 0
            self._inflight = _POOL.submit(_write_all, self._sink, batch)
            self._threaded = True

    async def finish(self) -> None:
        """Write everything queued and wait for it. A body that never filled a batch is
        written here, on the loop: one short write, cheaper than a thread hop."""
        if not self._threaded:
            self.finish_now()
            return
        await self.flush()
        await self.flush()

    def finish_now(self) -> None:
        """`finish`, blocking: waits for the write in flight, writes the rest here."""
        if self._inflight is not None:
            self._inflight.result()
            self._inflight = None
        batch, self._batch, self._batched = self._batch, [], 0
        _write_all(self._sink, batch)

    async def abandon(self) -> None:
        """Drop what is queued; wait (even if cancelled) for a write still running."""
        self._batch, self._batched = [], 0
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(asyncio.wrap_future(inflight))


def _open_and_read(path: Path, size: int) -> tuple[BinaryIO, bytes]:
    source = path.open("rb")
    try:
        return source, source.read(size)
    except BaseException:
        source.close()
        raise


async def read_ahead(path: Path, *, chunk_bytes: int = CHUNK_BYTES) -> AsyncGenerator[bytes, None]:
    """The bytes of `path` in chunks of `chunk_bytes` (the last one shorter, or empty), each
    read on a worker thread while the caller still handles the chunk before it.

    The file is opened on the thread that reads the first chunk, so a small file costs one
    hop. Close the generator (`aclose`) when stopping early: a read still in flight is
    waited for before the file is closed.
    """
    source, chunk = await asyncio.wrap_future(_POOL.submit(_open_and_read, path, chunk_bytes))
    pending: Future[bytes] | None = None
    try:
        while True:
            if len(chunk) < chunk_bytes:
                yield chunk
                return
            pending = _POOL.submit(source.read, chunk_bytes)
            yield chunk
            chunk = await asyncio.wrap_future(pending)
            pending = None
    finally:
        if pending is not None:
            # A cancelled wait cancels only a read not yet started; one running is awaited.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(asyncio.wrap_future(pending))
        source.close()
