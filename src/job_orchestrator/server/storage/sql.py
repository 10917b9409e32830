"""The Store on SQLAlchemy Core, one implementation for SQLite and PostgreSQL.

Every Store method is one synchronous unit of work on a Connection, run in one transaction:
on SQLite by a single dedicated thread that owns the only connection (writes are serialised
there, as in datasette, so they never wait on SQLite's lock and each call costs one thread
hop), on PostgreSQL through the async engine (asyncpg). Compare-and-set is one
`UPDATE ... WHERE id = ? AND status IN (...)`, atomic on either database.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from job_orchestrator.errors import StoreError, StoreUnavailableError
from job_orchestrator.server.scheduler import (
    FairnessKey,
    Occupancy,
    ServiceLimits,
    UserQueue,
    fairness_key,
    plan_dispatch,
)
from job_orchestrator.server.storage.base import ChooseNode, JobRecord, Store
from job_orchestrator.server.storage.tables import jobs, replicas, revocations, service_users
from job_orchestrator.status import SLOT_HOLDING, TERMINAL, Status

_MIGRATIONS = Path(__file__).with_name("migrations")
_FINAL_DB = [status.db for status in TERMINAL if status is not Status.CLEANED]
T = TypeVar("T")
Work = Callable[[Connection], T]


def database_url(db_path: str) -> str:
    """DB_PATH is a file path (as upstream) or a full SQLAlchemy URL (PostgreSQL)."""
    if "://" in db_path:
        return db_path
    return f"sqlite:///{db_path}"


async def open_store(db_path: str) -> SqlStore:
    url = database_url(db_path)
    backend: _Backend
    if url.startswith("sqlite"):
        if db_path != ":memory:" and "://" not in db_path:
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        backend = _SqliteThread(url)
    else:
        backend = _AsyncEngine(create_async_engine(url, pool_pre_ping=True))
    try:
        await backend.run(_migrate)
    except (SQLAlchemyError, OSError) as error:
        await backend.close()
        raise StoreError(f"cannot open database {db_path!r}: {error}") from error
    return SqlStore(backend)


class _Backend:
    async def run(self, work: Work[T]) -> T:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _SqliteThread(_Backend):
    """One thread, one connection: every unit of work runs there, one after the other."""

    def __init__(self, url: str) -> None:
        self._engine: Engine = sa.create_engine(
            url, poolclass=StaticPool, connect_args={"check_same_thread": False, "timeout": 30}
        )
        sa.event.listen(self._engine, "connect", _sqlite_pragmas)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._connection: Connection | None = None
        self._closed = False

    def _in_thread(self, work: Work[T]) -> T:
        if self._connection is None:
            self._connection = self._engine.connect()
        with self._connection.begin():
            return work(self._connection)

    async def run(self, work: Work[T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._in_thread, work)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def shut() -> None:
            if self._connection is not None:
                self._connection.close()
            self._engine.dispose()

        await asyncio.get_running_loop().run_in_executor(self._thread, shut)
        self._thread.shutdown(wait=True)


class _AsyncEngine(_Backend):
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def run(self, work: Work[T]) -> T:
        try:
            async with self._engine.begin() as connection:
                return await connection.run_sync(work)
        except (OSError, TimeoutError) as error:  # asyncpg could not connect at all
            raise StoreUnavailableError(f"the database cannot be reached: {error}") from error
        except DBAPIError as error:
            if error.connection_invalidated or isinstance(error, OperationalError | InterfaceError):
                raise StoreUnavailableError(f"the database cannot be reached: {error}") from error
            raise

    async def close(self) -> None:
        await self._engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _migrate(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Replicas starting together on an empty database: one migrates, the others wait
        # here, then find the schema at head. Released when this transaction commits.
        connection.execute(_MIGRATION_LOCK)
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _record(row: Any) -> JobRecord:
    return JobRecord(
        id=row.id,
        user_id=row.user_id,
        service=row.service,
        status=Status.from_db(row.status),
        loc=row.loc,
        dest_id=row.dest_id or 0,
        message=row.message or "",
        node=row.node,
        dispatch_key=row.dispatch_key,
        attempts=row.attempts or 0,
        not_before=row.not_before,
        failing_since=row.failing_since,
        queued_at=row.queued_at,
        dispatched_at=row.dispatched_at,
        finished_at=row.finished_at,
        owner=row.owner,
    )


_SCAN_BATCH = 256


def _insert_user(connection: Connection, **values: Any) -> Any:
    """INSERT INTO service_users, with the dialect's ON CONFLICT clauses available."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(service_users).values(**values)


