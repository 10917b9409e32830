"""`GET /jobs/{id}/logs`: run.sh's stdout and stderr, as written, while it runs and after.

Where the bytes come from:
- while the job is on one of our clients, from the client's `/logs/{id}` (client/logs.py),
  which streams appended output for up to LONG_POLL seconds per request (`?follow=1` chains
  such requests, each resuming at the byte offset reached);
- once the job is final, from the server's own copy, `<job dir>/output.log`, fetched in the
  background by LogKeeper when this server sees the job end (so it outlives the client's
  retention); until that copy is there, from the client again;
- before dispatch there is nothing (with `follow`, the job is re-read, every 0.1 s at
  first, backing off to every DISPATCH_RECHECK_S, until it reaches a client).

The original client has no `/logs` (its run.sh output goes to its own log stream): its 404
ends a plain request with an empty body, and a follow waits for the job to end.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from job_orchestrator._loops import backoff_s, wait_any
from job_orchestrator.config import NodeConfig, ServerSettings
from job_orchestrator.errors import (
    ClientCallError,
    ClientLeftError,
    LogOffsetError,
    OutOfDescriptorsError,
    PayloadLostError,
    PermanentClientError,
    StoreError,
    TransientClientError,
)
from job_orchestrator.http_common import id_parameter, out_of_descriptors, status_body, too_busy
from job_orchestrator.server.dispatcher import Orchestrator
from job_orchestrator.server.jobfiles import log_path, temporary_name
from job_orchestrator.server.node_calls import NodeCalls
from job_orchestrator.server.nodes import recorded_node
from job_orchestrator.server.requesting import engine, lookup_job
from job_orchestrator.server.storage import JobRecord, Store
from job_orchestrator.server.waiting import HELD_RETRY_AFTER_S, HeldRequests, Hold, Refused
from job_orchestrator.status import TERMINAL, Status
from job_orchestrator.wire import LogQueryError, parse_offset

logger = logging.getLogger(__name__)
router = APIRouter()

#: How often a follower re-reads a job that is not on a client yet (nothing announces a
#: dispatch): soon after the upload at first, when most jobs start, then every second.
FIRST_RECHECK_S = 0.1
DISPATCH_RECHECK_S = 1.0
_CHUNK_BYTES = 64 * 1024
_FLAGS = {"1": True, "true": True, "0": False, "false": False}


def parse_follow(raw: str | None) -> bool:
    if raw is None:
        return False
    if raw.lower() not in _FLAGS:
        raise LogQueryError(f"Invalid follow {raw!r}: expected 1 or 0")
    return _FLAGS[raw.lower()]


def client_of(settings: ServerSettings, job: JobRecord) -> tuple[NodeConfig, str | None] | None:
    """The client a dispatched job is on (and its token), as the dispatcher chose it.

    None when there is none to ask: not dispatched, or its client is no longer configured
    (no other client is ever asked about it).
    """
    service = settings.services.get(job.service)
    if service is None or not job.dest_id:
        return None
    try:
        node = recorded_node(settings, job)
    except ClientLeftError:
        return None
    return (node, service.client_token) if node is not None else None


class LogKeeper:
    """Copies a job's log from its client to the server once the job is final.

    Registered as a Store final-status listener: the copy is made off the job's path, and
    readers fall back to the client until it is in place (it appears atomically, whole).
    """

    def __init__(self, settings: ServerSettings, store: Store, gateway: NodeCalls) -> None:
        self.settings = settings
        self.store = store
        self.gateway = gateway
        self._tasks: set[asyncio.Task[None]] = set()

    def job_final(self, job_id: int) -> None:
        task = asyncio.get_running_loop().create_task(self.keep(job_id), name=f"keep-log-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def keep(self, job_id: int) -> None:
        try:
            job = await self.store.get_job(job_id)
        except StoreError:
            logger.exception("could not read job %d to keep its log", job_id)
            return
        target = client_of(self.settings, job) if job is not None else None
        if job is None or target is None or job.status is Status.CLEANED:
            return
        node, token = target
        destination = log_path(job.loc)
        if destination.exists():
            return  # another replica sharing DATA_PATH kept it already
        # A name of its own: every replica hears of the final status and may copy at once.
        partial = temporary_name(destination)
        # A job killed by /terminate may still run its traps (the client's KILL_GRACE): the
        # client's answer then streams until the payload ends, within this deadline.
        deadline = time.monotonic() + 2 * self.settings.long_poll_s
        offset, final, cut = 0, False, False
        # A job writes its log unbounded: the server keeps at most this much of it.
        max_bytes = self.settings.log_keep_max_mb * 2**20 or None
        try:
            with partial.open("wb") as sink:
                while not final and (remaining := deadline - time.monotonic()) > 0:
                    async with self.gateway.open_log(
                        node,
                        job.dest_id,
                        offset=offset,
                        wait_s=min(self.settings.long_poll_s, remaining),
                        token=token,
                        key=job.dispatch_key,
                    ) as answer:
                        async for chunk in answer.chunks:
                            if max_bytes is not None and offset + len(chunk) > max_bytes:
                                await asyncio.to_thread(sink.write, chunk[: max_bytes - offset])
                                await asyncio.to_thread(sink.write, self._cut_note())
                                offset, cut = max_bytes, True
                                break
                            await asyncio.to_thread(sink.write, chunk)
                            offset += len(chunk)
                    final = answer.final or cut
            if final:
                os.replace(partial, destination)
            else:
                # Incomplete: readers go on asking the client, which still has the payload.
                logger.warning("log of job %d: its payload did not end in time", job_id)
        except (PayloadLostError, PermanentClientError) as error:
            # The original client (no /logs), or a payload already cleaned.
            logger.debug("no log to keep for job %d: %s", job_id, error)
        except (ClientCallError, OSError) as error:
            logger.warning("could not keep the log of job %d: %s", job_id, error)
        finally:
            partial.unlink(missing_ok=True)

    def _cut_note(self) -> bytes:
        limit = self.settings.log_keep_max_mb
        return (
            f"\n[job-orchestrator: log cut at {limit} MB (LOG_KEEP_MAX_MB); "
            "the rest was not kept]\n"
        ).encode()


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
            step.cancel()
            step.add_done_callback(_discard_outcome)


def _discard_outcome(future: asyncio.Future[bytes]) -> None:
    if not future.cancelled():
        future.exception()


async def log_chunks(
    orchestrator: Orchestrator, job_id: int, offset: int, follow: bool
) -> AsyncIterator[bytes]:
    """The job's log from `offset`; with `follow`, on until the job is final and all is sent.

    The first item is always b"", yielded once the answer may begin: before it, an offset
    past the log's current end raises LogOffsetError (once the answer has begun, it ends the
    answer: a log that started again after a dispatch), and without `follow` a client that
    cannot be reached raises TransientClientError.
    """
    draining = orchestrator.draining
    failures = 0
    recheck_s = FIRST_RECHECK_S
    begun = False
    while True:
        job = await orchestrator.store.get_job(job_id)
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
        target = client_of(orchestrator.settings, job)
        if target is None or job.status in (Status.QUEUED, Status.PROCESSING):
            if not begun:
                if offset > 0:
                    raise LogOffsetError(0)  # nothing was written yet
                begun = True
                yield b""
            if final or not follow or draining.is_set():
                return
            await orchestrator.wait_final(job_id, recheck_s)
            recheck_s = min(2 * recheck_s, DISPATCH_RECHECK_S)
            continue
        node, token = target
        asked_at, sent = time.monotonic(), offset
        try:
            async with orchestrator.gateway.open_log(
                node,
                job.dest_id,
                offset=offset,
                wait_s=orchestrator.settings.long_poll_s if follow else 0.0,
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
            await orchestrator.wait_final(job_id, orchestrator.settings.long_poll_s)
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


class _HeldStreamingResponse(StreamingResponse):
    """A follow's answer: its place under the caps is freed when the answer ends, however.

    Starlette cancels the stream when the caller disconnects; `__call__` returns (or raises)
    then, and the hold goes with it.
    """

    def __init__(self, content: AsyncIterator[bytes], hold: Hold, media_type: str) -> None:
        super().__init__(content, media_type=media_type)
        self._hold = hold

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._hold.release()


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


_JSON_STATUS = {"application/json": {"schema": {"$ref": "#/components/schemas/StatusBody"}}}
_LOG_PARAMETERS: list[dict[str, Any]] = [
    *id_parameter("Job identifier")["parameters"],
    {
        "name": "follow",
        "in": "query",
        "description": "1: stream new output as it is written until the job is final",
        "required": False,
        "schema": {"type": "integer", "enum": [0, 1]},
    },
    {
        "name": "offset",
        "in": "query",
        "description": "Byte offset in the log to start from (default 0)",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
    },
]


@router.get(
    "/jobs/{id}/logs",
    summary="run.sh's stdout and stderr, interleaved as written (not in the original)",
    tags=["jobs"],
    response_class=Response,
    openapi_extra={"parameters": _LOG_PARAMETERS},
    responses={
        200: {
            "description": "The log (empty before dispatch)",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        400: {
            "description": "The id is not a u32 (text), or a bad `follow`/`offset` (JSON)",
            "content": {**_JSON_STATUS, "text/plain": {}},
        },
        401: {
            "description": "No valid bearer token (only when API_TOKENS_FILE is set)",
            "content": _JSON_STATUS,
        },
        404: {"description": "No such job", "content": _JSON_STATUS},
        416: {
            "description": "`offset` is past the end of the log as it is now (also of a "
            "running job's); `Content-Range: bytes */<size>` gives its size",
            "content": _JSON_STATUS,
        },
        429: {
            "description": "Too many follows held (LOG_FOLLOW_MAX_*); see Retry-After",
            "content": _JSON_STATUS,
        },
        502: {"description": "The job's client could not be reached", "content": _JSON_STATUS},
        503: {"description": "No file descriptor left; see Retry-After", "content": _JSON_STATUS},
    },
)
async def job_logs(request: Request) -> Response:
    try:
        follow = parse_follow(request.query_params.get("follow"))
        offset = parse_offset(request.query_params.get("offset"))
    except LogQueryError as error:
        return status_body(0, Status.UNKNOWN, str(error), 400)
    job = await lookup_job(request)
    if isinstance(job, Response):
        return job
    hold: Hold | None = None
    if follow:
        follows: HeldRequests = request.app.state.follows
        taken = follows.take(job.user_id)
        if isinstance(taken, Refused):
            return too_busy(taken.message, 429, HELD_RETRY_AFTER_S, job.id, job.status)
        hold = taken
    chunks = log_chunks(engine(request), job.id, offset, follow)
    try:
        await anext(chunks)  # b"": the offset is within the log, the answer may begin
        if not follow:
            # Read the first bytes before answering, so an unreachable client is a clear 502.
            chunks = _prepend(await anext(chunks), chunks)
    except StopAsyncIteration:
        _release(hold)
        return Response(b"", media_type="text/plain")
    except LogOffsetError as error:
        _release(hold)
        message = f"offset {offset} is past the end of the log ({error.size} bytes)"
        response = status_body(job.id, job.status, message, 416)
        response.headers["Content-Range"] = f"bytes */{error.size}"
        return response
    except OutOfDescriptorsError:
        _release(hold)
        return out_of_descriptors(job.id, job.status)
    except BaseException:
        _release(hold)
        raise
    if hold is not None:
        return _HeldStreamingResponse(chunks, hold, media_type="text/plain")
    return StreamingResponse(chunks, media_type="text/plain")


def _release(hold: Hold | None) -> None:
    if hold is not None:
        hold.release()
