"""The Store in Python structures: a real implementation for tests that need no database.

Same contract as SqlStore (tests/integration run both through one suite): ids never reused,
compare-and-set transitions, claims that keep a dispatch key and stamp the fairness turns,
leases and take-overs, callback deliveries claimed on their attempt count. Each verb is one
unit of work run whole under the database's lock, after yielding once to the event loop (so
concurrent callers interleave between units, as they do on a real database, never inside one).

Several stores opened on one `MemoryDatabase` act as replicas of one database: they see the
same jobs, and a store that `subscribe`s hears of the others' changes (a job queued, a slot
freed, a final status), as PostgreSQL's LISTEN/NOTIFY tells replicas. A closed store refuses
every verb with StoreUnavailableError; its database keeps the data (reopen: a restart).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from job_orchestrator.errors import StoreError, StoreUnavailableError
from job_orchestrator.server.scheduler import (
    Occupancy,
    ServiceLimits,
    UserQueue,
    fairness_key,
    plan_dispatch,
)
from job_orchestrator.server.storage._memory_callbacks import (
    MemoryCallbackVerbs,
    new_delivery,
)
from job_orchestrator.server.storage.base import ChooseNode, JobRecord, ServerStore
from job_orchestrator.status import SLOT_HOLDING, TERMINAL, Status

T = TypeVar("T")
Row = dict[str, Any]

#: The columns `transition` may set (those of the SQL jobs table but id, status, created_at).
COLUMNS = frozenset(
    {
        "user_id", "service", "loc", "dest_id", "message", "node", "dispatch_key", "attempts",
        "not_before", "failing_since", "queued_at", "dispatched_at", "updated_at",
        "finished_at", "started_at", "exit_code", "owner", "token_name",
    }
)  # fmt: skip
_FINAL = TERMINAL - {Status.CLEANED}


@dataclass
class _Replica:
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
    replicas: dict[str, _Replica] = field(default_factory=dict)
    callbacks: dict[int, Row] = field(default_factory=dict)
    stores: list[MemoryStore] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _record(job_id: int, row: Row) -> JobRecord:
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


def _due(row: Row, service: str, now: float) -> bool:
    return (
        row["status"] is Status.QUEUED
        and row["service"] == service
        and (row["not_before"] is None or row["not_before"] <= now)
    )


class MemoryStore(MemoryCallbackVerbs, ServerStore):
    """The Store and its views on a MemoryDatabase (a new one unless given).

    Also `claim`, `dispatch_candidates` and `callback_of`, as on SqlStore: called on their own
    only by the contract tests. Given a database, `shared` is True (other stores may use it).
    """

    def __init__(self, database: MemoryDatabase | None = None) -> None:
        self.shared = database is not None
        self._db = database if database is not None else MemoryDatabase()
        self._operations: Counter[str] = Counter()
        self._commits = 0
        self._closed = False
        self._wake: tuple[asyncio.AbstractEventLoop, Callable[[], None]] | None = None

    @property
    def database(self) -> MemoryDatabase:
        return self._db

    def work_counts(self) -> tuple[Mapping[str, int], int]:
        return self._operations, self._commits

    def subscribe(self, wake: Callable[[], None]) -> None:
        if self._wake is not None:
            return
        loop = asyncio.get_running_loop()
        self._wake = (loop, wake)
        with self._db.lock:
            self._db.stores.append(self)
        loop.call_soon(wake)  # as the listener does once it listens: for what came before

    async def _run(self, verb: str, work: Callable[[MemoryDatabase], T]) -> T:
        """One unit of work, counted under `verb` (job_orchestrator_store_operations_total)."""
        await asyncio.sleep(0)
        if self._closed:
            raise StoreUnavailableError("the store is closed")
        self._operations[verb] += 1
        with self._db.lock:
            result = work(self._db)
        self._commits += 1
        return result

    def _notify(self, new: Status | None, job_id: int) -> None:
        """Tell the other subscribed stores of the database, as NOTIFY does at commit."""
        if new is None or not (new is Status.QUEUED or new.is_terminal()):
            return
        with self._db.lock:
            others = [store for store in self._db.stores if store is not self]
        for other in others:
            if other._wake is None:
                continue
            loop, wake = other._wake
            if loop.is_closed():
                continue
            loop.call_soon_threadsafe(wake)
            if new.is_terminal():
                loop.call_soon_threadsafe(other._announce_final, job_id)

    # ---- jobs ----------------------------------------------------------------------------

    async def create_job(
        self,
        *,
        user_id: int,
        service: str,
        loc: str,
        callback_url: str | None = None,
        token_name: str | None = None,
    ) -> int:
        now = time.time()

        def insert(db: MemoryDatabase) -> int:
            job_id = next(db.ids)
            db.jobs[job_id] = dict.fromkeys(COLUMNS) | {
                "user_id": user_id,
                "service": service,
                "loc": loc,
                "status": Status.QUEUED,
                "message": "",
                "attempts": 0,
                "queued_at": now,
                "updated_at": now,
                "token_name": token_name,
            }
            db.service_users.setdefault((service, user_id), [job_id, None])
            if callback_url is not None:
                db.callbacks[job_id] = new_delivery(callback_url, now)
            return job_id

        job_id = await self._run("create_job", insert)
        self._notify(Status.QUEUED, job_id)
        return job_id

    async def get_job(self, job_id: int) -> JobRecord | None:
        def read(db: MemoryDatabase) -> JobRecord | None:
            row = db.jobs.get(job_id)
            return None if row is None else _record(job_id, row)

        return await self._run("get_job", read)

    async def transition(
        self,
        job_id: int,
        expected: Collection[Status],
        new: Status | None = None,
        **changes: Any,
    ) -> bool:
        return await self._transition("transition", job_id, expected, new, changes) is not None

    async def transition_returning(
        self,
        job_id: int,
        expected: Collection[Status],
        new: Status | None = None,
        **changes: Any,
    ) -> JobRecord | None:
        return await self._transition("transition_returning", job_id, expected, new, changes)

    async def _transition(
        self,
        verb: str,
        job_id: int,
        expected: Collection[Status],
        new: Status | None,
        changes: Mapping[str, Any],
    ) -> JobRecord | None:
        unknown = set(changes) - COLUMNS
        if unknown:
            raise StoreError(f"no such column(s) of jobs: {sorted(unknown)}")
        now = time.time()
        values: Row = {"updated_at": now, **changes}
        if new is not None:
            values["status"] = new
            if new in _FINAL:
                values.setdefault("finished_at", now)

        def move(db: MemoryDatabase) -> JobRecord | None:
            row = db.jobs.get(job_id)
            if row is None or row["status"] not in expected:
                return None
            row.update(values)
            return _record(job_id, row)

        moved = await self._run(verb, move)
        if moved is not None:
            self._notify(new, job_id)
            if new is not None and new.is_terminal():
                self._announce_final(job_id)
        return moved

    async def claim(
        self, job_ids: Iterable[int], node_by_job: Mapping[int, str], owner: str | None = None
    ) -> list[JobRecord]:
        """As SqlStore.claim: the given Queued jobs to Processing on their node (a node or a
        dispatch key they already have is kept), each claimed user served anew."""
        wanted = list(job_ids)
        if not wanted:
            return []
        return await self._run("claim", lambda db: _claim_rows(db, wanted, node_by_job, owner))

    async def claim_dispatchable(
        self,
        limits: Mapping[str, ServiceLimits],
        now: float,
        choose_node: ChooseNode,
        owner: str | None = None,
    ) -> list[JobRecord]:
        claimed: list[JobRecord] = []
        for service in sorted(limits):

            def decide(db: MemoryDatabase, service: str = service) -> list[JobRecord]:
                limit = limits[service]
                occupancy = _occupancy(db, service)
                queues = _candidates(db, service, limit, occupancy, now)
                planned = plan_dispatch(queues, occupancy, {service: limit})
                active = _node_occupancy(db, service)
                node_by_job: dict[int, str] = {}
                for job_id in planned:
                    node = choose_node(service, active)
                    if node is None:
                        break  # no node of this service can take work: its jobs stay queued
                    active[node] = active.get(node, 0) + 1
                    node_by_job[job_id] = node
                return _claim_rows(db, list(node_by_job), node_by_job, owner)

            claimed.extend(await self._run("claim_dispatchable", decide))
        return claimed

    async def dispatch_candidates(
        self, limits: Mapping[str, ServiceLimits], occupancy: Occupancy, now: float
    ) -> list[UserQueue]:
        """As SqlStore.dispatch_candidates: the queues plan_dispatch needs, the first users by
        `fairness_key`, at most the free slots of each service."""
        return await self._run(
            "dispatch_candidates",
            lambda db: [
                queue
                for service, limit in sorted(limits.items())
                for queue in _candidates(db, service, limit, occupancy, now)
            ],
        )

    async def next_retry_at(self, after: float | None = None) -> float | None:
        def earliest(db: MemoryDatabase) -> float | None:
            times = [
                row["not_before"]
                for row in db.jobs.values()
                if row["status"] is Status.QUEUED
                and row["not_before"] is not None
                and (after is None or row["not_before"] > after)
            ]
            return float(min(times)) if times else None

        return await self._run("next_retry_at", earliest)

    async def _select(self, verb: str, keep: Callable[[Row], bool]) -> list[JobRecord]:
        """The jobs `keep` accepts, in id order, as records."""
        return await self._run(
            verb, lambda db: [_record(i, row) for i, row in db.jobs.items() if keep(row)]
        )

    async def jobs_with_status(self, statuses: Collection[Status]) -> list[JobRecord]:
        wanted = set(statuses)
        return await self._select("jobs_with_status", lambda row: row["status"] in wanted)

    async def queued_count(self, user_id: int) -> int:
        return await self._run(
            "queued_count",
            lambda db: sum(
                1
                for row in db.jobs.values()
                if row["status"] is Status.QUEUED and row["user_id"] == user_id
            ),
        )

    async def finished_before(self, cutoff: float, limit: int = 500) -> list[JobRecord]:
        def finished(db: MemoryDatabase) -> list[JobRecord]:
            rows = [
                (row["finished_at"], job_id, row)
                for job_id, row in db.jobs.items()
                if row["status"] in _FINAL
                and row["finished_at"] is not None
                and row["finished_at"] < cutoff
            ]
            rows.sort(key=lambda item: (item[0], item[1]))
            return [_record(job_id, row) for _at, job_id, row in rows[:limit]]

        return await self._run("finished_before", finished)

    async def known_locs(self, locs: Collection[str]) -> set[str]:
        wanted = set(locs)
        return await self._run(
            "known_locs", lambda db: {row["loc"] for row in db.jobs.values()} & wanted
        )

    async def jobs_on_node(self, node: str, statuses: Collection[Status]) -> list[JobRecord]:
        wanted = set(statuses)
        return await self._select(
            "jobs_on_node", lambda row: row["node"] == node and row["status"] in wanted
        )

    # ---- revocations -------------------------------------------------------------------------

    async def revoke_to_queue(self, job: JobRecord, expected: Collection[Status]) -> bool:
        now = time.time()

        def revoke(db: MemoryDatabase) -> bool:
            row = db.jobs.get(job.id)
            # As SQL compares them: a job never given a payload id (dest_id NULL) is no match.
            if (
                row is None
                or row["node"] != job.node
                or row["dest_id"] != job.dest_id
                or row["status"] not in expected
            ):
                return False
            key = (str(job.node), job.dest_id)
            if key in db.revocations:  # the SQL primary key refuses it; nothing changes
                raise StoreError(f"payload {job.dest_id} on {job.node} is already revoked")
            row.update(
                status=Status.QUEUED,
                node=None,
                dest_id=None,
                dispatch_key=None,
                attempts=job.attempts + 1,
                updated_at=now,
            )
            db.revocations[key] = (job.id, job.dispatch_key)
            return True

        revoked = await self._run("revoke_to_queue", revoke)
        if revoked:
            self._notify(Status.QUEUED, job.id)
        return revoked

    async def revocations(self, node: str) -> list[tuple[int, int, str | None]]:
        return await self._run(
            "revocations",
            lambda db: sorted(
                (payload_id, job_id, key)
                for (on, payload_id), (job_id, key) in db.revocations.items()
                if on == node
            ),
        )

    async def add_revocation(
        self, node: str, payload_id: int, job_id: int, dispatch_key: str | None
    ) -> None:
        await self._run(
            "add_revocation",
            lambda db: db.revocations.setdefault((node, payload_id), (job_id, dispatch_key)),
        )

    async def forget_revocation(self, node: str, payload_id: int) -> None:
        await self._run("forget_revocation", lambda db: db.revocations.pop((node, payload_id), 0))

    # ---- replicas and leases -----------------------------------------------------------------

    async def heartbeat(
        self, replica_id: str, services_digest: str, now: float, incarnation: str = ""
    ) -> str | None:
        def beat(db: MemoryDatabase) -> str | None:
            previous = db.replicas.get(replica_id)
            started_at = now if previous is None else previous.started_at
            db.replicas[replica_id] = _Replica(now, started_at, services_digest, incarnation)
            return None if previous is None else previous.incarnation

        return await self._run("heartbeat", beat)

    async def live_replicas(self, since: float) -> dict[str, str]:
        return await self._run(
            "live_replicas",
            lambda db: {
                replica_id: replica.services_digest
                for replica_id, replica in db.replicas.items()
                if replica.heartbeat_at >= since
            },
        )

    async def retire_replica(self, replica_id: str) -> None:
        await self._run("retire_replica", lambda db: db.replicas.pop(replica_id, None))

    async def take_over(
        self, replica_id: str, statuses: Collection[Status], alive_since: float, *, own: bool
    ) -> list[JobRecord]:
        wanted = set(statuses)

        def take(db: MemoryDatabase) -> list[JobRecord]:
            alive = {
                other
                for other, replica in db.replicas.items()
                if replica.heartbeat_at >= alive_since and other != replica_id
            }
            taken = []
            for job_id, row in db.jobs.items():
                owner = row["owner"]
                if row["status"] not in wanted or owner in alive:
                    continue
                if owner == replica_id and not own:
                    continue
                row["owner"] = replica_id
                taken.append(_record(job_id, row))
            return taken

        return await self._run("take_over", take)

    async def ping(self) -> None:
        await self._run("ping", lambda db: None)

    async def close(self) -> None:
        self._closed = True
        with self._db.lock:
            if self in self._db.stores:
                self._db.stores.remove(self)

    # ---- views -------------------------------------------------------------------------------

    async def occupancy(self) -> Occupancy:
        return await self._run("occupancy", lambda db: _occupancy(db, None))

    async def status_counts(self) -> dict[tuple[str, Status], int]:
        return await self._run(
            "status_counts",
            lambda db: dict(Counter((row["service"], row["status"]) for row in db.jobs.values())),
        )

    async def node_occupancy(self, service: str) -> dict[str, int]:
        return await self._run("node_occupancy", lambda db: _node_occupancy(db, service))

    async def queue_heads(self, limits: Mapping[str, ServiceLimits], now: float) -> list[UserQueue]:
        def heads(db: MemoryDatabase) -> list[UserQueue]:
            queues: dict[tuple[str, int], list[int]] = {}
            for job_id, row in db.jobs.items():
                limit = limits.get(row["service"])
                if limit is None or not _due(row, row["service"], now):
                    continue
                queue = queues.setdefault((row["service"], row["user_id"]), [])
                if len(queue) < limit.runs_per_user:
                    queue.append(job_id)
            return [
                UserQueue(service, user_id, tuple(ids), db.service_users[service, user_id][1])
                for (service, user_id), ids in sorted(queues.items())
                if ids
            ]

        return await self._run("queue_heads", heads)

    async def list_jobs(
        self,
        *,
        limit: int,
        before_id: int | None = None,
        user_id: int | None = None,
        status: Status | None = None,
        service: str | None = None,
        user_ranges: Sequence[tuple[int, int]] | None = None,
    ) -> list[JobRecord]:
        def page(db: MemoryDatabase) -> list[JobRecord]:
            found: list[JobRecord] = []
            for job_id in sorted(db.jobs, reverse=True):
                if len(found) >= limit:
                    break
                row = db.jobs[job_id]
                if (
                    (before_id is None or job_id < before_id)
                    and (user_id is None or row["user_id"] == user_id)
                    and (status is None or row["status"] is status)
                    and (service is None or row["service"] == service)
                    and (
                        user_ranges is None
                        or any(low <= row["user_id"] <= high for low, high in user_ranges)
                    )
                ):
                    found.append(_record(job_id, row))
            return found

        return await self._run("list_jobs", page)

    async def open_job_counts(self) -> dict[tuple[str, int], dict[Status, int]]:
        def counts(db: MemoryDatabase) -> dict[tuple[str, int], dict[Status, int]]:
            found: dict[tuple[str, int], dict[Status, int]] = {}
            for row in db.jobs.values():
                if not row["status"].is_terminal():
                    by_status = found.setdefault((row["service"], row["user_id"]), {})
                    by_status[row["status"]] = by_status.get(row["status"], 0) + 1
            return found

        return await self._run("open_job_counts", counts)


# ---- units of work shared by the verbs ---------------------------------------------------------


def _occupancy(db: MemoryDatabase, service: str | None) -> Occupancy:
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


def _node_occupancy(db: MemoryDatabase, service: str) -> dict[str, int]:
    return dict(
        Counter(
            row["node"]
            for row in db.jobs.values()
            if row["service"] == service
            and row["status"] in SLOT_HOLDING
            and row["node"] is not None
        )
    )


def _candidates(
    db: MemoryDatabase, service: str, limit: ServiceLimits, occupancy: Occupancy, now: float
) -> list[UserQueue]:
    """The users plan_dispatch could pick now, first by `fairness_key`, at most the free
    slots, each with the due jobs it could start (SqlStore reads the same by index walks)."""
    free = limit.max_runs - occupancy.per_service.get(service, 0)
    quota = limit.runs_per_user
    if free <= 0 or quota <= 0:
        return []
    due: dict[int, list[int]] = {}
    for job_id, row in db.jobs.items():
        if _due(row, service, now):
            due.setdefault(row["user_id"], []).append(job_id)
    ranked = []
    for user_id, job_ids in due.items():
        active = occupancy.per_user.get((service, user_id), 0)
        if active < quota:
            turn = db.service_users[service, user_id][1]
            ranked.append((fairness_key(active, turn, job_ids[0], user_id), active))
    ranked.sort()
    return [
        UserQueue(
            service,
            key[4],
            tuple(due[key[4]][: quota - active]),
            key[2] if key[1] else None,
        )
        for key, active in ranked[:free]
    ]


def _claim_rows(
    db: MemoryDatabase, wanted: list[int], node_by_job: Mapping[int, str], owner: str | None
) -> list[JobRecord]:
    """Queued -> Processing, keeping a node or dispatch key the job has (a re-dispatch goes
    where the first may have arrived, recognisably); then the claimed users' turns."""
    now = time.time()
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
        claimed.append(_record(job_id, row))
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
