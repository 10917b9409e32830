"""Where a queued job stands and why it waits, read from the one fairness rule.

The position is the job's place in the order `plan_dispatch` would start its service's queued
jobs if every quota and limit were lifted and slots freed one at a time: the scheduler's own
rule, fed the store's queue heads (`StoreViews.queue_heads`) with no depth limit. It is a
best-effort estimate: quotas reorder what actually starts, and new uploads may come first.
Computing it reads the service's whole queue, so `QueuePositions` reuses each order a while.

The reason is the first of these that holds, most fundamental first:

- `no_healthy_client`: every client of the service failed its health checks (dispatches to it
  fail, so it would also be in retry backoff);
- `client_disk_full`: every client that answers takes no new payload, and one of them because
  its free disk space is below its DISK_RESERVE_MB; the job starts once one has space again;
- `client_unauthorized`: every client that answers refuses the server's token (CLIENT_TOKEN
  differs): nothing is sent to them until they accept it;
- `retry_backoff`: a dispatch failed and the next try is not due yet;
- `user_quota`: the user holds RUNS_PER_USER slots of the service;
- `service_limit`: the service holds MAX_RUNS slots;
- `waiting_turn`: it may start, and waits for the jobs the rule puts before it (or for the
  dispatcher's next pass).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

from job_orchestrator.config import ServiceConfig
from job_orchestrator.errors import ClientDiskFullError, ClientUnauthorizedError
from job_orchestrator.server.fleet_snapshot import FleetSnapshot
from job_orchestrator.server.scheduler import Occupancy, ServiceLimits, plan_dispatch
from job_orchestrator.server.storage import JobRecord, StoreViews

__all__ = [
    "REASONS",
    "QueuePositions",
    "QueueStanding",
    "queue_position",
    "queue_standing",
    "service_order",
]

REASONS = (
    "user_quota",
    "service_limit",
    "no_healthy_client",
    "waiting_turn",
    "retry_backoff",
    "client_unauthorized",
    "client_disk_full",
)

#: Quotas lifted: more than any number of jobs a database holds.
_LIFTED = ServiceLimits(runs_per_user=2**62, max_runs=2**62)


@dataclass(frozen=True, slots=True)
class QueueStanding:
    position: int | None
    reason: str
    detail: str

    def wire(self) -> dict[str, object]:
        return {"position": self.position, "reason": self.reason, "detail": self.detail}


async def service_order(
    store: StoreViews, service: str, occupancy: Occupancy, due_by: float
) -> dict[int, int]:
    """Each queued job of the service due by `due_by` -> its 1-based place in the order."""
    heads = await store.queue_heads({service: _LIFTED}, due_by)
    order = plan_dispatch(heads, occupancy, {service: _LIFTED})
    return {job_id: place for place, job_id in enumerate(order, start=1)}


async def queue_position(
    store: StoreViews, job: JobRecord, occupancy: Occupancy, now: float
) -> int | None:
    """The job's 1-based place among its service's queued jobs (None: it left the queue).

    A job in retry backoff is placed among the jobs due by the time it is.
    """
    due_by = max(now, job.not_before or now)
    return (await service_order(store, job.service, occupancy, due_by)).get(job.id)


class QueuePositions:
    """Each service's queue order, kept for a while so that polling callers cannot keep the
    store busy: an order computed in T seconds is reused for max(MIN_FRESH_S, 10 T), so
    positions take at most about a tenth of the store's time however often they are asked
    for. A job missing from a kept order (uploaded since) gets a fresh one.
    """

    MIN_FRESH_S = 1.0

    def __init__(self, store: StoreViews) -> None:
        self._store = store
        self._orders: dict[str, tuple[float, dict[int, int]]] = {}
        self._computing: dict[str, asyncio.Lock] = {}

    async def position(self, job: JobRecord, occupancy: Occupancy, now: float) -> int | None:
        if job.not_before is not None and job.not_before > now:
            return await queue_position(self._store, job, occupancy, now)  # rare: not kept
        if (kept := self._kept(job)) is not None:
            return kept
        # One computation per service at a time: callers arriving meanwhile use its result.
        async with self._computing.setdefault(job.service, asyncio.Lock()):
            if (kept := self._kept(job)) is not None:
                return kept
            started = time.monotonic()
            order = await service_order(self._store, job.service, occupancy, now)
            finished = time.monotonic()
            self._orders[job.service] = (
                finished + max(self.MIN_FRESH_S, 10 * (finished - started)),
                order,
            )
        return order.get(job.id)

    def _kept(self, job: JobRecord) -> int | None:
        kept = self._orders.get(job.service)
        if kept is not None and time.monotonic() < kept[0]:
            return kept[1].get(job.id)
        return None


async def queue_standing(
    store: StoreViews,
    job: JobRecord,
    services: Mapping[str, ServiceConfig],
    fleet: FleetSnapshot,
    positions: QueuePositions | None = None,
) -> QueueStanding:
    """Why a Queued job has not started yet, and its place in the queue."""
    now = time.time()
    occupancy = await store.occupancy()
    if positions is None:
        position = await queue_position(store, job, occupancy, now)
    else:
        position = await positions.position(job, occupancy, now)
    service = services.get(job.service)
    if service is None:
        return QueueStanding(
            position, "service_limit", f"service {job.service!r} is not configured on this server"
        )
    down = [node.upload_url for node in service.nodes if fleet.is_down(node.upload_url)]
    conditions = [fleet[node.upload_url].condition for node in service.nodes]
    refusing = [c for c in conditions if c in ("unauthorized", "disk_full")]
    if "disk_full" in refusing and len(down) + len(refusing) == len(service.nodes):
        return QueueStanding(
            position,
            "client_disk_full",
            f"no client of service {service.name} can take it now: {ClientDiskFullError.MESSAGE}",
        )
    if refusing and len(down) + len(refusing) == len(service.nodes):
        return QueueStanding(
            position,
            "client_unauthorized",
            f"no client of service {service.name} can take it: {ClientUnauthorizedError.MESSAGE}",
        )
    if service.nodes and len(down) == len(service.nodes):
        errors = [fleet[url].last_error for url in down if fleet[url].last_error]
        why = f" (last error: {errors[-1]})" if errors else ""
        return QueueStanding(
            position,
            "no_healthy_client",
            f"no client of service {service.name} answers its health checks{why}",
        )
    if job.not_before is not None and job.not_before > now:
        wait_s = job.not_before - now
        return QueueStanding(
            position,
            "retry_backoff",
            f"dispatch failed {job.attempts} time(s); next try in {wait_s:.1f} s",
        )
    held = occupancy.per_user.get((job.service, job.user_id), 0)
    if held >= service.runs_per_user:
        return QueueStanding(
            position,
            "user_quota",
            f"user {job.user_id} has {held} of RUNS_PER_USER={service.runs_per_user} running",
        )
    busy = occupancy.per_service.get(job.service, 0)
    if busy >= service.max_runs:
        return QueueStanding(
            position,
            "service_limit",
            f"service {service.name} has {busy} of MAX_RUNS={service.max_runs} running",
        )
    if position is None or position == 1:
        detail = "first in line by the fairness rule; it starts on the dispatcher's next pass"
    else:
        detail = f"{position - 1} job(s) ahead by the fairness rule"
    return QueueStanding(position, "waiting_turn", detail)
