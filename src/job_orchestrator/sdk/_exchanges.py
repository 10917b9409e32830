"""The SDK's operations as exchanges (see _protocol): submit, status, wait, cancel, list.

Each is written once, as a generator of requests and pauses, and driven by `Client` and
`AsyncClient` alike; the requests and the reading of answers they share are in _protocol.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from job_orchestrator.sdk._protocol import (
    DEFAULT_PAGE_SIZE,
    MAX_WAIT_S,
    MIN_POLL_INTERVAL_S,
    Connection,
    Exchange,
    Sleep,
    call,
    check,
    download_request,
    is_missing_route,
    job_from_download,
    json_object,
)
from job_orchestrator.sdk.errors import (
    AlreadyFinished,
    JobFailed,
    ServerError,
    ServerUnreachable,
    WaitTimeout,
)
from job_orchestrator.sdk.models import Job
from job_orchestrator.status import Status

__all__ = [
    "CursorTrail",
    "JobFilter",
    "cancel_exchange",
    "page_exchange",
    "services_exchange",
    "status_exchange",
    "submit_exchange",
    "wait_exchange",
]


def submit_exchange(
    connection: Connection, headers: Mapping[str, str], content: Any
) -> Exchange[Job]:
    request = connection.request("POST", "/upload", headers=dict(headers), content=content)
    response = yield from call(request)
    check(response)
    body = json_object(response) or {}
    return Job.from_dict(body)


def status_exchange(connection: Connection, job_id: int) -> Exchange[Job]:
    """`GET /jobs/{id}`, or the status of `GET /download/{id}` from servers without it."""
    if connection.has_job_details is not False:
        response = yield from call(connection.request("GET", f"/jobs/{job_id}"))
        if not is_missing_route(response):
            connection.has_job_details = True
            check(response, job_id)
            return Job.from_dict(json_object(response) or {"id": job_id})
        connection.has_job_details = False
    response = yield from call(download_request(connection, job_id))
    return job_from_download(response, job_id)


def wait_exchange(connection: Connection, job_id: int, timeout_s: float | None) -> Exchange[Job]:
    """Hold `GET /download/{id}?wait=` requests until the job is final; no fast polling.

    With `timeout_s`, no request outlives the deadline by more than WAIT_GRACE_S: a server
    that holds an answer too long makes the wait end with WaitTimeout, not hang.
    """
    deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
    job = Job(job_id, Status.UNKNOWN, "the server did not answer in time")
    while True:
        asked_at = time.monotonic()
        hold_s = min(MAX_WAIT_S, deadline - asked_at)
        request = download_request(
            connection,
            job_id,
            wait_s=hold_s,
            answer_within_s=None if timeout_s is None else deadline - asked_at,
        )
        try:
            response = yield from call(request)
        except ServerUnreachable:
            if timeout_s is None or time.monotonic() < deadline:
                raise
            raise WaitTimeout(job, timeout_s) from None
        job = job_from_download(response, job_id)
        if job.is_final:
            break
        now = time.monotonic()
        if now >= deadline:
            assert timeout_s is not None
            raise WaitTimeout(job, timeout_s)
        if now - asked_at < MIN_POLL_INTERVAL_S:
            yield Sleep(min(MIN_POLL_INTERVAL_S, deadline - now))
    final = yield from status_exchange(connection, job_id)
    if not final.succeeded:
        raise JobFailed(final)
    return final


def services_exchange(connection: Connection) -> Exchange[list[dict[str, Any]]]:
    """`GET /services`: the server's services with their quotas and clients (ours only)."""
    response = yield from call(connection.request("GET", "/services"))
    check(response)
    body = json_object(response) or {}
    services = body.get("services")
    if not isinstance(services, list):
        raise ServerError("the server's /services answer holds no list of services", 200)
    return [service for service in services if isinstance(service, dict)]


def cancel_exchange(connection: Connection, job_id: int) -> Exchange[Job]:
    response = yield from call(connection.request("POST", f"/terminate/{job_id}"))
    body = json_object(response)
    if response.status_code == 409 and body is not None:
        raise AlreadyFinished(Job.from_dict(body))
    check(response, job_id)
    return Job.from_dict(body or {"id": job_id, "status": "Killed"})


@dataclass(frozen=True, slots=True)
class JobFilter:
    user_id: int | None = None
    status: Status | str | None = None
    service: str | None = None
    page_size: int = DEFAULT_PAGE_SIZE

    def params(self, cursor: str | None) -> dict[str, str]:
        params = {"limit": str(self.page_size)}
        if self.user_id is not None:
            params["user_id"] = str(self.user_id)
        if self.status is not None:
            status = self.status
            params["status"] = status.wire if isinstance(status, Status) else status
        if self.service is not None:
            params["service"] = self.service
        if cursor is not None:
            params["cursor"] = cursor
        return params


def page_exchange(
    connection: Connection, filters: JobFilter, cursor: str | None
) -> Exchange[tuple[list[Job], str | None]]:
    """One page of `GET /jobs`: its jobs and the cursor of the next page (None at the end)."""
    request = connection.request("GET", "/jobs", params=filters.params(cursor))
    response = yield from call(request)
    check(response)
    body = json_object(response) or {}
    jobs = [Job.from_dict(item) for item in body.get("jobs", []) if isinstance(item, dict)]
    next_cursor = body.get("next_cursor")
    return jobs, next_cursor if isinstance(next_cursor, str) and next_cursor else None


@dataclass(slots=True)
class CursorTrail:
    """The page cursors of one listing: a server that sends one again would loop forever."""

    seen: set[str] = field(default_factory=set)

    def follow(self, cursor: str | None) -> str | None:
        if cursor is not None and cursor in self.seen:
            raise ServerError("the server sent a page cursor again: the listing stops here", 200)
        if cursor is not None:
            self.seen.add(cursor)
        return cursor