# The statements of a dispatch decision, built once: executing the same statement object again
# skips SQLAlchemy's per-statement construction and cache-key work, which is most of the cost
# of a decision that reads a few index entries.
_DUE_QUEUED = sa.and_(
    jobs.c.status == Status.QUEUED.db,
    jobs.c.service == sa.bindparam("service"),
    sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= sa.bindparam("now")),
)
_OLDEST_DUE = (
    sa.select(sa.func.min(jobs.c.id))
    .where(_DUE_QUEUED, jobs.c.user_id == service_users.c.user_id)
    .correlate(service_users)
    .scalar_subquery()
)
# In the walks' WHERE, so the database (not a round trip per batch) skips the rows of users
# with nothing due.
_HAS_DUE = (
    sa.select(jobs.c.id)
    .where(_DUE_QUEUED, jobs.c.user_id == service_users.c.user_id)
    .correlate(service_users)
    .exists()
)
_OF_SERVICE = service_users.c.service == sa.bindparam("service")

_BUSY_USERS = sa.select(service_users.c.user_id, service_users.c.served_turn, _OLDEST_DUE).where(
    _OF_SERVICE, service_users.c.user_id.in_(sa.bindparam("users", expanding=True))
)
_NEVER_SERVED_WALK = (
    sa.select(service_users.c.user_id, service_users.c.first_job_id, _OLDEST_DUE)
    .where(
        _OF_SERVICE,
        service_users.c.served_turn.is_(None),
        service_users.c.first_job_id > sa.bindparam("after"),
        _HAS_DUE,
    )
    .order_by(service_users.c.first_job_id)
    .limit(sa.bindparam("batch"))
)
_SERVED_WALK = (
    sa.select(service_users.c.user_id, service_users.c.served_turn, _OLDEST_DUE)
    .where(
        _OF_SERVICE,
        # Keyset after (turn, user): the first condition alone bounds the index range.
        service_users.c.served_turn >= sa.bindparam("turn"),
        sa.or_(
            service_users.c.served_turn > sa.bindparam("turn"),
            service_users.c.user_id > sa.bindparam("user"),
        ),
        _HAS_DUE,
    )
    .order_by(service_users.c.served_turn, service_users.c.user_id)
    .limit(sa.bindparam("batch"))
)
_USER_HEAD = (
    sa.select(jobs.c.id)
    .where(_DUE_QUEUED, jobs.c.user_id == sa.bindparam("user"))
    .order_by(jobs.c.id)
    .limit(sa.bindparam("depth"))
)
_LOWEST = -(2**63)  # below any user id, job id or turn, in a bound (never sent to the database)


