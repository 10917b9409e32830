"""Where a queued job stands and why it waits, read from the one fairness rule.

The position is the job's place in the order `plan_dispatch` would start its service's queued
jobs if every quota and limit were lifted and slots freed one at a time: the scheduler's own
rule, fed the store's queue heads (`Store.queue_heads`) just deep enough to reach the job. It
is a best-effort estimate: quotas reorder what actually starts, and new uploads may come first.

The reason is the first of these that holds, most fundamental first:

- `no_healthy_client`: every client of the service failed its health checks (dispatches to it
  fail, so it would also be in retry backoff);
- `retry_backoff`: a dispatch failed and the next try is not due yet;
- `user_quota`: the user holds RUNS_PER_USER slots of the service;
- `service_limit`: the service holds MAX_RUNS slots;
- `waiting_turn`: it may start, and waits for the jobs the rule puts before it (or for the
  dispatcher's next pass).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from job_orchestrator.config import ServiceConfig
from job_orchestrator.server.nodes import Fleet
from job_orchestrator.server.scheduler import Occupancy, ServiceLimits, plan_dispatch
from job_orchestrator.server.storage import JobRecord, Store

__all__ = ["REASONS", "QueueStanding", "queue_position", "queue_standing"]

REASONS = ("user_quota", "service_limit", "no_healthy_client", "waiting_turn", "retry_backoff")

#: Quotas lifted: larger than any number of jobs a database holds.
_UNLIMITED = 2**62
#: Queued jobs per user read first; doubled until the job is reached.
_FIRST_DEPTH = 16


@dataclass(frozen=True, slots=True)
class QueueStanding:
    position: int | None
    reason: str
    detail: str

    def wire(self) -> dict[str, object]:
        return {"position": self.position, "reason": self.reason, "detail": self.detail}


async def queue_position(
    store: Store, job: JobRecord, occupancy: Occupancy, now: float
) -> int | None:
    """The job's 1-based place among its service's queued jobs (None: it left the queue).

    A user's k-th queued job starts after at most k + (its user's slots held) jobs of any
    other user, so reading every user's queue that deep decides the job's place exactly.
    """
    service = job.service
    active = occupancy.per_user.get((service, job.user_id), 0)
    # Jobs in backoff count once due, so a job waiting for its own retry sees the others.
    due_by = max(now, job.not_before or now)
    lifted = {service: ServiceLimits(runs_per_user=_UNLIMITED, max_runs=_UNLIMITED)}
    depth = _FIRST_DEPTH
    while True:
        heads = await store.queue_heads(
            {service: ServiceLimits(runs_per_user=depth, max_runs=_UNLIMITED)}, due_by
        )
        complete = all(len(queue.job_ids) < depth for queue in heads)
        own = next((queue for queue in heads if queue.user_id == job.user_id), None)
        if own is not None and job.id in own.job_ids:
            rank = own.job_ids.index(job.id) + 1
            if complete or rank + active + 1 <= depth:
                break
        elif own is None or len(own.job_ids) < depth:
            return None
        depth *= 2
    order = plan_dispatch(heads, occupancy, lifted)
    return order.index(job.id) + 1 if job.id in order else None


async def queue_standing(
    store: Store,
    job: JobRecord,
    services: Mapping[str, ServiceConfig],
    fleet: Fleet,
    now: float | None = None,
) -> QueueStanding:
    """Why a Queued job has not started yet, and its place in the queue."""
    now = time.time() if now is None else now
    occupancy = await store.occupancy()
    position = await queue_position(store, job, occupancy, now)
    service = services.get(job.service)
    if service is None:
        return QueueStanding(
            position, "service_limit", f"service {job.service!r} is not configured on this server"
        )
    down = [node.upload_url for node in service.nodes if fleet.is_down(node.upload_url)]
    if service.nodes and len(down) == len(service.nodes):
        errors = [fleet.state[url].last_error for url in down if fleet.state[url].last_error]
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
