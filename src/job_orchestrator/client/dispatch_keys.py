"""Which job a request about a payload speaks for: the dispatch key check.

Our server sends the job's dispatch key (`X-Orchestrator-Dispatch-Key`, the Idempotency-Key
the payload was submitted with) on every request about a payload. A payload that holds
another key (or none) is another job's: the request is refused with 409, so a server whose
record points at the wrong client never reads, copies or kills another job's payload. A
request without the header (the original server, an operator) is answered as before.

A Cleaned stand-in (registry.py `lookup`) holds no key any more; it is answered as it is:
it tells nothing of the job that had the id.
"""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.responses import JSONResponse

from job_orchestrator.client.payload import EMPTY_PAYLOAD, Payload
from job_orchestrator.http_common import json_response
from job_orchestrator.status import Status
from job_orchestrator.wire import DISPATCH_KEY_HEADER, MESSAGE_HEADER

logger = logging.getLogger(__name__)


def refuse_other_dispatch(request: Request, payload: Payload) -> JSONResponse | None:
    """A 409 answer if the request is about another dispatch than the payload's, else None."""
    sent = request.headers.get(DISPATCH_KEY_HEADER)
    if sent is None or sent == payload.dispatch_key or payload.status is Status.CLEANED:
        return None
    logger.info(
        "refused a request about payload %d: it was dispatched with another key", payload.id
    )
    return json_response(
        EMPTY_PAYLOAD,
        409,
        headers={MESSAGE_HEADER: "the payload of this id belongs to another dispatch"},
    )
