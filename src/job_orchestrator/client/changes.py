"""`GET /changes?after=<cursor>&wait=S`: the change feed, one held request per server for all
of this client's payloads (our extension; the original's client has no such route, and our
server then follows each payload with its own requests).

The answer lists each payload that changed after the cursor (change_log.py), as it is now,
and the cursor to ask after next. With nothing to say it is held up to `wait` seconds (at most
SERVER_LEASE/2, so the next request renews the leases in time), and answered at once when a
stop signal arrives. A request stamped by a server instance renews the lease of every payload
that instance holds (lease.py).

    {"cursor": "3f9a1c.42", "snapshot": false,
     "changes": [{"id": 7, "status": "Running", "key": "...", "age": 0.4,
                  "started_age": 0.4}, ...]}

`age`: seconds the payload has had its status (0 once final); `started_age`: seconds since
run.sh started, once it has. Both are differences on this client's clock, so the server dates
them on its own without synchronised clocks.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from job_orchestrator._loops import wait_any
from job_orchestrator.client.change_log import Cursor, Page
from job_orchestrator.client.longpoll import MAX_LONG_POLL_S, seconds_query
from job_orchestrator.client.payload import Payload
from job_orchestrator.client.registry import Registry
from job_orchestrator.client.responses import GUARDED
from job_orchestrator.client.state import ClientState, client_state
from job_orchestrator.http_common import json_response
from job_orchestrator.status import Status
from job_orchestrator.wire import CLOCK_HEADER

router = APIRouter()

_PARAMETERS = [
    {
        "name": "after",
        "in": "query",
        "description": "The cursor of the previous answer; absent, or not of this client's "
        "current run, the answer is a snapshot of every payload",
        "required": False,
        "schema": {"type": "string"},
    },
    {
        "name": "wait",
        "in": "query",
        "description": "Seconds to hold the answer while nothing changed (at most "
        "SERVER_LEASE/2); an invalid value means no wait",
        "required": False,
        "schema": {"type": "number"},
    },
]


@router.get(
    "/changes",
    summary="The payloads that changed after a cursor (the change feed)",
    responses={**GUARDED, 200: {"description": "The changes and the next cursor"}},
    openapi_extra={"parameters": _PARAMETERS},
)
async def changes(request: Request) -> Response:
    state = client_state(request)
    # The server still wants what it holds: renew those leases (runner.py starts only so).
    state.runner.asked_by(request.headers.get(CLOCK_HEADER))
    wait_s = min(
        seconds_query(request.query_params.get("wait")),
        MAX_LONG_POLL_S,
        state.settings.server_lease_s / 2,
    )
    page = await _page(state, Cursor.parse(request.query_params.get("after")), wait_s)
    return json_response(
        {
            "cursor": str(page.cursor),
            "snapshot": page.snapshot,
            "changes": [_entry(state.registry, payload_id) for payload_id in page.ids],
        }
    )


async def _page(state: ClientState, after: Cursor | None, wait_s: float) -> Page:
    log = state.registry.changes
    if after is None or not log.knows(after):
        return Page(sorted(state.registry.ids()), log.cursor, snapshot=True)
    deadline = time.monotonic() + wait_s
    while True:
        changed = log.next_change()
        page = log.after(after)
        remaining = deadline - time.monotonic()
        if page.ids or remaining <= 0 or state.draining.is_set():
            return page
        await wait_any(changed.wait(), state.draining.wait(), timeout_s=remaining)


def _entry(registry: Registry, payload_id: int) -> dict[str, Any]:
    payload = registry.lookup(payload_id)
    if payload is None:  # cannot be: every id the log gives was handed out
        return {"id": payload_id, "status": Status.CLEANED.wire, "key": None, "age": 0.0}
    entry: dict[str, Any] = {
        "id": payload.id,
        "status": payload.status.wire,
        "key": payload.dispatch_key,
        "age": _age(payload),
    }
    if payload.started_at is not None:
        entry["started_age"] = max(0.0, time.time() - payload.started_at)
    return entry


def _age(payload: Payload) -> float:
    """Seconds the payload has had its (non-final) status; 0 for a final one."""
    if payload.status.is_terminal():
        return 0.0
    since = payload.started_at if payload.status is Status.RUNNING else payload.created_at
    return max(0.0, time.time() - since) if since is not None else 0.0
