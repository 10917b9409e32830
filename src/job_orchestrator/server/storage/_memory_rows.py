"""MemoryStore's database (memory.py): the rows as Python structures, their records, and the
units of work more than one verb shares (occupancy, the dispatch candidates, the claim)."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from job_orchestrator.clock import SYSTEM_CLOCK, Clock
from job_orchestrator.server.scheduler import Occupancy, ServiceLimits, UserQueue, fairness_key
from job_orchestrator.server.storage.base import JobRecord
from job_orchestrator.status import SLOT_HOLDING, TERMINAL, Status

Row = dict[str, Any]


class ChangeListener(Protocol):
    """A store that hears of the changes other stores of its database commit (memory.py's
    MemoryStore once it subscribed), as a PostgreSQL replica hears NOTIFY."""

    def hear_change(self, job_id: int, *, final: bool) -> None:
        """Another store queued the job, freed a slot, or (`final`) moved it to a final
        status; called on that store's thread."""

    def lead_dispatch(self) -> None:
        """The store that led dispatch closed: this one leads now (stores[0])."""


#: The columns `transition` may set (those of the SQL jobs table but id, status, created_at).
COLUMNS = frozenset(
    {
        "user_id", "service", "loc", "dest_id", "message", "node", "dispatch_key", "attempts",
        "not_before", "failing_since", "queued_at", "dispatched_at", "updated_at",
        "finished_at", "started_at", "exit_code", "owner", "token_name",
    }
)  # fmt: skip
FINAL = TERMINAL - {Status.CLEANED}


@dataclass
class Replica:
    heartbeat_at: float
    started_at: float
    services_digest: str
    incarnation: str


@dataclass
class MemoryDatabase:
    """What a SQL database holds, as Python structures; share one between stores for
    replicas. Only the stores touch it, under `lock`."""

    jobs: dict[int, Row] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    #: (service, user) -> [first_job_id, served_turn or None]: the fairness rotation.
    service_users: dict[tuple[str, int], list[Any]] = field(default_factory=dict)
    #: (node, payload_id) -> (job_id, dispatch_key)
    revocations: dict[tuple[str, int], tuple[int, str | None]] = field(default_factory=dict)
    replicas: dict[str, Replica] = field(default_factory=dict)
    callbacks: dict[int, Row] = field(default_factory=dict)
    #: The subscribed stores, in order: the first leads dispatch (ServerStore.leads_dispatch).
    stores: list[ChangeListener] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The time its rows are stamped with (replicas on one database share it).
    clock: Clock = SYSTEM_CLOCK


def record(job_id: int, row: Row) -> JobRecord:
    return JobRecord(
        id=job_id,
        user_id=row["user_id"],
        service=row["service"],
        status=row["status"],
        loc=row["loc"],
        dest_id=row["dest_id"] or 0,
        message=row["message"] or "",
        node=row["node"],
        dispatch_key=row["dispatch_key"],
        attempts=row["attempts"] or 0,
        not_before=row["not_before"],
        failing_since=row["failing_since"],
        queued_at=row["queued_at"],
        dispatched_at=row["dispatched_at"],
        finished_at=row["finished_at"],
        created_at=row["queued_at"],
        started_at=row["started_at"],
        exit_code=row["exit_code"],
        owner=row["owner"],
        token_name=row["token_name"],
    )


def due(row: Row, service: str, now: float) -> bool:
    return (
        row["status"] is Status.QUEUED
        and row["service"] == service
        and (row["not_before"] is None or row["not_before"] <= now)
    )


def occupancy(db: MemoryDatabase, service: str | None) -> Occupancy:
    """Slot-holding jobs per (service, user) and per service; of one service, if given."""
    per_user = Counter(
        (row["service"], row["user_id"])
        for row in db.jobs.values()
        if row["status"] in SLOT_HOLDING and (service is None or row["service"] == service)
    )
    per_service: Counter[str] = Counter()
    for (name, _user), count in per_user.items():
        per_service[name] += count
    return Occupancy(per_user=dict(per_user), per_service=dict(per_service))


def node_occupancy(db: MemoryDatabase, service: str) -> dict[str, int]:
    return dict(
        Counter(
            row["node"]
            for row in db.jobs.values()
            if row["service"] == service
            and row["status"] in SLOT_HOLDING
            and row["node"] is not None
        )
    )


def candidates(
    db: MemoryDatabase, service: str, limit: ServiceLimits, occupancy: Occupancy, now: float
) -> list[UserQueue]:
    """The users plan_dispatch could pick now, first by `fairness_key`, at most the free
    slots, each with the due jobs it could start (SqlStore reads the same by index walks)."""
    free = limit.max_runs - occupancy.per_service.get(service, 0)
    quota = limit.runs_per_user
    if free <= 0 or quota <= 0:
        return []
    queued: dict[int, list[int]] = {}
    for job_id, row in db.jobs.items():
        if due(row, service, now):
            queued.setdefault(row["user_id"], []).append(job_id)
    ranked = []
    for user_id, job_ids in queued.items():
        active = occupancy.per_user.get((service, user_id), 0)
        if active < quota:
            turn = db.service_users[service, user_id][1]
            ranked.append((fairness_key(active, turn, job_ids[0], user_id), active))
    ranked.sort()
    return [
        UserQueue(
            service,
            key[4],
            tuple(queued[key[4]][: quota - active]),
            key[2] if key[1] else None,
        )
        for key, active in ranked[:free]
    ]


def claim_rows(
    db: MemoryDatabase, wanted: list[int], node_by_job: Mapping[int, str], owner: str | None
) -> list[JobRecord]:
    """Queued -> Processing, keeping a node or dispatch key the job has (a re-dispatch goes
    where the first may have arrived, recognisably); then the claimed users' turns."""
    now = db.clock.now()
    claimed = []
    for job_id in wanted:
        row = db.jobs.get(job_id)
        if row is None or row["status"] is not Status.QUEUED:
            continue
        row.update(
            status=Status.PROCESSING,
            node=row["node"] if row["node"] is not None else node_by_job[job_id],
            dispatch_key=(
                row["dispatch_key"]
                if row["dispatch_key"] is not None
                else f"job-{job_id}-{time.time_ns()}"
            ),
            owner=owner,
            updated_at=now,
        )
        claimed.append(record(job_id, row))
    turns: dict[str, int] = {}
    for job in claimed:
        if job.service not in turns:
            turns[job.service] = max(
                (
                    entry[1]
                    for (name, _user), entry in db.service_users.items()
                    if name == job.service and entry[1] is not None
                ),
                default=0,
            )
        turns[job.service] += 1
        entry = db.service_users.setdefault((job.service, job.user_id), [job.id, None])
        entry[1] = turns[job.service]
    return claimed
