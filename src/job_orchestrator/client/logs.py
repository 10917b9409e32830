"""run.sh's output on the client: `GET /logs/{id}`, and the last line a failure reports.

The runner points run.sh's stdout and stderr at one file, `DATA_PATH/<id>/output.log`,
opened once in append mode and shared by both streams, so the lines are interleaved exactly
as the script wrote them and the file keeps growing even while the client is down (the
script writes to it directly; nothing relays its output). The file sits beside the work
directory, so the result ZIP never contains it, as the original's never contained the
script's output.

`GET /logs/{id}?offset=N&wait=S` (ours; the original client has no such route) answers the
bytes from offset N on. With `wait`, it keeps the answer open for up to S seconds and streams
what is appended, ending early once the payload is final and everything is sent. The file is
checked for new bytes every CHECK_INTERVAL_S (no inotify: an fstat of a descriptor that stays
open, cheap enough) and at once when the payload's status changes.
`X-Orchestrator-Status` carries the payload's status as it was before the first byte was
read: a final one means the answer holds the whole rest of the log. An offset past the log's
current end (also of a running payload's: a resume never asks for more than was sent) is
answered 416 with `Content-Range: bytes */<size>`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from job_orchestrator._loops import wait_any
from job_orchestrator.client.dispatch_keys import refuse_other_dispatch
from job_orchestrator.client.payload import EMPTY_PAYLOAD
from job_orchestrator.client.registry import Registry
from job_orchestrator.client.state import client_state
from job_orchestrator.http_common import id_parameter, json_response, path_id
from job_orchestrator.status import Status
from job_orchestrator.wire import LOG_STATUS_HEADER, LogQueryError, parse_offset

logger = logging.getLogger(__name__)


router = APIRouter()

#: The longest `?wait=` on /logs, in seconds.
MAX_LOG_WAIT_S = 60
#: How often a held /logs answer looks for appended bytes.
CHECK_INTERVAL_S = 0.2
_CHUNK_BYTES = 64 * 1024
#: At most this much is read per thread hop (and held in memory).
_ROUND_BYTES = 1024 * 1024
_SECONDS = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")

_LOG_PARAMETERS: list[dict[str, Any]] = [
    *id_parameter("Payload identifier")["parameters"],
    {
        "name": "offset",
        "in": "query",
        "description": "Byte offset in the log to start from (default 0)",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
    },
    {
        "name": "wait",
        "in": "query",
        "description": f"Seconds (at most {MAX_LOG_WAIT_S}) to keep streaming appended "
        "output; the answer ends earlier once the payload is final",
        "required": False,
        "schema": {"type": "number", "minimum": 0, "maximum": MAX_LOG_WAIT_S},
    },
]


def parse_log_wait(raw: str | None) -> float:
    if raw is None:
        return 0.0
    if _SECONDS.fullmatch(raw) is None or not 0 <= (value := float(raw)) <= MAX_LOG_WAIT_S:
        raise LogQueryError(
            f"Invalid wait {raw!r}: expected a number of seconds from 0 to {MAX_LOG_WAIT_S}"
        )
    return value


def _open_at(log: Path, offset: int) -> io.FileIO | None:
    try:
        source = io.FileIO(log, "r")
    except FileNotFoundError:
        return None  # not started yet (or never will be)
    source.seek(offset)
    return source


def _log_size(log: Path) -> int:
    try:
        return log.stat().st_size
    except OSError:
        return 0  # not started yet (nothing to read either way)


def _read_to_end(source: io.FileIO) -> list[bytes]:
    """What the file holds past the position now (up to _ROUND_BYTES), in chunks."""
    end = min(os.fstat(source.fileno()).st_size, source.tell() + _ROUND_BYTES)
    chunks = []
    while (left := end - source.tell()) > 0 and (chunk := source.read(min(_CHUNK_BYTES, left))):
        chunks.append(chunk)
    return chunks


async def stream_log(
    registry: Registry,
    payload_id: int,
    log: Path,
    offset: int,
    wait_s: float,
    draining: asyncio.Event,
) -> AsyncIterator[bytes]:
    """The log from `offset`; then, for up to `wait_s`, what is appended until the end."""
    deadline = time.monotonic() + wait_s
    source: io.FileIO | None = None
    try:
        with registry.watch(payload_id) as changed:
            while True:
                changed.clear()
                # Read the status first: once final, nothing writes to the log any more, so
                # reading to its end afterwards sends all of it.
                current = registry.get(payload_id)
                final = current is None or current.status.is_terminal()
                if source is None:
                    source = await asyncio.to_thread(_open_at, log, offset)
                while source is not None and (
                    chunks := await asyncio.to_thread(_read_to_end, source)
                ):
                    for chunk in chunks:
                        yield chunk
                remaining = deadline - time.monotonic()
                if final or remaining <= 0 or draining.is_set():
                    return
                await wait_any(
                    changed.wait(),
                    draining.wait(),
                    timeout_s=min(CHECK_INTERVAL_S, remaining),
                )
    finally:
        if source is not None:
            source.close()


@router.get(
    "/logs/{id}",
    summary="run.sh's stdout and stderr from a byte offset, streamed (not in the original)",
    response_class=Response,
    responses={
        200: {
            "description": "The log's bytes; `X-Orchestrator-Status` is the payload's status",
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        },
        400: {"description": "Bad id, offset or wait", "content": {"text/plain": {}}},
        401: {"description": "No valid bearer token (only when CLIENT_TOKEN is set)"},
        404: {"description": "No such payload, or it was cleaned"},
        416: {"description": "The offset is past the end of the log (`Content-Range: bytes */N`)"},
        409: {"description": "The payload holds another dispatch key"},
    },
    openapi_extra={"parameters": _LOG_PARAMETERS},
)
async def payload_log(request: Request) -> Response:
    state = client_state(request)
    payload_id = path_id(request)
    try:
        offset = parse_offset(request.query_params.get("offset"))
        wait_s = parse_log_wait(request.query_params.get("wait"))
    except LogQueryError as error:
        return PlainTextResponse(str(error), status_code=400)
    payload = state.registry.lookup(payload_id)
    if payload is None or payload.status is Status.CLEANED:
        return json_response(EMPTY_PAYLOAD, 404)
    if (refusal := refuse_other_dispatch(request, payload)) is not None:
        return refusal
    if offset > 0 and offset > (size := await asyncio.to_thread(_log_size, payload.paths.log)):
        return json_response(EMPTY_PAYLOAD, 416, headers={"Content-Range": f"bytes */{size}"})
    logger.debug("log of payload %d asked from offset %d", payload_id, offset)
    return StreamingResponse(
        stream_log(state.registry, payload_id, payload.paths.log, offset, wait_s, state.draining),
        media_type="application/octet-stream",
        headers={LOG_STATUS_HEADER: payload.status.wire},
    )
