"""`GET /services`: the services this server runs, their quotas, clients and the clients' states.

What a user needs when an upload answers `Invalid service` (the CLI lists these names), and
what an operator checks first when jobs wait: is any client of the service up? Not in the
original. With authentication on it needs a token or a JWT; callers who are not admins see
each client by its name (`<service>-<n>`, as disclosure.py names it everywhere), never its URL.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from job_orchestrator.errors import StoreError
from job_orchestrator.http_common import json_response, status_body
from job_orchestrator.server.node_wire import base_url
from job_orchestrator.server.requesting import authenticate, context
from job_orchestrator.status import SLOT_HOLDING, Status

logger = logging.getLogger(__name__)
router = APIRouter(tags=["services"])


@router.get(
    "/services",
    summary="The configured services: quotas, queue, clients and their states (not in the "
    "original)",
    responses={
        200: {
            "description": "Every service, by name",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ServiceList"}}
            },
        },
        401: {"description": "No valid token or JWT (only with authentication on)"},
    },
)
async def list_services(request: Request) -> Response:
    caller = authenticate(request)
    if isinstance(caller, JSONResponse):
        return caller
    ctx = context(request)
    try:
        counts = await ctx.store.open_job_counts()
    except StoreError:
        logger.exception("counting the services' jobs failed")
        return status_body(0, Status.UNKNOWN, "Internal server error", 500)
    shows_urls = caller.admin
    names: dict[str, str] = {}  # the first service listing a client names it
    for service in ctx.settings.services.values():
        for index, node in enumerate(service.nodes, start=1):
            names.setdefault(base_url(node.upload_url), f"{service.name}-{index}")
    fleet = ctx.fleet.snapshot()
    services = []
    for name, service in sorted(ctx.settings.services.items()):
        queued = active = 0
        for (service_name, _user), by_status in counts.items():
            if service_name == name:
                queued += by_status.get(Status.QUEUED, 0)
                active += sum(n for status, n in by_status.items() if status in SLOT_HOLDING)
        clients = []
        for node in service.nodes:
            view = fleet[node.upload_url]
            url = base_url(node.upload_url)
            clients.append(
                {
                    "name": names[url],
                    "url": url if shows_urls else None,
                    "state": view.condition,
                    "load_percent": view.load_percent,
                    "capacity": view.max_concurrent,
                }
            )
        services.append(
            {
                "name": name,
                "runs_per_user": service.runs_per_user,
                "max_runs": service.max_runs,
                "timeout_s": service.timeout_s,
                "queued": queued,
                "active": active,
                "clients": clients,
            }
        )
    return json_response({"services": services})
