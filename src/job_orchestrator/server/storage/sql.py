"""The Store on SQLAlchemy Core, one implementation for SQLite and PostgreSQL.

Every Store method is one synchronous unit of work on a Connection (claim_dispatchable: one
per service), atomic on its own: on SQLite run by a single dedicated thread that owns the
only connection (writes are serialised there, as in datasette, so they never wait on
SQLite's lock; units queued together share a transaction, each in a savepoint, and one
commit), on PostgreSQL in a transaction of its own through the async engine (asyncpg); both
backends are in backend.py.
Compare-and-set is one `UPDATE ... WHERE id = ? AND status IN (...)`, atomic on either
database.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from job_orchestrator.errors import QueueFullError, StoreError
from job_orchestrator.server.scheduler import (
    Occupancy,
    Placement,
    ServiceLimits,
    UserQueue,
)
from job_orchestrator.server.storage._claim import claim_rows
from job_orchestrator.server.storage._dispatch import claim_service, service_candidates
from job_orchestrator.server.storage._move import Move
from job_orchestrator.server.storage._notify import (
    DISPATCH_CHANNEL,
    FINAL_CHANNEL,
    Listener,
    announce,
)
from job_orchestrator.server.storage._rows import job_record
from job_orchestrator.server.storage._service_users import (
    QUEUED_OF_USER,
    NewJob,
    new_job_statement,
    user_inserts,
)
from job_orchestrator.server.storage._unit import Backend, PreparedRead, Read, Work
from job_orchestrator.server.storage.backend import open_backend
from job_orchestrator.server.storage.base import JobRecord, ServerStore
from job_orchestrator.server.storage.changes import NO_CHANGES, JobChanges
from job_orchestrator.server.storage.sql_callbacks import SqlCallbackVerbs, insert_callback
from job_orchestrator.server.storage.sql_failover import SqlFailoverVerbs
from job_orchestrator.server.storage.sql_views import SqlViewVerbs
from job_orchestrator.server.storage.tables import jobs
from job_orchestrator.status import SERVER_MOVES, SLOT_HOLDING, TERMINAL, Status, check_move

_FINAL_DB = [status.db for status in TERMINAL if status is not Status.CLEANED]
T = TypeVar("T")

# The hottest statements, built once and executed with parameters: a statement object run
# again skips SQLAlchemy's construction and cache-key work (its compiled form is cached).
_INSERT_JOB = jobs.insert()
_GET_JOB = PreparedRead(jobs.select().where(jobs.c.id == sa.bindparam("job_id")))
_NEXT_RETRY_AT = sa.select(sa.func.min(jobs.c.not_before)).where(
    jobs.c.status == Status.QUEUED.db, jobs.c.not_before.is_not(None)
)


async def open_store(db_path: str) -> SqlStore:
    backend, listen_dsn = await open_backend(db_path)
    return SqlStore(backend, listen_dsn=listen_dsn)


class SqlStore(SqlCallbackVerbs, SqlViewVerbs, SqlFailoverVerbs, ServerStore):
    """The Store and its views on SQLite or PostgreSQL.

    Also `claim`, `dispatch_candidates` and `callback_of`, parts of the verbs that the
    contract tests and bench/ call on their own; they are no part of the interfaces.
    """

    def __init__(self, backend: Backend, listen_dsn: str | None = None) -> None:
        self._backend = backend
        #: Where LISTEN/NOTIFY wake-ups cross replicas (PostgreSQL); None: this process only.
        self._listen_dsn = listen_dsn
        self.shared = listen_dsn is not None
        self._listener: Listener | None = None
        self._operations: Counter[str] = Counter()

    def work_counts(self) -> tuple[Mapping[str, int], int]:
        return self._operations, self._backend.commits

    def round_trips(self) -> int:
        return self._backend.round_trips

    def subscribe(self, wake: Callable[[], None]) -> None:
        if self._listen_dsn is None or self._listener is not None:
            return  # SQLite: one process, whose own events already wake it
        self._listener = Listener(
            self._listen_dsn, wake, self._heard_final, own=self._backend.notifier_pids
        )
        self._listener.start()

    def leads_dispatch(self) -> bool:
        return self._listener is None or self._listener.leading

    def _notify(self, connection: Connection, new: Status | None, job_id: int) -> None:
        """Tell the other replicas, at commit, that a slot or a queued job may be there."""
        if self._listen_dsn is None:
            return
        if new is None or not (new is Status.QUEUED or new.is_terminal()):
            return
        announce(connection, DISPATCH_CHANNEL)
        if new.is_terminal():
            announce(connection, FINAL_CHANNEL, str(job_id))

    async def _run(self, verb: str, work: Work[T], *, alone: bool = False) -> T:
        """Run one unit of work, counted under `verb` (`alone`: Backend.run)."""
        return await self._counted(verb, self._backend.run(work, alone=alone))

    async def _execute(self, verb: str, statement: sa.Executable) -> int:
        """Run one statement; return the number of rows it changed."""
        return await self._run(verb, lambda connection: connection.execute(statement).rowcount)

    async def _fetch(
        self, verb: str, statement: Read, params: Mapping[str, Any] | None = None
    ) -> list[Any]:
        """The rows of one read, counted under `verb` as a unit (on PostgreSQL it runs
        without a transaction)."""
        return await self._counted(verb, self._backend.fetch(statement, params))

    async def _counted(self, verb: str, call: Awaitable[T]) -> T:
        """`call`'s result, counted under `verb` (the label of
        job_orchestrator_store_operations_total: the public verb's name)."""
        self._operations[verb] += 1
        try:
            return await call
        except SQLAlchemyError as error:
            raise StoreError(str(error)) from error

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
        now = time.time()
        values = {
            "user_id": user_id,
            "service": service,
            "loc": loc,
            "status": Status.QUEUED.db,
            "queued_at": now,
            "updated_at": now,
            "token_name": token_name,
        }

        def insert(connection: Connection) -> int | None:
            # A full queue is an answer, not an error: raised here, it would roll back every
            # unit sharing this one's commit.
            if connection.dialect.name == "postgresql":
                statement = new_job_statement(limited=queue_max > 0)
                new_id = connection.execute(statement, {**values, "queue_max": queue_max}).scalar()
                if new_id is None:
                    return None
                job_id = int(new_id)
            else:
                if (
                    queue_max
                    and connection.execute(QUEUED_OF_USER, values).scalar_one() >= queue_max
                ):
                    return None
                primary_key = connection.execute(_INSERT_JOB, values).inserted_primary_key
                assert primary_key is not None
                job_id = int(primary_key[0])
                connection.execute(
                    user_inserts(connection.dialect.name)[0],
                    {"service": service, "user_id": user_id, "first_job_id": job_id},
                )
            if callback_url is not None:
                insert_callback(connection, job_id, callback_url, now)
            self._notify(connection, Status.QUEUED, job_id)
            return job_id

        work: Work[int | None] = insert
        if not queue_max and callback_url is None:
            # One statement with the batch's other new jobs (PostgreSQL).
            work = NewJob(
                values,
                insert,
                lambda connection, job_id: self._notify(connection, Status.QUEUED, job_id),
            )
        job_id = await self._run("create_job", work)
        if job_id is None:
            raise QueueFullError(f"user {user_id} has {queue_max} jobs queued")
        return job_id

    async def get_job(self, job_id: int) -> JobRecord | None:
        rows = await self._fetch("get_job", _GET_JOB, {"job_id": job_id})
        return job_record(rows[0]) if rows else None

    async def transition(
        self,
        job_id: int,
        expected: Collection[Status],
        new: Status | None = None,
        changes: JobChanges = NO_CHANGES,
    ) -> bool:
        return bool(
            await self._transition("transition", job_id, expected, new, changes, returning=False)
        )

    async def transition_returning(
        self,
        job_id: int,
        expected: Collection[Status],
        new: Status | None = None,
        changes: JobChanges = NO_CHANGES,
    ) -> JobRecord | None:
        row = await self._transition(
            "transition_returning", job_id, expected, new, changes, returning=True
        )
        return job_record(row) if row is not None else None

    async def _transition(
        self,
        verb: str,
        job_id: int,
        expected: Collection[Status],
        new: Status | None,
        changes: JobChanges,
        *,
        returning: bool,
    ) -> Any:
        """The row as changed (returning) or whether it changed; None/False: it did not."""
        now = time.time()
        values: dict[str, Any] = {"updated_at": now, **changes.columns()}
        if new is not None:
            check_move(SERVER_MOVES, expected, new)
            values["status"] = new.db
            if new.is_terminal() and new is not Status.CLEANED:
                values.setdefault("finished_at", now)
        move = Move(
            job_id,
            tuple(status.db for status in expected),
            values,
            returning,
            moved=lambda connection: self._notify(connection, new, job_id),
        )
        outcome = await self._run(verb, move)
        if outcome and new is not None and new.is_terminal():
            self._announce_final(job_id)
        return outcome

    async def claim(
        self, job_ids: Iterable[int], node_by_job: Mapping[int, str], owner: str | None = None
    ) -> list[JobRecord]:
        """Move the given Queued jobs to Processing on their chosen node; return those claimed
        (claim_dispatchable's claim, on jobs chosen by the caller).

        Each claimed job's user becomes the most recently served of its service (a new turn,
        in the order given), which the fairness rule reads back as `UserQueue.last_served`.
        """
        wanted = list(job_ids)
        return (
            await self._run(
                "claim", lambda connection: claim_rows(connection, wanted, node_by_job, owner)
            )
            if wanted
            else []
        )

    async def claim_dispatchable(
        self,
        limits: Mapping[str, ServiceLimits],
        now: float,
        placements: Mapping[str, Placement],
        owner: str | None = None,
    ) -> list[JobRecord]:
        claimed: list[JobRecord] = []
        for service, limit in sorted(limits.items()):
            # One short transaction per service: a service's lock never waits on another's.
            claimed.extend(
                await self._run(
                    "claim_dispatchable",
                    functools.partial(
                        claim_service, service, limit, now, placements[service], owner
                    ),
                    # Freed slots wait for the decision: not behind a writer's batch.
                    alone=True,
                )
            )
        return claimed

    async def occupancy(self) -> Occupancy:
        rows = await self._fetch(
            "occupancy",
            sa.select(jobs.c.service, jobs.c.user_id, sa.func.count())
            .where(jobs.c.status.in_([s.db for s in SLOT_HOLDING]))
            .group_by(jobs.c.service, jobs.c.user_id),
        )
        per_user = {(row[0], row[1]): row[2] for row in rows}
        per_service: dict[str, int] = {}
        for (service, _user), count in per_user.items():
            per_service[service] = per_service.get(service, 0) + count
        return Occupancy(per_user=per_user, per_service=per_service)

    async def dispatch_candidates(
        self, limits: Mapping[str, ServiceLimits], occupancy: Occupancy, now: float
    ) -> list[UserQueue]:
        """The due queues plan_dispatch needs for an exact decision (those claim_dispatchable
        reads): only the users it could pick now (at most the free slots of each service, the
        first by `fairness_key`), each with the jobs it could start and its latest turn."""
        return await self._run(
            "dispatch_candidates",
            lambda connection: [
                queue
                for service, limit in sorted(limits.items())
                for queue in service_candidates(connection, service, limit, occupancy, now)
            ],
        )

    async def next_retry_at(self, after: float | None = None) -> float | None:
        statement = _NEXT_RETRY_AT
        if after is not None:
            statement = statement.where(jobs.c.not_before > after)
        rows = await self._fetch("next_retry_at", statement)
        value = rows[0][0] if rows else None
        return float(value) if value is not None else None

    async def jobs_with_status(self, statuses: Collection[Status]) -> list[JobRecord]:
        rows = await self._fetch(
            "jobs_with_status",
            jobs.select().where(jobs.c.status.in_([s.db for s in statuses])).order_by(jobs.c.id),
        )
        return [job_record(row) for row in rows]

    async def owned_job_ids(self, statuses: Collection[Status], owner: str) -> list[int]:
        rows = await self._fetch(
            "owned_job_ids",
            sa.select(jobs.c.id)
            .where(jobs.c.status.in_([s.db for s in statuses]), jobs.c.owner == owner)
            .order_by(jobs.c.id),
        )
        return [row[0] for row in rows]

    async def finished_before(self, cutoff: float, limit: int = 500) -> list[JobRecord]:
        rows = await self._fetch(
            "finished_before",
            jobs.select()
            .where(jobs.c.status.in_(_FINAL_DB), jobs.c.finished_at < cutoff)
            .order_by(jobs.c.finished_at)
            .limit(limit),
        )
        return [job_record(row) for row in rows]

    async def known_locs(self, locs: Collection[str]) -> set[str]:
        if not locs:
            return set()
        rows = await self._fetch(
            "known_locs", sa.select(jobs.c.loc).where(jobs.c.loc.in_(list(locs)))
        )
        return {row[0] for row in rows}

    async def jobs_on_node(self, node: str, statuses: Collection[Status]) -> list[JobRecord]:
        rows = await self._fetch(
            "jobs_on_node",
            jobs.select()
            .where(jobs.c.node == node, jobs.c.status.in_([s.db for s in statuses]))
            .order_by(jobs.c.id),
        )
        return [job_record(row) for row in rows]

    async def ping(self) -> None:
        await self._fetch("ping", sa.select(sa.literal(1)))

    async def schema_revision(self) -> str:
        """The Alembic revision(s) the database is at."""
        rows = await self._fetch(
            "schema_revision", sa.text("SELECT version_num FROM alembic_version")
        )
        return ",".join(sorted(row[0] for row in rows))

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
        await self._backend.close()
