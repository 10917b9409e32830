"""The original's routes: parse the request, call a service, map the outcome to HTTP.

What they may use of the server is the app's context (context.py); their OpenAPI texts are
in openapi.py.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)

from job_orchestrator._descriptors import RETRY_AFTER_S as DESCRIPTORS_RETRY_AFTER_S
from job_orchestrator._descriptors import is_exhaustion
from job_orchestrator._loops import wait_any
from job_orchestrator.errors import (
    ClientCallError,
    ClientLeftError,
    OutOfDescriptorsError,
    PartialTooLargeError,
    PayloadLostError,
    StoreError,
)
from job_orchestrator.file_responses import zip_response
from job_orchestrator.http_common import (
    HEALTHY,
    PING,
    json_response,
    out_of_descriptors,
    status_body,
    too_busy,
)
from job_orchestrator.server.jobfiles import PARTIAL_NAME, RESULT_NAME
from job_orchestrator.server.openapi import (
    DOWNLOAD_PARAMETERS,
    DOWNLOAD_RESPONSES,
    HEALTH_RESPONSES,
    JOB_ID,
    PARTIAL_RESPONSES,
    TERMINATE_RESPONSES,
    UPLOAD_FORM,
    UPLOAD_RESPONSES,
)
from job_orchestrator.server.requesting import (
    authenticate,
    context,
    database_unavailable,
    lookup_job,
    not_found,
)
from job_orchestrator.server.termination import Termination
from job_orchestrator.server.upload_service import (
    Reason,
    UploadAccepted,
    UploadRefused,
    UploadRequest,
)
from job_orchestrator.server.waiting import (
    HELD_RETRY_AFTER_S,
    Refused,
    WaitValueError,
    parse_wait,
)
from job_orchestrator.status import TERMINAL, Status
from job_orchestrator.wire import MESSAGE_HEADER

logger = logging.getLogger(__name__)
router = APIRouter()

#: Seconds a refused upload is told to wait (503 Retry-After).
_RETRY_AFTER_S = 5
#: Seconds an upload refused for a full queue (QUEUE_MAX_PER_USER) is told to wait (429).
_QUEUE_RETRY_AFTER_S = 30


@router.get("/", summary="Ping", tags=["health"])
async def ping() -> JSONResponse:
    return json_response(PING)


@router.get(
    "/health",
    summary="Database health",
    tags=["health"],
    responses=HEALTH_RESPONSES,
)
async def health(request: Request) -> Response:
    try:
        await context(request).store.ping()
    except StoreError:
        return Response(status_code=503)
    return json_response(HEALTHY)


@router.post(
    "/upload",
    summary="Submit a job: its files (one of them run.sh), user_id and service",
    tags=["files"],
    status_code=201,
    responses=UPLOAD_RESPONSES,
    openapi_extra=UPLOAD_FORM,
)
async def upload(request: Request) -> Response:
    caller = authenticate(request)
    if isinstance(caller, JSONResponse):
        return caller
    outcome = await context(request).uploads.receive(
        UploadRequest(
            body=_body(request),
            content_type=request.headers.get("content-type"),
            declared_length=request.headers.get("content-length", ""),
            caller_address=request.client.host if request.client else "",
            caller=caller,
        ),
    )
    if isinstance(outcome, UploadAccepted):
        return status_body(outcome.job_id, Status.QUEUED, "Job successfully uploaded", 201)
    return _refusal(outcome)


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        yield chunk


#: The status of each refusal that is just the usual error body.
_REFUSAL_STATUS = {
    Reason.INVALID: 400,
    Reason.FORBIDDEN: 403,
    Reason.TOO_LARGE: 413,
    Reason.FAILED: 500,
}


def _refusal(refused: UploadRefused) -> Response:
    """The answer to a refused upload: the original's texts and codes, and ours."""
    match refused.reason:
        case Reason.BAD_BOUNDARY:
            return PlainTextResponse(refused.message, status_code=400)
        case Reason.IDLE:
            response = status_body(0, Status.UNKNOWN, refused.message, 408)
            # The sender has stalled: close rather than wait for the rest of its body.
            response.headers["Connection"] = "close"
            return response
        case Reason.QUEUE_FULL:
            return too_busy(refused.message, 429, _QUEUE_RETRY_AFTER_S)
        case Reason.BUSY:
            return too_busy(refused.message, 503, _RETRY_AFTER_S)
        case Reason.DATABASE_UNAVAILABLE:
            return database_unavailable()
        case Reason.OUT_OF_DESCRIPTORS:
            return out_of_descriptors()
        case _:
            return status_body(0, Status.UNKNOWN, refused.message, _REFUSAL_STATUS[refused.reason])


