"""`GET /services`: the services this server runs, their quotas, clients and the clients' states.

What a user needs when an upload answers `Invalid service` (the CLI lists these names), and
what an operator checks first when jobs wait: is any client of the service up? Not in the
original. With authentication on it needs a token or a JWT; callers who are not admins see
each client by its name (`<service>-<n>`, as disclosure.py names it everywhere), never its URL.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from job_orchestrator.errors import StoreError
from job_orchestrator.http_common import json_response, status_body
from job_orchestrator.server.node_wire import base_url
from job_orchestrator.server.requesting import authenticate, engine
from job_orchestrator.status import CLIENT_CONDITIONS, SLOT_HOLDING, Status

logger = logging.getLogger(__name__)
router = APIRouter(tags=["services"])

_CLIENT = {
    "type": "object",
    "required": ["name", "url", "state", "load_percent", "capacity"],
    "properties": {
        "name": {"type": "string", "description": "`<service>-<n>`: the n-th client"},
        "url": {
            "type": ["string", "null"],
            "description": "Its base URL; null for callers who are not admins",
        },
        "state": {"type": "string", "enum": list(CLIENT_CONDITIONS)},
        "load_percent": {"type": ["number", "null"]},
        "capacity": {"type": ["integer", "null"], "description": "MAX_CONCURRENT, if set"},
    },
}
COMPONENTS: dict[str, Any] = {
    "ServiceClient": _CLIENT,
    "Service": {
        "type": "object",
        "required": ["name", "runs_per_user", "max_runs", "timeout_s", "queued", "active"],
        "properties": {
            "name": {"type": "string"},
            "runs_per_user": {"type": "integer"},
            "max_runs": {"type": "integer"},
            "timeout_s": {"type": ["number", "null"]},
            "queued": {"type": "integer", "description": "Queued jobs, every user's"},
            "active": {"type": "integer", "description": "Jobs holding a slot, every user's"},
            "clients": {"type": "array", "items": {"$ref": "#/components/schemas/ServiceClient"}},
        },
    },
    "ServiceList": {
        "type": "object",
        "required": ["services"],
        "properties": {
            "services": {"type": "array", "items": {"$ref": "#/components/schemas/Service"}}
        },
    },
}


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
    orchestrator = engine(request)
    try:
        counts = await orchestrator.store.open_job_counts()
    except StoreError:
        logger.exception("counting the services' jobs failed")
        return status_body(0, Status.UNKNOWN, "Internal server error", 500)
    shows_urls = caller.admin
    names: dict[str, str] = {}  # the first service listing a client names it
    for service in orchestrator.settings.services.values():
        for index, node in enumerate(service.nodes, start=1):
            names.setdefault(base_url(node.upload_url), f"{service.name}-{index}")
    services = []
    for name, service in sorted(orchestrator.settings.services.items()):
        queued = active = 0
        for (service_name, _user), by_status in counts.items():
            if service_name == name:
                queued += by_status.get(Status.QUEUED, 0)
                active += sum(n for status, n in by_status.items() if status in SLOT_HOLDING)
        clients = []
        for node in service.nodes:
            state = orchestrator.fleet.state[node.upload_url]
            url = base_url(node.upload_url)
            clients.append(
                {
                    "name": names[url],
                    "url": url if shows_urls else None,
                    "state": orchestrator.fleet.condition(node.upload_url),
                    "load_percent": state.load_percent,
                    "capacity": state.max_concurrent,
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
