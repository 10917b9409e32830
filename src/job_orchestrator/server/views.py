"""Read views of jobs: `GET /jobs/{id}` (one job, and why it waits) and `GET /jobs` (a list).

Neither is in the original; both follow its ownership rules (API_TOKENS_FILE: someone else's
job is answered exactly like an unknown id) and its error body shape.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from job_orchestrator.errors import StoreError
from job_orchestrator.http_common import json_response, status_body
from job_orchestrator.server.node_wire import base_url
from job_orchestrator.server.openapi import JOB_ID, JSON_STATUS, PATH_ERROR, UNAUTHORIZED
from job_orchestrator.server.queue_view import queue_standing
from job_orchestrator.server.requesting import authenticate, context, lookup_job
from job_orchestrator.server.storage import JobRecord
from job_orchestrator.status import Status
from job_orchestrator.wire import parse_i32, parse_unsigned

logger = logging.getLogger(__name__)
router = APIRouter(tags=["jobs"])

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


def rfc3339(timestamp: float | None) -> str | None:
    """`2026-12-01T14:00:00.123Z` (UTC, milliseconds), or None."""
    if timestamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_view(
    job: JobRecord, queue: dict[str, object] | None = None, callback_url: str | None = None
) -> dict[str, Any]:
    """A job as GET /jobs/{id} and GET /jobs show it."""
    return {
        "id": job.id,
        "status": job.status.wire,
        "message": job.message,
        "service": job.service,
        "user_id": job.user_id,
        "created_at": rfc3339(job.created_at),
        "started_at": rfc3339(job.started_at),
        "finished_at": rfc3339(job.finished_at),
        "client": base_url(job.node) if job.node else None,
        "exit_code": job.exit_code,
        "queue": queue,
        "callback_url": callback_url,
    }


class ListQueryError(ValueError):
    """A query parameter of GET /jobs that is not what the route takes (answered 400)."""


def list_filters(
    params: Mapping[str, str],
) -> tuple[int, int | None, int | None, Status | None, str | None]:
    """(limit, before_id, user_id, status, service) from GET /jobs's query string."""
    raw_limit = params.get("limit")
    limit = DEFAULT_LIMIT if raw_limit is None else parse_unsigned(raw_limit, MAX_LIMIT)
    if not limit:
        raise ListQueryError(f"limit must be an integer from 1 to {MAX_LIMIT}")
    raw_cursor = params.get("cursor")
    before_id = None if raw_cursor is None else parse_unsigned(raw_cursor, 2**32)
    if raw_cursor is not None and not before_id:
        raise ListQueryError("cursor must be a next_cursor value from an earlier page")
    raw_user = params.get("user_id")
    user_id = None if raw_user is None else parse_i32(raw_user)
    if raw_user is not None and user_id is None:
        raise ListQueryError("user_id must be a 32-bit integer")
    raw_status = params.get("status")
    try:
        status = None if raw_status is None else Status.from_wire(raw_status)
    except ValueError:
        names = ", ".join(s.wire for s in Status)
        raise ListQueryError(f"status must be one of {names}") from None
    service = params.get("service")
    return limit, before_id, user_id, status, service.lower() if service is not None else None


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


@router.get(
    "/jobs/{id}",
    summary="A job's status, times, client, exit code and, while Queued, why it waits",
    openapi_extra=JOB_ID,
    responses={
        200: {
            "description": "The job",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/JobDetails"}}
            },
        },
        400: PATH_ERROR,
        401: UNAUTHORIZED,
        404: {"description": "No such job (or someone else's)", "content": JSON_STATUS},
        500: {"description": "Storage failure", "content": JSON_STATUS},
    },
)
async def job_details(request: Request) -> Response:
    job = await lookup_job(request)
    if isinstance(job, Response):
        return job
    ctx = context(request)
    queue = None
    if job.status is Status.QUEUED:
        try:
            standing = await queue_standing(
                ctx.store, job, ctx.settings.services, ctx.fleet.snapshot(), ctx.queue_positions
            )
        except StoreError:
            logger.exception("queue standing of job %d failed", job.id)
            return status_body(0, Status.UNKNOWN, "Internal server error", 500)
        queue = standing.wire()
    try:
        callback_url = await ctx.store.callback_url(job.id)
    except StoreError:
        logger.exception("callback of job %d could not be read", job.id)
        return status_body(0, Status.UNKNOWN, "Internal server error", 500)
    return json_response(job_view(job, queue, callback_url))


@router.get(
    "/jobs",
    summary="Jobs newest first, filtered, one page at a time (keyset pagination)",
    openapi_extra={
        "parameters": [
            _query("user_id", "Only this user's jobs", {"type": "integer", "format": "int32"}),
            _query("status", "Only jobs in this status", {"$ref": "#/components/schemas/Status"}),
            _query("service", "Only this service's jobs", {"type": "string"}),
            _query(
                "limit",
                f"Jobs per page (default {DEFAULT_LIMIT})",
                {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
            ),
            _query("cursor", "The next_cursor of the previous page", {"type": "string"}),
        ]
    },
    responses={
        200: {
            "description": "One page; next_cursor is null on the last",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobList"}}},
        },
        400: {"description": "A query parameter is invalid", "content": JSON_STATUS},
        401: UNAUTHORIZED,
        403: {
            "description": "A portal token named a user_id outside its user ids",
            "content": JSON_STATUS,
        },
        500: {"description": "Storage failure", "content": JSON_STATUS},
    },
)
async def list_jobs(request: Request) -> Response:
    caller = authenticate(request)
    if isinstance(caller, JSONResponse):
        return caller
    try:
        limit, before_id, user_id, status, service = list_filters(request.query_params)
    except ListQueryError as error:
        return status_body(0, Status.UNKNOWN, str(error), 400)
    user_ranges = None
    if caller.user_id is not None:  # a user's own token or JWT: only their jobs
        if user_id is not None and user_id != caller.user_id:
            return json_response({"jobs": [], "next_cursor": None})
        user_id = caller.user_id
    elif caller.is_portal:  # the users it names, or all of its users
        if user_id is not None and not caller.may_act_for(user_id):
            message = "user_id is outside the user ids of this portal token"
            return status_body(0, Status.UNKNOWN, message, 403)
        user_ranges = caller.ranges if user_id is None else None
    store = context(request).store
    try:
        page = await store.list_jobs(
            limit=limit + 1,
            before_id=before_id,
            user_id=user_id,
            user_ranges=user_ranges,
            status=status,
            service=service,
        )
    except StoreError:
        logger.exception("listing jobs failed")
        return status_body(0, Status.UNKNOWN, "Internal server error", 500)
    more = len(page) > limit
    page = page[:limit]
    try:
        callback_urls = await store.callback_urls([job.id for job in page])
    except StoreError:
        logger.exception("listing jobs failed")
        return status_body(0, Status.UNKNOWN, "Internal server error", 500)
    return json_response(
        {
            "jobs": [job_view(job, callback_url=callback_urls.get(job.id)) for job in page],
            "next_cursor": str(page[-1].id) if more else None,
        }
    )
