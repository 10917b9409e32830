"""`GET /jobs/{id}/logs`: run.sh's stdout and stderr, as written, while it runs and after.

Where the bytes come from (log_stream.py):
- while the job is on one of our clients, from the client's `/logs/{id}` (client/logs.py),
  which streams appended output for up to LONG_POLL seconds per request (`?follow=1` chains
  such requests, each resuming at the byte offset reached);
- once the job is final, from the server's own copy, `<job dir>/output.log`, fetched in the
  background by LogKeeper (log_keeper.py) when this server sees the job end (so it outlives
  the client's retention); until that copy is there, from the client again;
- before dispatch there is nothing (with `follow`, the job is re-read, every 0.1 s at
  first, backing off to every DISPATCH_RECHECK_S, until it reaches a client).

The original client has no `/logs` (its run.sh output goes to its own log stream): its 404
ends a plain request with an empty body, and a follow waits for the job to end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from job_orchestrator.errors import LogOffsetError, OutOfDescriptorsError
from job_orchestrator.http_common import out_of_descriptors, status_body, too_busy
from job_orchestrator.server.log_stream import log_chunks
from job_orchestrator.server.openapi import JOB_ID, JSON_STATUS, UNAUTHORIZED
from job_orchestrator.server.requesting import context, lookup_job
from job_orchestrator.server.waiting import HELD_RETRY_AFTER_S, Hold, Refused
from job_orchestrator.status import Status
from job_orchestrator.wire import LogQueryError, parse_offset

router = APIRouter()

_FLAGS = {"1": True, "true": True, "0": False, "false": False}


def parse_follow(raw: str | None) -> bool:
    if raw is None:
        return False
    if raw.lower() not in _FLAGS:
        raise LogQueryError(f"Invalid follow {raw!r}: expected 1 or 0")
    return _FLAGS[raw.lower()]


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


_LOG_PARAMETERS: list[dict[str, Any]] = [
    *JOB_ID["parameters"],
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
            "content": {**JSON_STATUS, "text/plain": {}},
        },
        401: UNAUTHORIZED,
        404: {"description": "No such job", "content": JSON_STATUS},
        416: {
            "description": "`offset` is past the end of the log as it is now (also of a "
            "running job's); `Content-Range: bytes */<size>` gives its size",
            "content": JSON_STATUS,
        },
        429: {
            "description": "Too many follows held (LOG_FOLLOW_MAX_*); see Retry-After",
            "content": JSON_STATUS,
        },
        502: {"description": "The job's client could not be reached", "content": JSON_STATUS},
        503: {"description": "No file descriptor left; see Retry-After", "content": JSON_STATUS},
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
    ctx = context(request)
    if follow:
        taken = ctx.follows.take(job.user_id)
        if isinstance(taken, Refused):
            return too_busy(taken.message, 429, HELD_RETRY_AFTER_S, job.id, job.status)
        hold = taken
    chunks = log_chunks(ctx.logs, job.id, offset, follow)
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
