"""What the server knows of each client (node): its health as the checks saw it, what it
said of itself (capacity, load, lease, warnings), and why it refuses new work, if it does."""

from __future__ import annotations

from dataclasses import dataclass

from job_orchestrator.errors import ClientDiskFullError, ClientUnauthorizedError
from job_orchestrator.wire import REFUSING_DISK_FULL


@dataclass(slots=True)
class NodeState:
    healthy: bool = True  # optimistic until the first check, so start-up costs no latency
    failures: int = 0
    down_since: float | None = None
    max_concurrent: int | None = None
    load_percent: float | None = None
    revocations_pending: bool = True
    #: Why it answers but takes no new payload (a key of REFUSALS), until a check finds the
    #: cause gone; its running jobs carry on.
    refusing: str | None = None
    #: Why the latest failed check or call failed (kept after it recovers, for /status).
    last_error: str | None = None
    last_error_at: float | None = None
    #: The SERVER_LEASE the node advertised on /health (None until it said).
    server_lease_s: float | None = None
    #: The warnings the node printed at start (no token beyond loopback, no sandbox), for /status.
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    """A cause for which a node that answers takes no new payload, and what is said of it."""

    #: What a job waiting for it (and /status) says.
    message: str
    #: Logged once when the node starts refusing so, after "client <url> ".
    started: str
    #: Logged once when it stops, after "client <url> ".
    ended: str


REFUSALS = {
    # 401: the tokens differ (its /load, or a dispatch, said so).
    "unauthorized": Refusal(
        ClientUnauthorizedError.MESSAGE,
        "refuses the server's token (check CLIENT_TOKEN on both); no jobs are sent to it "
        "until it accepts the token",
        "accepts the server's token again",
    ),
    # 507, or its /health (X-Orchestrator-Refusing): free space below its DISK_RESERVE_MB.
    REFUSING_DISK_FULL: Refusal(
        ClientDiskFullError.MESSAGE,
        "is short of disk space (below its DISK_RESERVE_MB); no jobs are sent to it until it "
        "has space again",
        "has disk space again",
    ),
}