async def _until_disconnected(request: Request) -> None:
    # A GET's one body message comes first; the next receive blocks until the peer leaves.
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.get(
    "/download/{id}",
    summary="The result ZIP of a Completed job, otherwise its status",
    tags=["files"],
    openapi_extra=DOWNLOAD_PARAMETERS,
    responses=DOWNLOAD_RESPONSES,
)
async def download(request: Request) -> Response:
    wait = request.query_params.get("wait")
    try:
        wait_s = None if wait is None else parse_wait(wait)
    except WaitValueError as error:
        return status_body(0, Status.UNKNOWN, str(error), 400)
    job = await lookup_job(request)
    if isinstance(job, Response):
        return job
    if wait_s and job.status not in TERMINAL:
        ctx = context(request)
        hold = ctx.waits.take(job.user_id)
        if isinstance(hold, Refused):
            return too_busy(hold.message, 429, HELD_RETRY_AFTER_S, job.id, job.status)
        with hold:
            await wait_any(ctx.engine.wait_final(job.id, wait_s), _until_disconnected(request))
            if await request.is_disconnected():
                logger.debug("wait on job %d ended: the caller disconnected", job.id)
                return Response(status_code=204)  # nobody is left to read it
        job = await lookup_job(request)
        if isinstance(job, Response):
            return job
    if job.status is not Status.COMPLETED:
        return status_body(job.id, job.status, job.message, 200)
    result = Path(job.loc) / RESULT_NAME
    # The message of a Completed job says what was left out of its archive, if anything.
    headers = {MESSAGE_HEADER: quote(job.message, safe=" :/,.;()'-_=")} if job.message else None
    try:
        # Raises OSError when missing or not a file (opening a directory fails too).
        return zip_response(result, headers=headers, filename=f"job-{job.id}.zip")
    except OSError as error:
        if is_exhaustion(error):
            return out_of_descriptors(job.id, job.status)
        return status_body(job.id, job.status, "Error reading output file", 500)


@router.get(
    "/download_partial/{id}",
    summary="A ZIP of the job's files as they are now (running or finished)",
    tags=["files"],
    openapi_extra=JOB_ID,
    responses=PARTIAL_RESPONSES,
)
async def download_partial(request: Request) -> Response:
    job = await lookup_job(request)
    if isinstance(job, Response):
        return job
    if job.status in TERMINAL:
        for name in (PARTIAL_NAME, RESULT_NAME):
            kept = Path(job.loc) / name
            if kept.is_file():
                return FileResponse(kept, media_type="application/zip")
    if job.dest_id == 0:
        return status_body(job.id, Status.UNKNOWN, "Job payload not found on client", 404)
    try:
        client = context(request).fleet.client_for(job)
    except ClientLeftError as error:
        return status_body(job.id, Status.UNKNOWN, f"Job payload not reachable: {error}", 404)
    if client is None:
        return status_body(job.id, Status.UNKNOWN, "Invalid service configuration", 400)
    stack = contextlib.AsyncExitStack()
    try:
        upstream = await stack.enter_async_context(
            client.open_partial(job.dest_id, key=job.dispatch_key)
        )
    except PayloadLostError:
        await stack.aclose()
        return status_body(job.id, Status.UNKNOWN, "Job payload not found on client", 404)
    except PartialTooLargeError as error:
        await stack.aclose()
        return status_body(job.id, Status.UNKNOWN, str(error), 413)
    except OutOfDescriptorsError:
        await stack.aclose()
        return out_of_descriptors(job.id, job.status)
    except ClientCallError as error:
        await stack.aclose()
        logger.warning("partial download of job %d failed: %s", job.id, error)
        return status_body(job.id, Status.UNKNOWN, "Error retrieving partial data from client", 500)

    async def relay() -> AsyncIterator[bytes]:
        async with stack:
            async for chunk in upstream.chunks:
                yield chunk

    message = upstream.message_header
    headers = {MESSAGE_HEADER: message} if message else None
    return StreamingResponse(relay(), media_type="application/zip", headers=headers)


@router.post(
    "/terminate/{id}",
    summary="Cancel a queued job or kill a running one",
    tags=["files"],
    openapi_extra=JOB_ID,
    responses=TERMINATE_RESPONSES,
)
async def terminate(request: Request) -> Response:
    job = await lookup_job(request)
    if isinstance(job, Response):
        return job
    outcome = await context(request).engine.terminate(job.id)
    if outcome is None:
        return not_found(job.id)
    if outcome.result is Termination.OUT_OF_DESCRIPTORS:
        return too_busy(outcome.message, 503, DESCRIPTORS_RETRY_AFTER_S, job.id, outcome.status)
    return status_body(
        job.id, outcome.status, outcome.message, TERMINATION_HTTP_STATUS[outcome.result]
    )


#: The original's codes for the outcomes of /terminate.
TERMINATION_HTTP_STATUS = {
    Termination.DONE: 200,
    Termination.ALREADY_FINAL: 409,
    Termination.NOT_TERMINABLE: 409,
    Termination.KILL_FAILED: 500,
    Termination.OUT_OF_DESCRIPTORS: 503,
}
