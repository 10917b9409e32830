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
    by_service: dict[str, dict[int, tuple[int, ...]]] = {}
    for queue in queues:
        if queue.service not in limits or not queue.job_ids:
            continue
        users = by_service.setdefault(queue.service, {})
        earlier = users.get(queue.user_id)
        if earlier is None:
            users[queue.user_id] = tuple(queue.job_ids)
        else:
            # The store should send one queue per user; merging a duplicate keeps the
            # oldest-first guarantee and makes the result independent of input order.
            users[queue.user_id] = tuple(sorted({*earlier, *queue.job_ids}))

    chosen: list[int] = []
    for service in sorted(by_service):
        chosen.extend(_plan_service(service, by_service[service], occupancy, limits[service]))
    return chosen


def _plan_service(
    service: str,
    users: Mapping[int, tuple[int, ...]],
    occupancy: Occupancy,
    limits: ServiceLimits,
) -> list[int]:
    slots = free_slots(limits, occupancy.per_service.get(service, 0))
    if slots == 0:
        return []

    # Entries: (active, next job id, user id, index of next job, jobs the user may start).
    # The first three make the key total (user ids are unique within a service), so the result
    # does not depend on the iteration order of the input.
    heap: list[tuple[int, int, int, int, int]] = []
    for user_id, job_ids in users.items():
        active = occupancy.per_user.get((service, user_id), 0)
        allowed = min(limits.runs_per_user - active, len(job_ids))
        if allowed > 0:
            heap.append((active, job_ids[0], user_id, 0, allowed))
    heapq.heapify(heap)

    chosen: list[int] = []
    while heap and len(chosen) < slots:
        active, job_id, user_id, index, allowed = heap[0]
        chosen.append(job_id)
        index += 1
        if index < allowed:
            heapq.heapreplace(heap, (active + 1, users[user_id][index], user_id, index, allowed))
        else:
            heapq.heappop(heap)
    return chosen
