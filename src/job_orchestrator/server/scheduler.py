"""Which queued jobs may start now: per-user and per-service quotas, fair share between users.

Pure: the store gathers plain data, this module returns a decision, the dispatcher applies it.

Fairness rule, within a service: each free slot goes to the eligible user with the fewest
slot-holding jobs (jobs chosen earlier in the same decision included); ties go to the user whose
oldest remaining queued job is oldest. When every user is idle this is upstream's "one job per
user per round"; across ticks a freed slot goes to the least-served user instead of whoever a hash
order favours, and no state has to survive between ticks.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Occupancy", "ServiceLimits", "UserQueue", "free_slots", "plan_dispatch"]


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    runs_per_user: int
    max_runs: int


@dataclass(frozen=True, slots=True)
class UserQueue:
    """The oldest queued jobs of one user in one service, oldest first.

    The store only needs to load the first `runs_per_user` of them: more can never start in one
    decision.
    """

    service: str
    user_id: int
    job_ids: tuple[int, ...]  # ascending


@dataclass(frozen=True, slots=True)
class Occupancy:
    """Slot-holding jobs (Processing, Submitted, Prepared, Running, Locked) counted per
    (service, user) and per service."""

    per_user: Mapping[tuple[str, int], int]
    per_service: Mapping[str, int]


def free_slots(limits: ServiceLimits, active: int) -> int:
    # Clamped: a service can be over its limit after MAX_RUNS was lowered across a restart.
    return max(0, limits.max_runs - active)


def plan_dispatch(
    queues: Iterable[UserQueue],
    occupancy: Occupancy,
    limits: Mapping[str, ServiceLimits],
) -> list[int]:
    """Job ids to start now, in the order they should be dispatched.

    Services absent from `limits` are skipped (their jobs wait). Services are processed in sorted
    name order; within a service, the fairness rule of the module docstring. Never exceeds a
    limit, never picks a job of a user at quota, never picks a later job of a user before an
    earlier one. Costs O(users + slots * log users) whatever the length of the queues.
    """
    by_service: dict[str, list[UserQueue]] = {}
    for queue in queues:
        if queue.job_ids:
            by_service.setdefault(queue.service, []).append(queue)

    chosen: list[int] = []
    for service in sorted(by_service):
        service_limits = limits.get(service)
        if service_limits is not None:
            chosen.extend(_plan_service(service, by_service[service], occupancy, service_limits))
    return chosen


def _plan_service(
    service: str,
    queues: list[UserQueue],
    occupancy: Occupancy,
    limits: ServiceLimits,
) -> list[int]:
    slots = free_slots(limits, occupancy.per_service.get(service, 0))
    if slots == 0:
        return []
    users = {queue.user_id: queue.job_ids for queue in queues}
    if len(users) < len(queues):
        users = _merge_duplicates(queues)

    # Entries: (active, next job id, user id, index of next job, the user's jobs). The first
    # three are a total order (user ids are unique here), so neither the input order nor the
    # uncomparable last field can influence the result.
    quota = limits.runs_per_user
    active_of = occupancy.per_user.get
    heap: list[tuple[int, int, int, int, tuple[int, ...]]] = []
    for user_id, job_ids in users.items():
        active = active_of((service, user_id), 0)
        if active < quota:
            heap.append((active, job_ids[0], user_id, 0, job_ids))
    heapq.heapify(heap)

    chosen: list[int] = []
    while heap and len(chosen) < slots:
        active, job_id, user_id, index, job_ids = heap[0]
        chosen.append(job_id)
        index += 1
        if index < len(job_ids) and active + 1 < quota:
            heapq.heapreplace(heap, (active + 1, job_ids[index], user_id, index, job_ids))
        else:
            heapq.heappop(heap)
    return chosen


def _merge_duplicates(queues: list[UserQueue]) -> dict[int, tuple[int, ...]]:
    # The store should send one queue per user; merging a duplicate keeps the oldest-first
    # guarantee and keeps the result independent of input order.
    users: dict[int, tuple[int, ...]] = {}
    for queue in queues:
        earlier = users.get(queue.user_id, ())
        users[queue.user_id] = tuple(sorted({*earlier, *queue.job_ids}))
    return users
