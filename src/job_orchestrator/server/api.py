"""The user-facing routes: parse the request, call the engine, map the outcome to HTTP."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
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
    U32_SCHEMA,
    id_parameter,
    json_response,
    out_of_descriptors,
    status_body,
    too_busy,
)
from job_orchestrator.server.callbacks import MAX_URL_CHARS
from job_orchestrator.server.jobfiles import PARTIAL_NAME, RESULT_NAME
from job_orchestrator.server.requesting import (
    authenticate,
    engine,
    lookup_job,
    not_found,
)
from job_orchestrator.server.termination import Termination
from job_orchestrator.server.upload_service import (
    Reason,
    UploadAccepted,
    UploadRefused,
    UploadRequest,
    receive_upload,
)
from job_orchestrator.server.waiting import (
    HELD_RETRY_AFTER_S,
    MAX_WAIT_S,
    HeldRequests,
    Refused,
    WaitValueError,
    parse_wait,
)
from job_orchestrator.status import TERMINAL, Status
from job_orchestrator.wire import MESSAGE_HEADER

logger = logging.getLogger(__name__)
router = APIRouter()

# The original's component schemas, as utoipa 5 derives them from its Rust structs.
_I32 = {"type": "integer", "format": "int32"}
_STRING = {"type": "string"}
_STATUS_REF = {"$ref": "#/components/schemas/Status"}
_COMPONENTS: dict[str, Any] = {
    "Health": {
        "type": "object",
        "required": ["status", "database"],
        "properties": {"status": _STRING, "database": _STRING},
    },
    "Job": {
        "type": "object",
        "required": ["id", "user_id", "service", "status", "loc", "dest_id"],
        "properties": {
            "id": U32_SCHEMA,
            "user_id": _I32,
            "service": _STRING,
            "status": _STATUS_REF,
            "loc": _STRING,
            "dest_id": U32_SCHEMA,
        },
    },
    "Status": {"type": "string", "enum": [s.wire for s in Status]},
    "StatusBody": {
        "type": "object",
        "required": ["id", "status", "message"],
        "properties": {"id": U32_SCHEMA, "status": _STATUS_REF, "message": _STRING},
    },
}
_JOB_ID = id_parameter("Job identifier")
_JSON_STATUS = {"application/json": {"schema": {"$ref": "#/components/schemas/StatusBody"}}}
_ZIP = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
_PATH_ERROR = {"description": "The id is not a u32", "content": {"text/plain": {}}}
_UNAUTHORIZED = {
    "description": "No valid bearer token (only when API_TOKENS_FILE is set)",
    "content": _JSON_STATUS,
}


#: The text fields /upload reads; any other is counted against the body limit and dropped.
#: Seconds a refused upload is told to wait (503 Retry-After).
_RETRY_AFTER_S = 5
#: Seconds an upload refused for a full queue (QUEUE_MAX_PER_USER) is told to wait (429).
_QUEUE_RETRY_AFTER_S = 30


#: Seconds a client is told to wait while the database cannot be reached.
DATABASE_RETRY_AFTER_S = 5


def database_unavailable() -> JSONResponse:
    """What any request answers while the database cannot be reached (never a 500)."""
    response = status_body(
        0, Status.UNKNOWN, "The database is unavailable; retry in a few seconds", 503
    )
    response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_S)
    return response


@router.get("/", summary="Ping", tags=["health"])
async def ping() -> JSONResponse:
    return json_response(PING)


@router.get(
    "/health",
    summary="Database health",
    tags=["health"],
    responses={
        200: {
            "description": "Service is healthy",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
        },
        503: {"description": "The database does not answer"},
    },
)
async def health(request: Request) -> Response:
    try:
        await engine(request).store.ping()
    except StoreError:
        return Response(status_code=503)
    return json_response(HEALTHY)


@router.post(
    "/upload",
    summary="Submit a job: its files (one of them run.sh), user_id and service",
    tags=["files"],
    status_code=201,
    responses={
        201: {"description": "Job queued", "content": _JSON_STATUS},
        400: {"description": "Invalid form", "content": {**_JSON_STATUS, "text/plain": {}}},
        401: _UNAUTHORIZED,
        403: {
            "description": "user_id is not the token's user, nor one of a portal token's",
            "content": _JSON_STATUS,
        },
        408: {"description": "The body stalled (UPLOAD_IDLE_TIMEOUT)", "content": _JSON_STATUS},
        413: {"description": "Body over the upload limit", "content": _JSON_STATUS},
        429: {
            "description": "The user has QUEUE_MAX_PER_USER jobs queued; see Retry-After",
            "content": _JSON_STATUS,
        },
        500: {"description": "Storage failure", "content": _JSON_STATUS},
        503: {
            "description": (
                "Too many uploads in progress (UPLOAD_MAX_*), or no file descriptor left; "
                "see Retry-After"
            ),
            "content": _JSON_STATUS,
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["service"],
                        "properties": {
                            "user_id": {"type": "string", "pattern": "^[+-]?[0-9]+$"},
                            "service": {"type": "string"},
                            "callback_url": {
                                "type": "string",
                                "format": "uri",
                                "maxLength": MAX_URL_CHARS,
                                "description": (
                                    "http(s) URL POSTed the job's signed final status "
                                    "(needs CALLBACK_SECRET; see docs/api.md, Callbacks)"
                                ),
                            },
                            "file": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            },
                        },
                    }
                }
            },
        }
    },
)
async def upload(request: Request) -> Response:
    caller = authenticate(request)
    if isinstance(caller, JSONResponse):
        return caller
    outcome = await receive_upload(
        engine(request),
        request.app.state.callbacks,
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


_WAIT_PARAMETER = {
    "name": "wait",
    "in": "query",
    "description": (
        "Hold the request until the job is final or this many seconds pass (at most "
        f"{MAX_WAIT_S}), then answer as without it"
    ),
    "required": False,
    "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
}


async def _until_disconnected(request: Request) -> None:
    # A GET's one body message comes first; the next receive blocks until the peer leaves.
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.get(
    "/download/{id}",
    summary="The result ZIP of a Completed job, otherwise its status",
    tags=["files"],
    openapi_extra={"parameters": [*_JOB_ID["parameters"], _WAIT_PARAMETER]},
    responses={
        200: {
            "description": "ZIP when Completed, else the status",
            "content": {**_ZIP, **_JSON_STATUS},
        },
        400: {
            "description": "The id is not a u32 (text), or `wait` is out of range (JSON)",
            "content": {**_JSON_STATUS, "text/plain": {}},
        },
        401: _UNAUTHORIZED,
        404: {"description": "No such job", "content": _JSON_STATUS},
        429: {
            "description": "Too many `wait`s held (WAIT_MAX_*); see Retry-After",
            "content": _JSON_STATUS,
        },
        500: {"description": "Result unreadable", "content": _JSON_STATUS},
        503: {"description": "No file descriptor left; see Retry-After", "content": _JSON_STATUS},
    },
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
        waits: HeldRequests = request.app.state.waits
        hold = waits.take(job.user_id)
        if isinstance(hold, Refused):
            return too_busy(hold.message, 429, HELD_RETRY_AFTER_S, job.id, job.status)
        with hold:
            await wait_any(engine(request).wait_final(job.id, wait_s), _until_disconnected(request))
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
    openapi_extra=_JOB_ID,
    responses={
        200: {"description": "ZIP", "content": _ZIP},
        400: _PATH_ERROR,
        401: _UNAUTHORIZED,
        404: {"description": "No such job, or not on a client", "content": _JSON_STATUS},
        413: {
            "description": "The files exceed the client's RESULT_MAX_MB",
            "content": _JSON_STATUS,
        },
        500: {"description": "The client could not be read", "content": _JSON_STATUS},
    },
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
        client = engine(request).fleet.client_for(job)
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
    openapi_extra=_JOB_ID,
    responses={
        200: {"description": "Terminated", "content": _JSON_STATUS},
        400: _PATH_ERROR,
        401: _UNAUTHORIZED,
        404: {"description": "No such job", "content": _JSON_STATUS},
        409: {"description": "Already finished", "content": _JSON_STATUS},
        500: {"description": "The client could not kill it", "content": _JSON_STATUS},
    },
)
async def terminate(request: Request) -> Response:
    job = await lookup_job(request)
    if isinstance(job, Response):
        return job
    outcome = await engine(request).terminate(job.id)
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


def openapi_components() -> dict[str, Any]:
    return _COMPONENTS