def _service_candidates(
    connection: Connection, service: str, limit: ServiceLimits, occupancy: Occupancy, now: float
) -> list[UserQueue]:
    """The queues plan_dispatch needs to decide exactly as if it saw every user's queue.

    The users plan_dispatch picks in one decision are a prefix, no longer than the free slots,
    of the users sorted by `fairness_key`; this finds that prefix without reading every queue.
    Users holding slots are few (at most max_runs) and looked up one by one. Idle users come
    before them: first the never-served, walked in `first_job_id` order (a lower bound of their
    oldest queued job), then the served, walked in turn order; each walk stops once it has
    `free` users that no later row could beat. Cost grows with slots, not with queued jobs,
    plus one index probe (in the database) for each user the walks pass with nothing due:
    users served before the waiting ones whose queues are empty now. Rows are never deleted,
    since a returning user must rank by its old turn, so that part grows with the service's
    history of users.
    """
    free = limit.max_runs - occupancy.per_service.get(service, 0)
    quota = limit.runs_per_user
    if free <= 0 or quota <= 0:
        return []
    active = {
        user: count
        for (name, user), count in occupancy.per_user.items()
        if name == service and count > 0
    }
    where = {"service": service, "now": now}
    ranked: list[tuple[FairnessKey, int]] = []  # (key, slots held), sorted
    busy = [user for user, count in active.items() if count < quota]
    if busy:
        for user, turn, oldest in connection.execute(_BUSY_USERS, {**where, "users": busy}):
            if oldest is not None:
                bisect.insort(
                    ranked, (fairness_key(active[user], turn, oldest, user), active[user])
                )

    def enough(bound: FairnessKey) -> bool:
        # No later row of this walk can beat the free-th best user found so far.
        return len(ranked) >= free and ranked[free - 1][0] < bound

    # Each row read costs one index probe for its oldest job: read about as many as needed.
    batch, after = max(free, 8), 0  # job ids start at 1
    # A later row's first_job_id, hence its user's oldest queued job, is above `after`.
    while not enough((0, 0, 0, after + 1, _LOWEST)):
        rows = connection.execute(_NEVER_SERVED_WALK, {**where, "after": after, "batch": batch})
        read = 0
        for user, first_job_id, oldest in rows:
            read += 1
            if enough((0, 0, 0, first_job_id, _LOWEST)):
                break
            if oldest is not None and user not in active:
                bisect.insort(ranked, (fairness_key(0, None, oldest, user), 0))
            after = first_job_id
        if read < batch:
            break
        batch = min(2 * batch, _SCAN_BATCH)

    batch, turn_after, user_after = max(free, 8), 0, 0  # turns start at 1
    while not enough((0, 1, turn_after, _LOWEST, _LOWEST)):
        params = {**where, "turn": turn_after, "user": user_after, "batch": batch}
        read = 0
        for user, turn, oldest in connection.execute(_SERVED_WALK, params):
            read += 1
            if enough((0, 1, turn, _LOWEST, _LOWEST)):
                break
            if oldest is not None and user not in active:
                bisect.insort(ranked, (fairness_key(0, turn, oldest, user), 0))
            turn_after, user_after = turn, user
        if read < batch:
            break
        batch = min(2 * batch, _SCAN_BATCH)

    return [
        UserQueue(
            service=service,
            user_id=key[4],
            job_ids=tuple(
                connection.execute(
                    _USER_HEAD, {**where, "user": key[4], "depth": quota - count}
                ).scalars()
            ),
            last_served=key[2] if key[1] else None,
        )
        for key, count in ranked[:free]
    ]


def _claim_rows(
    connection: Connection,
    wanted: list[int],
    node_by_job: Mapping[int, str],
    owner: str | None,
) -> list[JobRecord]:
    now = time.time()
    claimed = []
    for job_id in wanted:
        # A dispatch key survives a restart, so a re-dispatch is recognised.
        row = connection.execute(
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.status == Status.QUEUED.db)
            .values(
                status=Status.PROCESSING.db,
                # A dispatch that may have reached a node is only ever resent there,
                # with its key, so that node can recognise it.
                node=sa.func.coalesce(jobs.c.node, sa.literal(node_by_job[job_id])),
                dispatch_key=sa.func.coalesce(
                    jobs.c.dispatch_key, sa.literal(f"job-{job_id}-{time.time_ns()}")
                ),
                owner=owner,
                updated_at=now,
            )
            .returning(*jobs.c)
        ).first()
        if row is not None:
            claimed.append(_record(row))
    _stamp_turns(connection, claimed)
    return claimed


