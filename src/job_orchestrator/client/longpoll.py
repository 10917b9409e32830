"""Our long-poll extension of /retrieve (`?wait=&known=&settle=`): hold the answer until the
payload's status changes. The original ignores the query string, and so do we when it is bad.

An answer to a `?wait=` carries `X-Orchestrator-Long-Poll: 1` (responses.py
`payload_response`): the caller learns that this client honoured it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

from job_orchestrator._loops import wait_any
from job_orchestrator.client.payload import Payload
from job_orchestrator.client.registry import Registry
from job_orchestrator.status import Status
from job_orchestrator.wire import STARTED_AGE_HEADER

MAX_LONG_POLL_S = 60.0

LONG_POLL_PARAMETERS = [
    {
        "name": "wait",
        "in": "query",
        "description": f"Seconds (at most {MAX_LONG_POLL_S:g}) to hold the answer until the "
        "status differs from `known`; an invalid value means no wait",
        "required": False,
        "schema": {"type": "number"},
    },
    {
        "name": "known",
        "in": "query",
        "description": "The status the caller already knows (default: the current one)",
        "required": False,
        "schema": {"type": "string"},
    },
    {
        "name": "settle",
        "in": "query",
        "description": "Seconds a status other than `known` must have held before it is "
        "answered (a final one is answered at once), so a short job is reported once, final; "
        "a Prepared payload is still answered within SERVER_LEASE/2. Default 0: the first "
        f"change. The answer carries `{STARTED_AGE_HEADER}` (seconds since run.sh started) "
        "once it has started",
        "required": False,
        "schema": {"type": "number"},
    },
]


def seconds_query(raw: str | None) -> float:
    """`?wait=`: a finite number of seconds; anything else means no wait."""
    try:
        value = float(raw) if raw is not None else 0.0
    except ValueError:
        return 0.0
    return value if math.isfinite(value) else 0.0


def status_query(raw: str | None) -> str | None:
    """`?known=`: a status string; anything else counts as absent."""
    try:
        return Status.from_wire(raw).wire if raw is not None else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class LongPoll:
    """What a /retrieve asks to wait for, each number of seconds at most MAX_LONG_POLL_S."""

    wait_s: float
    #: The status the caller knows (None: the payload's current one).
    known: str | None
    settle_s: float

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> LongPoll:
        return cls(
            wait_s=min(seconds_query(query.get("wait")), MAX_LONG_POLL_S),
            known=status_query(query.get("known")),
            settle_s=min(seconds_query(query.get("settle")), MAX_LONG_POLL_S),
        )


async def wait_for_change(
    registry: Registry,
    draining: asyncio.Event,
    payload: Payload,
    known: str,
    wait_s: float,
    settle_s: float = 0.0,
) -> Payload:
    """Hold a /retrieve until the payload is final or a status other than `known` has held;
    at once when the client drains (a stop signal arrived).

    A status that lasts less than `settle_s` is never reported (0: the first change is).
    """
    deadline = time.monotonic() + wait_s
    with registry.watch(payload.id) as changed:
        while True:
            # Re-read after registering the watch, so no change slips in between.
            payload = registry.get(payload.id) or payload
            remaining = deadline - time.monotonic()
            if payload.status.is_terminal() or remaining <= 0 or draining.is_set():
                return payload
            timeout_s = remaining
            if payload.status.wire != known:
                unsettled_s = settle_s - _held_s(payload)
                if unsettled_s <= 0:
                    return payload
                timeout_s = min(remaining, unsettled_s)
            changed.clear()
            await wait_any(changed.wait(), draining.wait(), timeout_s=timeout_s)


def _held_s(payload: Payload) -> float:
    """How long the payload has had its current (non-final) status."""
    since = payload.started_at if payload.status is Status.RUNNING else payload.created_at
    return time.time() - since if since is not None else math.inf
