"""How the client's routes answer about a payload: the original's Payload JSON, our headers
(why it ended, run.sh's exit status and start), and how those answers are documented.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from fastapi.responses import JSONResponse

from job_orchestrator.client.payload import EMPTY_PAYLOAD, Payload
from job_orchestrator.http_common import id_parameter, json_response
from job_orchestrator.status import Status
from job_orchestrator.wire import (
    EXIT_CODE_HEADER,
    LONG_POLL_HEADER,
    MESSAGE_HEADER,
    REFUSING_DISK_FULL,
    REFUSING_HEADER,
    STARTED_AGE_HEADER,
)


def quote_message(message: str) -> str:
    """A message as a header value (headers are Latin-1; ours are percent-encoded UTF-8)."""
    return quote(message, safe=" :/,.;()'-_=")


def message_headers(payload: Payload) -> dict[str, str] | None:
    return {MESSAGE_HEADER: quote_message(payload.message)} if payload.message else None


def outcome_headers(payload: Payload) -> dict[str, str]:
    """The headers of a /retrieve answer: why it ended, run.sh's exit status and start, if known."""
    headers = message_headers(payload) or {}
    if payload.exit_code is not None and payload.status.is_terminal():
        headers[EXIT_CODE_HEADER] = str(payload.exit_code)
    if payload.started_at is not None:
        # An age, not a time: the server subtracts it from its own clock.
        headers[STARTED_AGE_HEADER] = f"{max(0.0, time.time() - payload.started_at):.3f}"
    return headers


def payload_response(
    payload: Payload, status_code: int = 200, *, long_polled: bool = False
) -> JSONResponse:
    headers = outcome_headers(payload)
    if long_polled:
        headers[LONG_POLL_HEADER] = "1"
    return json_response(payload.wire(), status_code, headers=headers)


def empty_response(status_code: int) -> JSONResponse:
    """An answer about no payload (or one whose files could not be read)."""
    return json_response(EMPTY_PAYLOAD, status_code)


def refused_for_disk(reason: str) -> JSONResponse:
    """507 Insufficient Storage: nothing of the payload was kept; send it elsewhere."""
    return json_response(
        EMPTY_PAYLOAD,
        507,
        headers={MESSAGE_HEADER: quote_message(reason), REFUSING_HEADER: REFUSING_DISK_FULL},
    )


# ---- how these answers are documented (OpenAPI) ---------------------------------------------

_PAYLOAD_SCHEMA = {
    "type": "object",
    "required": ["id", "input", "status", "loc", "pid", "killed"],
    "properties": {
        "id": {"type": "integer", "minimum": 0},
        "input": {"type": "object"},
        "status": {"type": "string", "enum": [status.wire for status in Status]},
        "loc": {"type": "string"},
        "pid": {"type": "integer", "minimum": 0},
        "killed": {"type": "boolean"},
    },
}
PAYLOAD_CONTENT = {"application/json": {"schema": _PAYLOAD_SCHEMA}}
ZIP_CONTENT = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
GUARDED: dict[int | str, dict[str, Any]] = {
    401: {"description": "No valid bearer token (only when CLIENT_TOKEN is set)"}
}
#: The answers of every route about one payload (`/{route}/{id}`).
BY_ID: dict[int | str, dict[str, Any]] = {
    **GUARDED,
    400: {"description": "The id is not a u32", "content": {"text/plain": {}}},
    404: {"description": "No such payload", "content": PAYLOAD_CONTENT},
    409: {
        "description": "The payload holds another dispatch key than X-Orchestrator-Dispatch-Key",
        "content": PAYLOAD_CONTENT,
    },
    500: {"description": "The payload's files could not be read", "content": PAYLOAD_CONTENT},
}
PAYLOAD_ID = id_parameter("Payload identifier")