def _service_occupancy(connection: Connection, service: str) -> Occupancy:
    rows = connection.execute(
        sa.select(jobs.c.user_id, sa.func.count())
        .where(jobs.c.service == service, jobs.c.status.in_([s.db for s in SLOT_HOLDING]))
        .group_by(jobs.c.user_id)
    )
    per_user = {(service, user_id): count for user_id, count in rows}
    return Occupancy(per_user=per_user, per_service={service: sum(per_user.values())})


def _node_occupancy(connection: Connection, service: str) -> dict[str, int]:
    rows = connection.execute(
        sa.select(jobs.c.node, sa.func.count())
        .where(jobs.c.service == service, jobs.c.status.in_([s.db for s in SLOT_HOLDING]))
        .group_by(jobs.c.node)
    )
    return {node: count for node, count in rows if node is not None}


def _claim_service(
    service: str,
    limit: ServiceLimits,
    now: float,
    choose_node: ChooseNode,
    owner: str | None,
    connection: Connection,
) -> list[JobRecord]:
    """One service's whole dispatch decision in one transaction: occupancy, candidates, the
    scheduler's choice, the nodes and the compare-and-set claim.

    On PostgreSQL a transaction-scoped advisory lock per service serialises the decisions of
    every replica, so each reads the occupancy the previous one left and no quota is ever
    exceeded; the claimed rows are locked with SKIP LOCKED, so a row a terminate is moving
    is left for the next decision instead of waited on. SQLite's single writer already
    serialises them.
    """
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        connection.execute(_DISPATCH_LOCK, {"name": f"job-orchestrator:dispatch:{service}"})
    occupancy = _service_occupancy(connection, service)
    candidates = _service_candidates(connection, service, limit, occupancy, now)
    planned = plan_dispatch(candidates, occupancy, {service: limit})
    if not planned:
        return []
    if postgres:
        lockable = set(
            connection.execute(
                sa.select(jobs.c.id)
                .where(jobs.c.id.in_(planned), jobs.c.status == Status.QUEUED.db)
                .with_for_update(skip_locked=True)
            ).scalars()
        )
        planned = [job_id for job_id in planned if job_id in lockable]
    active = _node_occupancy(connection, service)
    node_by_job: dict[int, str] = {}
    for job_id in planned:
        node = choose_node(service, active)
        if node is None:
            break  # no node of this service can take work: its jobs stay queued
        active[node] = active.get(node, 0) + 1
        node_by_job[job_id] = node
    return _claim_rows(connection, list(node_by_job), node_by_job, owner)


_MIGRATION_LOCK = sa.text("SELECT pg_advisory_xact_lock(hashtext('job-orchestrator:migrate'))")
_DISPATCH_LOCK = sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))")


def _stamp_turns(connection: Connection, claimed: list[JobRecord]) -> None:
    """Each claimed job's user becomes the most recently served of its service, in claim
    order (the order plan_dispatch chose them), as the scheduler assumes within a decision."""
    turns: dict[str, int] = {}
    for job in claimed:
        if job.service not in turns:
            latest = connection.execute(
                sa.select(sa.func.max(service_users.c.served_turn)).where(
                    service_users.c.service == job.service
                )
            ).scalar()
            turns[job.service] = int(latest or 0)
        turns[job.service] += 1
        connection.execute(
            _insert_user(
                connection,
                service=job.service,
                user_id=job.user_id,
                first_job_id=job.id,
                served_turn=turns[job.service],
            ).on_conflict_do_update(
                index_elements=["service", "user_id"],
                set_={"served_turn": turns[job.service]},
            )
        )


