"""A job's log as bytes from an offset, with or without `follow` (the stream behind
`GET /jobs/{id}/logs`, server/logs.py): from the server's kept copy once the job is final,
else from the job's client, else nothing yet."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from job_orchestrator._loops import backoff_s, forget, wait_any
from job_orchestrator.config import ServerSettings
from job_orchestrator.errors import (
    LogOffsetError,
    PayloadLostError,
    PermanentClientError,
    TransientClientError,
)
from job_orchestrator.server.jobfiles import log_path
from job_orchestrator.server.log_keeper import client_of
from job_orchestrator.server.node_calls import NodeCalls
from job_orchestrator.server.storage import Store
from job_orchestrator.status import TERMINAL, Status

logger = logging.getLogger(__name__)

#: How often a follower re-reads a job that is not on a client yet (nothing announces a
#: dispatch): soon after the upload at first, when most jobs start, then every second.
FIRST_RECHECK_S = 0.1
DISPATCH_RECHECK_S = 1.0
_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class LogSources:
    """Where a log is read from, and what a follower waits on (built in the app's lifespan)."""

    settings: ServerSettings
    store: Store
    gateway: NodeCalls
    #: The engine's wait for a job's final status (Orchestrator.wait_final): (job_id, timeout_s).
    wait_final: Callable[[int, float], Awaitable[None]]
    #: Set when the server stops: held answers end at once.
    draining: asyncio.Event


async def _file_chunks(path: Path, offset: int) -> AsyncIterator[bytes]:
    with io.FileIO(path, "r") as source:
        source.seek(offset)
        while chunk := await asyncio.to_thread(source.read, _CHUNK_BYTES):
            yield chunk


async def _until_set(stop: asyncio.Event, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`chunks`, cut short when `stop` is set (a server stop ends held answers at once)."""
    stopping = asyncio.ensure_future(stop.wait())
    step: asyncio.Future[bytes] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(chunks))
            await asyncio.wait({step, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                await asyncio.gather(step, return_exceptions=True)
                return
            try:
                yield step.result()
            except StopAsyncIteration:
                return
    finally:
        stopping.cancel()
        if step is not None and not step.done():
            # The follower went away while a read was pending: that read ends with the
            # relay's connection, and its error is nobody's to report.
            forget(step)


async def log_chunks(
    sources: LogSources, job_id: int, offset: int, follow: bool
) -> AsyncIterator[bytes]:
    """The job's log from `offset`; with `follow`, on until the job is final and all is sent.

    The first item is always b"", yielded once the answer may begin: before it, an offset
    past the log's current end raises LogOffsetError (once the answer has begun, it ends the
    answer: a log that started again after a dispatch), and without `follow` a client that
    cannot be reached raises TransientClientError.
    """
    draining = sources.draining
    failures = 0
    recheck_s = FIRST_RECHECK_S
    begun = False
    while True:
        job = await sources.store.get_job(job_id)
        if job is None:
            return
        final = job.status in TERMINAL
        kept = log_path(job.loc)
        if final and kept.is_file():
            size = (await asyncio.to_thread(kept.stat)).st_size
            if offset > size:
                if begun:
                    return
                raise LogOffsetError(size)
            if not begun:
                yield b""
            async for chunk in _file_chunks(kept, offset):
                yield chunk
            return
        target = client_of(sources.settings, job)
        if target is None or job.status in (Status.QUEUED, Status.PROCESSING):
            if not begun:
                if offset > 0:
                    raise LogOffsetError(0)  # nothing was written yet
                begun = True
                yield b""
            if final or not follow or draining.is_set():
                return
            await sources.wait_final(job_id, recheck_s)
            recheck_s = min(2 * recheck_s, DISPATCH_RECHECK_S)
            continue
        node, token = target
        asked_at, sent = time.monotonic(), offset
        try:
            async with sources.gateway.open_log(
                node,
                job.dest_id,
                offset=offset,
                wait_s=sources.settings.long_poll_s if follow else 0.0,
                token=token,
                key=job.dispatch_key,
            ) as answer:
                if not begun:
                    begun = True
                    yield b""
                async for chunk in _until_set(draining, answer.chunks):
                    offset += len(chunk)
                    yield chunk
            failures = 0
            if answer.final or not follow or draining.is_set():
                return
            if offset == sent and time.monotonic() - asked_at < DISPATCH_RECHECK_S:
                # An empty answer that did not wait (a client that is stopping): pause.
                await wait_any(draining.wait(), timeout_s=DISPATCH_RECHECK_S)
        except LogOffsetError:
            if begun:
                return
            raise
        except (PayloadLostError, PermanentClientError):
            # The original client has no /logs; ours may have cleaned the payload.
            if not begun:
                begun = True
                yield b""
            if final or not follow or draining.is_set():
                return
            await sources.wait_final(job_id, sources.settings.long_poll_s)
        except TransientClientError as error:
            if not follow:
                raise
            if not begun:
                begun = True
                yield b""
            if final or draining.is_set():
                return
            failures += 1
            logger.info("log of job %d: client unreachable (%s); retrying", job_id, error)
            await wait_any(draining.wait(), timeout_s=backoff_s(failures))
