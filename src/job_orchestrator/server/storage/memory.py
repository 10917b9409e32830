"""The Store in Python structures: a real implementation for tests that need no database.

Same contract as SqlStore (tests/integration run both through one suite): ids never reused,
compare-and-set transitions, claims that keep a dispatch key and stamp the fairness turns,
leases and take-overs, callback deliveries claimed on their attempt count. Each verb is one
unit of work run whole under the database's lock, after yielding once to the event loop (so
concurrent callers interleave between units, as they do on a real database, never inside one).

Several stores opened on one `MemoryDatabase` act as replicas of one database: they see the
same jobs, and a store that `subscribe`s hears of the others' changes (a job queued, a slot
freed, a final status), as PostgreSQL's LISTEN/NOTIFY tells replicas; the first to subscribe
leads dispatch until it closes, as the holder of the PostgreSQL lock does. A closed store refuses
every verb with StoreUnavailableError; its database keeps the data (reopen: a restart).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TypeVar

from job_orchestrator.clock import SYSTEM_CLOCK, Clock
from job_orchestrator.errors import QueueFullError, StoreUnavailableError
from job_orchestrator.server.scheduler import (
    Occupancy,
    Placement,
    ServiceLimits,
    UserQueue,
    assign_nodes,
    plan_dispatch,
)
from job_orchestrator.server.storage import _memory_rows as rows
from job_orchestrator.server.storage._memory_callbacks import (
    MemoryCallbackVerbs,
    new_delivery,
)
from job_orchestrator.server.storage._memory_failover import MemoryFailoverVerbs
from job_orchestrator.server.storage._memory_rows import MemoryDatabase, Row
from job_orchestrator.server.storage._memory_views import MemoryViewVerbs
from job_orchestrator.server.storage.base import JobRecord, ServerStore
from job_orchestrator.server.storage.changes import NO_CHANGES, JobChanges
from job_orchestrator.status import SERVER_MOVES, Status, check_move

__all__ = ["MemoryDatabase", "MemoryStore"]
T = TypeVar("T")


class MemoryStore(MemoryCallbackVerbs, MemoryViewVerbs, MemoryFailoverVerbs, ServerStore):
    """The Store and its views on a MemoryDatabase (a new one unless given).

    Also `claim`, `dispatch_candidates` and `callback_of`, as on SqlStore: called on their own
    only by the contract tests. Given a database, `shared` is True (other stores may use it).
    """

    def __init__(
        self, database: MemoryDatabase | None = None, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.shared = database is not None
        self._db = database if database is not None else MemoryDatabase(clock=clock)
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

    def leads_dispatch(self) -> bool:
        # As on PostgreSQL: a store that never subscribed is not in the election.
        with self._db.lock:
            stores = self._db.stores
            return self._wake is None or (bool(stores) and stores[0] is self)

    def lead_dispatch(self) -> None:
        if self._wake is not None and not (loop := self._wake[0]).is_closed():
            loop.call_soon_threadsafe(self._wake[1])

    def _notify(self, new: Status | None, job_id: int) -> None:
        """Tell the other subscribed stores of the database, as NOTIFY does at commit."""
        if new is None or not (new is Status.QUEUED or new.is_terminal()):
            return
        with self._db.lock:
            others = [store for store in self._db.stores if store is not self]
        for other in others:
            other.hear_change(job_id, final=new.is_terminal())

    def hear_change(self, job_id: int, *, final: bool) -> None:
        """Another store of the database changed a job: wake this one's engine, on its loop."""
        if self._wake is None:
            return
        loop, wake = self._wake
        if loop.is_closed():
            return
        loop.call_soon_threadsafe(wake)
        if final:
            loop.call_soon_threadsafe(self._heard_final, job_id)

    # ---- jobs ----------------------------------------------------------------------------

    async def create_job(
        self,
        *,
        user_id: int,
        service: str,
        loc: str,
        callback_url: str | None = None,
        token_name: str | None = None,
        queue_max: int = 0,
    ) -> int:
        now = self._db.clock.now()

        def insert(db: MemoryDatabase) -> int:
            if queue_max and _queued(db, user_id) >= queue_max:
                raise QueueFullError(f"user {user_id} has {queue_max} jobs queued")
            job_id = next(db.ids)
            db.jobs[job_id] = dict.fromkeys(rows.COLUMNS) | {
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
            return None if row is None else rows.record(job_id, row)

        return await self._run("get_job", read)

    async def transition(
        self,
        job_id: int,
        expected: Collection[Status],
        new: Status | None = None,
        changes: JobChanges = NO_CHANGES,
    ) -> bool:
        return await self._transition("transition", job_id, expected, new, changes) is not None

    async def transition_returning(
        self,
        job_id: int,
        expected: Collection[Status],
        new: Status | None = None,
        changes: JobChanges = NO_CHANGES,
    ) -> JobRecord | None:
        return await self._transition("transition_returning", job_id, expected, new, changes)

    async def _transition(
        self,
        verb: str,
        job_id: int,
        expected: Collection[Status],
        new: Status | None,
        changes: JobChanges,
    ) -> JobRecord | None:
        now = self._db.clock.now()
        values: Row = {"updated_at": now, **changes.columns()}
        if new is not None:
            check_move(SERVER_MOVES, expected, new)
            values["status"] = new
            if new in rows.FINAL:
                values.setdefault("finished_at", now)

        def move(db: MemoryDatabase) -> JobRecord | None:
            row = db.jobs.get(job_id)
            if row is None or row["status"] not in expected:
                return None
            row.update(values)
            return rows.record(job_id, row)

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
        return await self._run("claim", lambda db: rows.claim_rows(db, wanted, node_by_job, owner))

    async def claim_dispatchable(
        self,
        limits: Mapping[str, ServiceLimits],
        now: float,
        placements: Mapping[str, Placement],
        owner: str | None = None,
    ) -> list[JobRecord]:
        claimed: list[JobRecord] = []
        for service in sorted(limits):

            def decide(db: MemoryDatabase, service: str = service) -> list[JobRecord]:
                limit = limits[service]
                occupancy = rows.occupancy(db, service)
                queues = rows.candidates(db, service, limit, occupancy, now)
                planned = plan_dispatch(queues, occupancy, {service: limit})
                node_by_job = assign_nodes(
                    planned, rows.node_occupancy(db, service), placements[service]
                )
                return rows.claim_rows(db, list(node_by_job), node_by_job, owner)

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
                for queue in rows.candidates(db, service, limit, occupancy, now)
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
            verb, lambda db: [rows.record(i, row) for i, row in db.jobs.items() if keep(row)]
        )

    async def jobs_with_status(self, statuses: Collection[Status]) -> list[JobRecord]:
        wanted = set(statuses)
        return await self._select("jobs_with_status", lambda row: row["status"] in wanted)

    async def owned_job_ids(self, statuses: Collection[Status], owner: str) -> list[int]:
        wanted = set(statuses)
        return await self._run(
            "owned_job_ids",
            lambda db: [
                i for i, row in db.jobs.items() if row["status"] in wanted and row["owner"] == owner
            ],
        )

    async def finished_before(self, cutoff: float, limit: int = 500) -> list[JobRecord]:
        def finished(db: MemoryDatabase) -> list[JobRecord]:
            found = [
                (row["finished_at"], job_id, row)
                for job_id, row in db.jobs.items()
                if row["status"] in rows.FINAL
                and row["finished_at"] is not None
                and row["finished_at"] < cutoff
            ]
            found.sort(key=lambda item: (item[0], item[1]))
            return [rows.record(job_id, row) for _at, job_id, row in found[:limit]]

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

    async def ping(self) -> None:
        await self._run("ping", lambda db: None)

    async def close(self) -> None:
        self._closed = True
        with self._db.lock:
            led = bool(self._db.stores) and self._db.stores[0] is self
            if self in self._db.stores:
                self._db.stores.remove(self)
            successor = self._db.stores[0] if led and self._db.stores else None
        if successor is not None:
            successor.lead_dispatch()


def _queued(db: MemoryDatabase, user_id: int) -> int:
    return sum(
        1
        for row in db.jobs.values()
        if row["status"] is Status.QUEUED and row["user_id"] == user_id
    )
