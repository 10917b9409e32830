"""What the routes may use of the server, in one typed, frozen object built by the lifespan.

The app's lifespan (app.py) builds the engine, then one `AppContext` from it, and keeps it on
`app.state`; every route reads it through `app_context` (requesting.py's `context` for a
request) and nothing else. Routes parse the request, call a service (the upload service,
the log stream, a store view, one of the engine's public operations), and map the outcome
to HTTP; they never see the engine's insides (its fleet's live state, its gateway, its
loops), so nothing a route does can change how the engine runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from starlette.applications import Starlette

from job_orchestrator.config import ServerSettings
from job_orchestrator.server.auth import Authenticator
from job_orchestrator.server.fleet_snapshot import FleetSnapshot
from job_orchestrator.server.log_stream import LogSources
from job_orchestrator.server.metrics import ServerMetrics
from job_orchestrator.server.node_client import NodeClient
from job_orchestrator.server.queue_view import QueuePositions
from job_orchestrator.server.storage import JobRecord, ServerStore
from job_orchestrator.server.termination import TerminateOutcome
from job_orchestrator.server.upload_service import UploadService
from job_orchestrator.server.waiting import HeldRequests

__all__ = ["AppContext", "EngineOperations", "FleetAccess", "app_context"]


class EngineOperations(Protocol):
    """The engine's public operations on a job (Orchestrator's)."""

    async def terminate(self, job_id: int) -> TerminateOutcome | None:
        """Cancel a queued job or kill a running one (None: no such job)."""

    async def wait_final(self, job_id: int, timeout_s: float) -> None:
        """Return once the job is final, or after timeout_s."""


class FleetAccess(Protocol):
    """What routes read of the clients (Fleet's): a frozen snapshot, or a job's own client."""

    def snapshot(self) -> FleetSnapshot:
        """The clients as they are now (for /metrics, /status, /services, the queue view)."""

    def client_for(self, job: JobRecord) -> NodeClient | None:
        """The client a job is on (ClientLeftError: no longer configured)."""


@dataclass(frozen=True, slots=True)
class AppContext:
    settings: ServerSettings
    #: The jobs and their read views; routes only read (creating a job is the upload
    #: service's, every other change the engine's).
    store: ServerStore
    authenticator: Authenticator
    engine: EngineOperations
    fleet: FleetAccess
    uploads: UploadService
    logs: LogSources
    #: Queue orders kept a while for `GET /jobs/{id}` (queue_view.py).
    queue_positions: QueuePositions
    #: The caps on held requests: `?wait=` of /download and `?follow=1` of the logs.
    waits: HeldRequests
    follows: HeldRequests
    metrics: ServerMetrics


def app_context(app: Starlette) -> AppContext:
    """The app's context; only the lifespan sets it, before the first request."""
    found = getattr(app.state, "context", None)
    if not isinstance(found, AppContext):
        raise RuntimeError("the server's context is not built: its lifespan has not run")
    return found
