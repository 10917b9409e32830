"""What every route does before its own work: find the engine, the caller and the job.

Shared by the routes of api.py, views.py, logs.py and status_page.py.
"""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.responses import JSONResponse

from job_orchestrator.errors import StoreError, StoreUnavailableError
from job_orchestrator.http_common import path_id, status_body
from job_orchestrator.server.auth import UserTokens
from job_orchestrator.server.dispatcher import Orchestrator
from job_orchestrator.server.storage import JobRecord
from job_orchestrator.status import Status

logger = logging.getLogger(__name__)

#: The caller when API_TOKENS_FILE is not set: anyone may see and act on every job.
ANYONE = object()


def engine(request: Request) -> Orchestrator:
    orchestrator: Orchestrator = request.app.state.orchestrator
    return orchestrator


def not_found(job_id: int) -> JSONResponse:
    return status_body(0, Status.UNKNOWN, f"Job {job_id} not found in the database", 404)


def authenticate(request: Request) -> int | object | JSONResponse:
    """The caller's user id when API_TOKENS_FILE is set, `ANYONE` when it is not."""
    tokens: UserTokens | None = request.app.state.user_tokens
    if tokens is None:
        return ANYONE
    user_id = tokens.user_for(request.headers.get("authorization"))
    if user_id is None:
        response = status_body(0, Status.UNKNOWN, "missing or invalid bearer token", 401)
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    return user_id


async def lookup_job(request: Request) -> JobRecord | JSONResponse:
    """The job of the path's id, if it exists and the caller may see it (others' look absent)."""
    caller = authenticate(request)
    if isinstance(caller, JSONResponse):
        return caller
    job_id = path_id(request)
    try:
        job = await engine(request).store.get_job(job_id)
    except StoreUnavailableError:
        raise  # answered 503 by the app's handler
    except StoreError:
        logger.exception("lookup of job %d failed", job_id)
        return status_body(0, Status.UNKNOWN, "Internal server error", 500)
    if job is None or (caller is not ANYONE and job.user_id != caller):
        return not_found(job_id)
    return job
