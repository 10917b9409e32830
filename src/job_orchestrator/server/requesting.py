"""What every route does before its own work: find the app's context, the caller and the job.

Shared by the routes of api.py, views.py, logs.py, services_view.py and status_page.py.
"""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection
from starlette.types import Scope

from job_orchestrator.errors import StoreError, StoreUnavailableError
from job_orchestrator.http_common import path_id, status_body
from job_orchestrator.server.context import AppContext, app_context
from job_orchestrator.server.principal import ANYONE, COOKIE, AuthRefusedError, Principal
from job_orchestrator.server.storage import JobRecord
from job_orchestrator.status import Status

logger = logging.getLogger(__name__)

__all__ = [
    "ANYONE",
    "Principal",
    "authenticate",
    "context",
    "database_unavailable",
    "lookup_job",
    "not_found",
]

#: Where a request's caller is kept once decided (the disclosure middleware asks first).
_CALLER = "job_orchestrator.caller"


def context(request: Request) -> AppContext:
    """What the route may use of the server (context.py)."""
    return app_context(request.app)


#: Seconds a client is told to wait while the database cannot be reached.
DATABASE_RETRY_AFTER_S = 5


def database_unavailable() -> JSONResponse:
    """What any request answers while the database cannot be reached (never a 500)."""
    response = status_body(
        0, Status.UNKNOWN, "The database is unavailable; retry in a few seconds", 503
    )
    response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_S)
    return response


def not_found(job_id: int) -> JSONResponse:
    return status_body(0, Status.UNKNOWN, f"Job {job_id} not found in the database", 404)


def caller_of(scope: Scope) -> Principal | AuthRefusedError:
    """Who is calling (or why nobody is accepted), decided once per request."""
    known: Principal | AuthRefusedError | None = scope.get(_CALLER)
    if known is not None:
        return known
    authenticator = app_context(scope["app"]).authenticator
    connection = HTTPConnection(scope)
    try:
        found: Principal | AuthRefusedError = authenticator.principal(
            connection.headers.get("authorization"),
            connection.cookies.get(COOKIE),
            scope.get("method", "GET"),
        )
    except AuthRefusedError as error:
        found = error
    scope[_CALLER] = found
    return found


def authenticate(request: Request) -> Principal | JSONResponse:
    """The caller (`ANYONE` when authentication is off), or the 401 to answer."""
    caller = caller_of(request.scope)
    if isinstance(caller, AuthRefusedError):
        response = status_body(0, Status.UNKNOWN, str(caller), 401)
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    return caller


async def lookup_job(request: Request) -> JobRecord | JSONResponse:
    """The job of the path's id, if it exists and the caller may see it (others' look absent)."""
    caller = authenticate(request)
    if isinstance(caller, JSONResponse):
        return caller
    job_id = path_id(request)
    try:
        job = await context(request).store.get_job(job_id)
    except StoreUnavailableError:
        raise  # answered 503 by the app's handler
    except StoreError:
        logger.exception("lookup of job %d failed", job_id)
        return status_body(0, Status.UNKNOWN, "Internal server error", 500)
    if job is None or not caller.may_act_for(job.user_id):
        return not_found(job_id)
    return job
