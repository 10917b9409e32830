"""Which queued jobs may start now: per-user and per-service quotas, fair share between users.

Pure: the store gathers plain data, this module returns a decision, the dispatcher applies it.

Fairness rule, within a service: each free slot goes to the eligible user (below its quota, with a
due queued job) that comes first by `fairness_key`: fewest slot-holding jobs (jobs chosen earlier
in the same decision included), then served least recently in that service (never-served users
first), then oldest queued job, then user id. Within a user, oldest job first. "Served" is the
store's per-(service, user) dispatch turn, stamped when a job is claimed, so the rotation holds
across ticks, restarts and replicas with no state of ours between ticks: a user who flooded the
queue gets one slot, then waits until every other waiting user got one.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "FairnessKey",
    "NodeSlot",
    "Occupancy",
    "Placement",
    "ServiceLimits",
    "UserQueue",
    "assign_nodes",
    "choose_node",
    "fairness_key",
    "free_slots",
    "plan_dispatch",
]

# (active, served at all, last turn, oldest queued job, user id): smaller goes first.
FairnessKey = tuple[int, int, int, int, int]


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
    # The user's latest dispatch turn in this service (larger is more recent); None: never.
    last_served: int | None = None


@dataclass(frozen=True, slots=True)
class Occupancy:
    """Slot-holding jobs (Processing, Submitted, Prepared, Running, Locked) counted per
    (service, user) and per service."""

    per_user: Mapping[tuple[str, int], int]
    per_service: Mapping[str, int]


def fairness_key(
    active: int, last_served: int | None, oldest_job: int, user_id: int
) -> FairnessKey:
    """The order in which users of one service get a free slot; the store preselects by it.

    A total order: user ids are unique within a service, so no input order can matter.
    """
    if last_served is None:
        return (active, 0, 0, oldest_job, user_id)
    return (active, 1, last_served, oldest_job, user_id)


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
    users = {queue.user_id: queue for queue in queues}
    if len(users) < len(queues):
        users = _merge_duplicates(queues)

    # Entries: (fairness key, index of next job, the user's jobs); the key is a total order, so
    # the uncomparable last field never decides. A user served in this decision is stamped with
    # a turn after every stored one, in pick order, as the store will stamp it on claim.
    quota = limits.runs_per_user
    active_of = occupancy.per_user.get
    key_of = fairness_key
    heap: list[tuple[FairnessKey, int, tuple[int, ...]]] = [
        (key_of(active, queue.last_served, queue.job_ids[0], user_id), 0, queue.job_ids)
        for user_id, queue in users.items()
        if (active := active_of((service, user_id), 0)) < quota
    ]
    turn = 1 + max((entry[0][2] for entry in heap), default=0)
    heapq.heapify(heap)

    chosen: list[int] = []
    while heap and len(chosen) < slots:
        key, index, job_ids = heap[0]
        active, user_id = key[0], key[4]
        chosen.append(job_ids[index])
        index += 1
        if index < len(job_ids) and active + 1 < quota:
            key = fairness_key(active + 1, turn, job_ids[index], user_id)
            heapq.heapreplace(heap, (key, index, job_ids))
        else:
            heapq.heappop(heap)
        turn += 1
    return chosen


def _merge_duplicates(queues: list[UserQueue]) -> dict[int, UserQueue]:
    # The store should send one queue per user; merging a duplicate keeps the oldest-first
    # guarantee (and the latest turn) and keeps the result independent of input order.
    users: dict[int, UserQueue] = {}
    for queue in queues:
        earlier = users.get(queue.user_id)
        if earlier is None:
            users[queue.user_id] = queue
            continue
        turns = [t for t in (earlier.last_served, queue.last_served) if t is not None]
        users[queue.user_id] = UserQueue(
            queue.service,
            queue.user_id,
            tuple(sorted({*earlier.job_ids, *queue.job_ids})),
            max(turns) if turns else None,
        )
    return users


@dataclass(frozen=True, slots=True)
class NodeSlot:
    """A node a service's jobs may go to, as the fleet stood before the claim."""

    url: str
    #: How many payloads it runs at once, as it said (None: it did not say; no bound).
    max_concurrent: int | None
    load_percent: float


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one service's jobs may go in one claim: plain data, decided before the claim's
    transaction so nothing calls back into the engine from inside it."""

    nodes: tuple[NodeSlot, ...]
    #: At most this many jobs in this claim (1 while none of the nodes answers: one job
    #: tries them, the others wait); None: as many as the plan starts.
    at_most: int | None = None


def choose_node(nodes: Iterable[NodeSlot], active: Mapping[str, int]) -> str | None:
    """The node with the most free capacity; ties go to the least loaded."""

    def rank(node: NodeSlot) -> tuple[float, int, float]:
        running = active.get(node.url, 0)
        free = (node.max_concurrent - running) if node.max_concurrent else float("inf")
        return (-free, running, node.load_percent)

    best = min(nodes, key=rank, default=None)
    return best.url if best is not None else None


def assign_nodes(
    planned: Iterable[int], active: Mapping[str, int], placement: Placement
) -> dict[int, str]:
    """The node of each planned job, in order, as `choose_node` picks among the nodes'
    active counts (each pick counts at once); stops at the placement's bound or at the first
    job no node can take, so it and the jobs after it stay queued."""
    counts = dict(active)
    node_by_job: dict[int, str] = {}
    for job_id in planned:
        if placement.at_most is not None and len(node_by_job) >= placement.at_most:
            break
        node = choose_node(placement.nodes, counts)
        if node is None:
            break
        counts[node] = counts.get(node, 0) + 1
        node_by_job[job_id] = node
    return node_by_job