class SqlStore(Store):
    def __init__(self, backend: _Backend) -> None:
        self._backend = backend

    async def _run(self, work: Work[T]) -> T:
        try:
            return await self._backend.run(work)
        except SQLAlchemyError as error:
            raise StoreError(str(error)) from error

    async def _execute(self, statement: sa.Executable) -> int:
        """Run one statement; return the number of rows it changed."""
        return await self._run(lambda connection: connection.execute(statement).rowcount)

    async def _fetch(self, statement: sa.Executable) -> list[Any]:
        return await self._run(lambda connection: list(connection.execute(statement).all()))

    async def create_job(self, *, user_id: int, service: str, loc: str) -> int:
        now = time.time()
        statement = jobs.insert().values(
            user_id=user_id,
            service=service,
            loc=loc,
            status=Status.QUEUED.db,
            queued_at=now,
            updated_at=now,
        )

        def insert(connection: Connection) -> int:
            primary_key = connection.execute(statement).inserted_primary_key
            assert primary_key is not None
            job_id = int(primary_key[0])
            connection.execute(
                _insert_user(
                    connection, service=service, user_id=user_id, first_job_id=job_id
                ).on_conflict_do_nothing(index_elements=["service", "user_id"])
            )
            return job_id

        return await self._run(insert)

    async def get_job(self, job_id: int) -> JobRecord | None:
        rows = await self._fetch(jobs.select().where(jobs.c.id == job_id))
        return _record(rows[0]) if rows else None

    async def transition(
        self,
        job_id: int,
        expected: Collection[Status],
        new: Status | None = None,
        **changes: Any,
    ) -> bool:
        now = time.time()
        values: dict[str, Any] = {"updated_at": now, **changes}
        if new is not None:
            values["status"] = new.db
            if new.is_terminal() and new is not Status.CLEANED:
                values.setdefault("finished_at", now)
        changed = await self._execute(
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.status.in_([s.db for s in expected]))
            .values(**values)
        )
        if changed == 1 and new is not None and new.is_terminal():
            self._announce_final(job_id)
        return changed == 1

    async def claim(
        self, job_ids: Iterable[int], node_by_job: Mapping[int, str], owner: str | None = None
    ) -> list[JobRecord]:
        wanted = list(job_ids)
        return (
            await self._run(lambda connection: _claim_rows(connection, wanted, node_by_job, owner))
            if wanted
            else []
        )

    async def claim_dispatchable(
        self,
        limits: Mapping[str, ServiceLimits],
        now: float,
        choose_node: ChooseNode,
        owner: str | None = None,
    ) -> list[JobRecord]:
        claimed: list[JobRecord] = []
        for service, limit in sorted(limits.items()):
            # One short transaction per service: a service's lock never waits on another's.
            claimed.extend(
                await self._run(
                    functools.partial(_claim_service, service, limit, now, choose_node, owner)
                )
            )
        return claimed

    async def occupancy(self) -> Occupancy:
        rows = await self._fetch(
            sa.select(jobs.c.service, jobs.c.user_id, sa.func.count())
            .where(jobs.c.status.in_([s.db for s in SLOT_HOLDING]))
            .group_by(jobs.c.service, jobs.c.user_id)
        )
        per_user = {(row[0], row[1]): row[2] for row in rows}
        per_service: dict[str, int] = {}
        for (service, _user), count in per_user.items():
            per_service[service] = per_service.get(service, 0) + count
        return Occupancy(per_user=per_user, per_service=per_service)

    async def status_counts(self) -> dict[tuple[str, Status], int]:
        rows = await self._fetch(
            sa.select(jobs.c.service, jobs.c.status, sa.func.count()).group_by(
                jobs.c.service, jobs.c.status
            )
        )
        counts: dict[tuple[str, Status], int] = {}
        for service, status, count in rows:
            key = (service, Status.from_db(status))
            counts[key] = counts.get(key, 0) + count
        return counts

    async def node_occupancy(self, service: str) -> dict[str, int]:
        rows = await self._fetch(
            sa.select(jobs.c.node, sa.func.count())
            .where(
                jobs.c.service == service,
                jobs.c.status.in_([s.db for s in SLOT_HOLDING]),
            )
            .group_by(jobs.c.node)
        )
        return {row[0]: row[1] for row in rows if row[0] is not None}

    async def queue_heads(self, limits: Mapping[str, ServiceLimits], now: float) -> list[UserQueue]:
        depths = {name: limit.runs_per_user for name, limit in limits.items()}
        if not any(depths.values()):
            return []
        position = (
            sa.func.row_number()
            .over(partition_by=(jobs.c.service, jobs.c.user_id), order_by=jobs.c.id)
            .label("position")
        )
        due = (
            sa.select(jobs.c.service, jobs.c.user_id, jobs.c.id, position)
            .where(
                jobs.c.status == Status.QUEUED.db,
                jobs.c.service.in_(list(limits)),
                sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= now),
            )
            .subquery()
        )
        rows = await self._fetch(
            sa.select(due.c.service, due.c.user_id, due.c.id)
            .where(due.c.position <= sa.case(depths, value=due.c.service, else_=0))
            .order_by(due.c.service, due.c.user_id, due.c.id)
        )
        grouped: dict[tuple[str, int], list[int]] = {}
        for service, user_id, job_id in rows:
            grouped.setdefault((service, user_id), []).append(job_id)
        turns = {
            (service, user_id): turn
            for service, user_id, turn in await self._fetch(
                sa.select(
                    service_users.c.service, service_users.c.user_id, service_users.c.served_turn
                ).where(
                    service_users.c.service.in_(list(limits)),
                    service_users.c.served_turn.is_not(None),
                )
            )
        }
        return [
            UserQueue(service, user_id, tuple(ids), turns.get((service, user_id)))
            for (service, user_id), ids in grouped.items()
        ]

    async def dispatch_candidates(
        self, limits: Mapping[str, ServiceLimits], occupancy: Occupancy, now: float
    ) -> list[UserQueue]:
        return await self._run(
            lambda connection: [
                queue
                for service, limit in sorted(limits.items())
                for queue in _service_candidates(connection, service, limit, occupancy, now)
            ]
        )

    async def next_retry_at(self) -> float | None:
        rows = await self._fetch(
            sa.select(sa.func.min(jobs.c.not_before)).where(
                jobs.c.status == Status.QUEUED.db, jobs.c.not_before.is_not(None)
            )
        )
        value = rows[0][0] if rows else None
        return float(value) if value is not None else None

    async def jobs_with_status(self, statuses: Collection[Status]) -> list[JobRecord]:
        rows = await self._fetch(
            jobs.select().where(jobs.c.status.in_([s.db for s in statuses])).order_by(jobs.c.id)
        )
        return [_record(row) for row in rows]

    async def finished_before(self, cutoff: float, limit: int = 500) -> list[JobRecord]:
        rows = await self._fetch(
            jobs.select()
            .where(jobs.c.status.in_(_FINAL_DB), jobs.c.finished_at < cutoff)
            .order_by(jobs.c.finished_at)
            .limit(limit)
        )
        return [_record(row) for row in rows]

    async def known_locs(self, locs: Collection[str]) -> set[str]:
        if not locs:
            return set()
        rows = await self._fetch(sa.select(jobs.c.loc).where(jobs.c.loc.in_(list(locs))))
        return {row[0] for row in rows}

    async def jobs_on_node(self, node: str, statuses: Collection[Status]) -> list[JobRecord]:
        rows = await self._fetch(
            jobs.select()
            .where(jobs.c.node == node, jobs.c.status.in_([s.db for s in statuses]))
            .order_by(jobs.c.id)
        )
        return [_record(row) for row in rows]

    async def revoke_to_queue(self, job: JobRecord, expected: Collection[Status]) -> bool:
        now = time.time()

        def revoke(connection: Connection) -> bool:
            moved = connection.execute(
                jobs.update()
                .where(
                    jobs.c.id == job.id,
                    jobs.c.node == job.node,
                    jobs.c.dest_id == job.dest_id,
                    jobs.c.status.in_([s.db for s in expected]),
                )
                .values(
                    status=Status.QUEUED.db,
                    node=None,
                    dest_id=None,
                    dispatch_key=None,
                    attempts=job.attempts + 1,
                    updated_at=now,
                )
            ).rowcount
            if moved != 1:
                return False
            connection.execute(
                revocations.insert().values(
                    node=job.node, payload_id=job.dest_id, job_id=job.id, created_at=now
                )
            )
            return True

        return await self._run(revoke)

    async def revocations(self, node: str) -> list[tuple[int, int]]:
        rows = await self._fetch(
            sa.select(revocations.c.payload_id, revocations.c.job_id)
            .where(revocations.c.node == node)
            .order_by(revocations.c.payload_id)
        )
        return [(row[0], row[1]) for row in rows]

    async def add_revocation(self, node: str, payload_id: int, job_id: int) -> None:
        def add(connection: Connection) -> None:
            exists = connection.execute(
                sa.select(revocations.c.job_id).where(
                    revocations.c.node == node, revocations.c.payload_id == payload_id
                )
            ).first()
            if exists is None:
                connection.execute(
                    revocations.insert().values(
                        node=node, payload_id=payload_id, job_id=job_id, created_at=time.time()
                    )
                )

        await self._run(add)

    async def forget_revocation(self, node: str, payload_id: int) -> None:
        await self._execute(
            revocations.delete().where(
                revocations.c.node == node, revocations.c.payload_id == payload_id
            )
        )

    async def heartbeat(self, replica_id: str, services_digest: str, now: float) -> None:
        def beat(connection: Connection) -> None:
            dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
            connection.execute(
                dialect.insert(replicas)
                .values(
                    id=replica_id, heartbeat_at=now, started_at=now, services_digest=services_digest
                )
                .on_conflict_do_update(
                    index_elements=["id"],
                    set_={"heartbeat_at": now, "services_digest": services_digest},
                )
            )

        await self._run(beat)

    async def live_replicas(self, since: float) -> dict[str, str]:
        rows = await self._fetch(
            sa.select(replicas.c.id, replicas.c.services_digest).where(
                replicas.c.heartbeat_at >= since
            )
        )
        return {row[0]: row[1] for row in rows}

    async def retire_replica(self, replica_id: str) -> None:
        await self._execute(replicas.delete().where(replicas.c.id == replica_id))

    async def take_over(
        self, replica_id: str, statuses: Collection[Status], alive_since: float, *, own: bool
    ) -> list[JobRecord]:
        alive = sa.select(replicas.c.id).where(
            replicas.c.heartbeat_at >= alive_since, replicas.c.id != replica_id
        )
        expired = sa.or_(jobs.c.owner.is_(None), jobs.c.owner.not_in(alive))
        if not own:
            expired = sa.and_(expired, sa.or_(jobs.c.owner.is_(None), jobs.c.owner != replica_id))
        wanted = [s.db for s in statuses]

        def take(connection: Connection) -> list[JobRecord]:
            taken = []
            for row in connection.execute(
                jobs.select().where(jobs.c.status.in_(wanted), expired).order_by(jobs.c.id)
            ):
                moved = connection.execute(
                    jobs.update()
                    .where(
                        jobs.c.id == row.id,
                        jobs.c.status == row.status,
                        jobs.c.owner.is_(None) if row.owner is None else jobs.c.owner == row.owner,
                    )
                    .values(owner=replica_id)
                    .returning(*jobs.c)
                ).first()
                if moved is not None:
                    taken.append(_record(moved))
            return taken

        return await self._run(take)

    async def ping(self) -> None:
        await self._fetch(sa.select(sa.literal(1)))

    async def schema_revision(self) -> str:
        """The Alembic revision(s) the database is at."""
        rows = await self._fetch(sa.text("SELECT version_num FROM alembic_version"))
        return ",".join(sorted(row[0] for row in rows))

    async def close(self) -> None:
        await self._backend.close()
