"""Small pieces of the wire contract shared by the server and the client.

Header names of our extensions (the original ignores them) and number parsing with the
original's Rust semantics: optional sign, ASCII digits only, no whitespace, in range.
"""

from __future__ import annotations

import re

#: Why a payload failed or was rejected, on the client's /retrieve answers.
MESSAGE_HEADER = "X-Orchestrator-Message"
#: Set on a /retrieve answer when the client honoured `?wait=` (long-polled).
LONG_POLL_HEADER = "X-Orchestrator-Long-Poll"
#: Sent with every dispatch; a client that already has that payload returns it.
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: The job's dispatch key (the Idempotency-Key it was dispatched with), on every later request
#: about its payload: our client answers 409 when the payload holds another key, so an answer
#: about another job's payload is never taken for this job's (the original ignores it).
DISPATCH_KEY_HEADER = "X-Orchestrator-Dispatch-Key"
#: The service's wall-time limit, sent with a dispatch.
TIMEOUT_HEADER = "X-Orchestrator-Timeout"
#: A client's MAX_CONCURRENT, on its /health answers.
CAPACITY_HEADER = "X-Orchestrator-Max-Concurrent"
#: Our client's SERVER_LEASE in seconds, on its /health answers: the server never fails a job
#: over from it sooner than this (plus a margin), whatever its FAILOVER_AFTER says.
LEASE_HEADER = "X-Orchestrator-Server-Lease"
#: Our client's start-up warnings (no token beyond loopback, no sandbox), on its /health
#: answers: each percent-encoded, joined by commas; the server shows them on /status.
WARNINGS_HEADER = "X-Orchestrator-Warnings"
#: A text part of our /submit: the image a container client runs the payload in (the client's
#: CONTAINER_IMAGES must allow it).
CONTAINER_IMAGE_FIELD = "container_image"
#: Our client's answer to /health (and a 507 to /submit) while it takes no new payload; the
#: value says why. Its running payloads are not affected.
REFUSING_HEADER = "X-Orchestrator-Refusing"
#: Free space on DATA_PATH is below DISK_RESERVE_MB.
REFUSING_DISK_FULL = "disk_full"
#: run.sh's exit status, on a client's /retrieve answers once the script has ended.
EXIT_CODE_HEADER = "X-Orchestrator-Exit-Code"
#: Seconds since run.sh started, on our client's /retrieve answers once it has started: the
#: server dates a start it learns late (settled requests) without synchronised clocks.
STARTED_AGE_HEADER = "X-Orchestrator-Started-Age"
#: The size of run.sh's whole log, on our client's ZIP answers when its executor wrote the log
#: here (local processes): at 0 the server keeps an empty log instead of asking for it.
LOG_BYTES_HEADER = "X-Orchestrator-Log-Bytes"
#: `<server instance> <its monotonic clock>` on /retrieve: when the server sent it (the lease).
CLOCK_HEADER = "X-Orchestrator-Clock"
#: A payload's status on the client's /logs answers, as it was before the log was read.
LOG_STATUS_HEADER = "X-Orchestrator-Status"

_UNSIGNED = re.compile(r"\+?[0-9]+")
_SIGNED = re.compile(r"[+-]?[0-9]+")


def parse_unsigned(raw: str, maximum: int) -> int | None:
    """Rust's `u16/u32/u64::from_str`: None unless `raw` is such a number up to maximum."""
    if not _UNSIGNED.fullmatch(raw):
        return None
    value = int(raw)
    return value if value <= maximum else None


def parse_i32(raw: str) -> int | None:
    """Rust's `i32::from_str` (Python's int() would accept whitespace, `_` and other digits)."""
    if not _SIGNED.fullmatch(raw):
        return None
    value = int(raw)
    return value if -(2**31) <= value < 2**31 else None


class LogQueryError(ValueError):
    """A bad query parameter of a log route (`offset`, `wait`, `follow`)."""


def parse_offset(raw: str | None) -> int:
    """`?offset=` of the log routes: a byte offset, default 0."""
    if raw is None:
        return 0
    value = parse_unsigned(raw, 2**63 - 1)
    if value is None:
        raise LogQueryError(f"Invalid offset {raw!r}: expected a byte offset (0 or more)")
    return value
