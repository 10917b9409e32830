"""`GET /status`: an HTML page for operators, rendered on the server (Jinja2, no JavaScript).

Each service's limits, queue depth and jobs per user; its clients with health, load,
capacity and last error (the node loop's last look, as a `FleetSnapshot`); the warnings the server
printed at start (exposure.py), for as long as they hold; recent jobs with their
durations, filtered by service and status through the same listing verb and query parsing as
`GET /jobs`. With authentication on (API_TOKENS_FILE, JWT_PUBLIC_KEYS) only admins open it
(ADMIN_USERS, or a JWT with JWT_ADMIN_CLAIM): their token as a bearer token, as the password
of HTTP Basic authentication (so a browser can ask for it), or in the `jo_token` cookie.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from dataclasses import dataclass
from typing import Any

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from job_orchestrator import __version__
from job_orchestrator.errors import StoreError
from job_orchestrator.exposure import server_warnings
from job_orchestrator.server.context import AppContext
from job_orchestrator.server.node_wire import base_url
from job_orchestrator.server.principal import COOKIE, AuthRefusedError
from job_orchestrator.server.requesting import context
from job_orchestrator.server.storage import JobRecord
from job_orchestrator.server.views import ListQueryError, list_filters, rfc3339
from job_orchestrator.status import SLOT_HOLDING, Status

logger = logging.getLogger(__name__)
router = APIRouter()

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("job_orchestrator.server", "templates"),
    autoescape=jinja2.select_autoescape(default=True),
    undefined=jinja2.StrictUndefined,
)
_REALM = 'Basic realm="job-orchestrator status", charset="UTF-8"'
#: Jobs shown per page of the page's table.
PAGE_JOBS = 50


def _bearer_of(authorization: str | None) -> str | None:
    """`Bearer <token>` as it is; `Basic` credentials become `Bearer <password>`."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return authorization
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return f"Bearer {decoded.partition(':')[2]}"


def refusal(request: Request) -> Response | None:
    """401/403 unless the caller may see the page (None: it may)."""
    authenticator = context(request).authenticator
    if not authenticator.enabled:
        return None
    try:
        caller = authenticator.principal(
            _bearer_of(request.headers.get("authorization")),
            request.cookies.get(COOKIE),
            request.method,
        )
    except AuthRefusedError as error:
        return HTMLResponse(
            _render("refused.html", reason=f"This page needs an admin token ({error})."),
            status_code=401,
            headers={"WWW-Authenticate": f"{_REALM}, Bearer"},
        )
    if not caller.admin:
        reason = "This token is not one of ADMIN_USERS (nor a JWT with JWT_ADMIN_CLAIM)."
        return HTMLResponse(_render("refused.html", reason=reason), status_code=403)
    return None


def _render(name: str, **context: Any) -> str:
    return _TEMPLATES.get_template(name).render(version=__version__, **context)


def duration(seconds: float | None) -> str:
    """`4.2 s`, `12 min 5 s`, `3 h 7 min`; an empty string when unknown."""
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


@dataclass(frozen=True, slots=True)
class JobRow:
    id: int
    user_id: int
    service: str
    status: str
    message: str
    client: str
    created_at: str
    waited: str
    ran: str
    exit_code: int | None
    token: str

    @classmethod
    def of(cls, job: JobRecord, now: float) -> JobRow:
        end = job.finished_at if job.finished_at is not None else now
        begun = job.started_at or job.dispatched_at
        waited = (begun or end) - job.created_at if job.created_at is not None else None
        return cls(
            id=job.id,
            user_id=job.user_id,
            service=job.service,
            status=job.status.wire,
            message=job.message,
            client=base_url(job.node) if job.node else "",
            created_at=rfc3339(job.created_at) or "",
            waited=duration(waited),
            ran=duration(end - job.started_at if job.started_at is not None else None),
            exit_code=job.exit_code,
            token=job.token_name or "",
        )


async def _services(ctx: AppContext) -> list[dict[str, Any]]:
    store, fleet = ctx.store, ctx.fleet.snapshot()
    counts = await store.open_job_counts()
    services = []
    for name, service in sorted(ctx.settings.services.items()):
        users = []
        for (service_name, user_id), by_status in sorted(counts.items()):
            if service_name == name:
                active = sum(n for status, n in by_status.items() if status in SLOT_HOLDING)
                users.append(
                    {"id": user_id, "queued": by_status.get(Status.QUEUED, 0), "active": active}
                )
        on_node = await store.node_occupancy(name)
        clients = []
        for node in service.nodes:
            view = fleet[node.upload_url]
            clients.append(
                {
                    "url": base_url(node.upload_url),
                    "healthy": view.healthy,
                    "condition": view.condition,
                    "down_since": rfc3339(view.down_since),
                    "load": view.load_percent,
                    "capacity": view.max_concurrent,
                    "active": on_node.get(node.upload_url, 0),
                    "last_error": view.last_error,
                    "last_error_at": rfc3339(view.last_error_at),
                    "warnings": view.warnings,
                }
            )
        services.append(
            {
                "name": name,
                "runs_per_user": service.runs_per_user,
                "max_runs": service.max_runs,
                "timeout": duration(service.timeout_s) if service.timeout_s else "none",
                "queued": sum(user["queued"] for user in users),
                "active": sum(user["active"] for user in users),
                "users": users,
                "clients": clients,
            }
        )
    return services


@router.get("/status", include_in_schema=False, response_class=HTMLResponse)
async def status_page(request: Request) -> Response:
    refused = refusal(request)
    if refused is not None:
        return refused
    ctx = context(request)
    # The filter form sends an empty field for "any".
    given = {key: value for key, value in request.query_params.items() if value}
    given.setdefault("limit", str(PAGE_JOBS))
    try:
        limit, before_id, user_id, status, service = list_filters(given)
    except ListQueryError as error:
        return HTMLResponse(_render("refused.html", reason=str(error)), status_code=400)
    try:
        page = await ctx.store.list_jobs(
            limit=limit + 1, before_id=before_id, user_id=user_id, status=status, service=service
        )
        services = await _services(ctx)
    except StoreError:
        logger.exception("the status page could not read the database")
        return HTMLResponse(
            _render("refused.html", reason="The database does not answer."), status_code=503
        )
    now = time.time()
    more = len(page) > limit
    rows = [JobRow.of(job, now) for job in page[:limit]]
    return HTMLResponse(
        _render(
            "status.html",
            now=rfc3339(now),
            warnings=server_warnings(ctx.settings),
            services=services,
            jobs=rows,
            statuses=[s.wire for s in Status],
            chosen_status=status.wire if status else "",
            chosen_service=service or "",
            chosen_user="" if user_id is None else str(user_id),
            limit=limit,
            next_cursor=str(rows[-1].id) if more and rows else None,
        )
    )
