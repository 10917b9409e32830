"""The Store on SQLAlchemy Core, one implementation for SQLite and PostgreSQL.

Every Store method is one synchronous unit of work on a Connection, run in one transaction:
on SQLite by a single dedicated thread that owns the only connection (writes are serialised
there, as in datasette, so they never wait on SQLite's lock and each call costs one thread
hop), on PostgreSQL through the async engine (asyncpg). Compare-and-set is one
`UPDATE ... WHERE id = ? AND status IN (...)`, atomic on either database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from job_orchestrator.errors import StoreError
from job_orchestrator.server.scheduler import Occupancy, ServiceLimits, UserQueue
from job_orchestrator.server.storage.base import JobRecord, Store
from job_orchestrator.server.storage.tables import jobs, revocations
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
        async with self._engine.begin() as connection:
            return await connection.run_sync(work)

    async def close(self) -> None:
        await self._engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _migrate(connection: Connection) -> None:
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
    )


_SCAN_BATCH = 256


def _due(now: float) -> sa.ColumnElement[bool]:
    return sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= now)


def _service_candidates(
    connection: Connection, service: str, limit: ServiceLimits, occupancy: Occupancy, now: float
) -> list[UserQueue]:
    """The queues plan_dispatch needs to decide exactly as if it saw every user's queue.

    The scheduler serves users in order of (active jobs, oldest queued job), and the users it
    picks in one decision are a prefix of that order no longer than the free slots. Users with
    no active job come first, in the order of their oldest queued job: an index walk in job
    order finds the first `free` of them, however long the queue. Users with active jobs are
    few (at most max_runs) and looked up one by one. Cost grows with slots, not with jobs.
    """
    free = limit.max_runs - occupancy.per_service.get(service, 0)
    if free <= 0 or limit.runs_per_user <= 0:
        return []
    queued = sa.and_(jobs.c.status == Status.QUEUED.db, jobs.c.service == service, _due(now))
    active = {
        user: count
        for (name, user), count in occupancy.per_user.items()
        if name == service and count > 0
    }
    ranked: list[tuple[int, int, int]] = []  # (active, oldest job, user)
    for user, count in active.items():
        if count < limit.runs_per_user:
            oldest = connection.execute(
                sa.select(sa.func.min(jobs.c.id)).where(queued, jobs.c.user_id == user)
            ).scalar()
            if oldest is not None:
                ranked.append((count, oldest, user))
    seen: set[int] = set(active)
    fresh: list[tuple[int, int, int]] = []
    after = 0
    while len(fresh) < free:
        rows = connection.execute(
            sa.select(jobs.c.id, jobs.c.user_id)
            .where(queued, jobs.c.id > after, jobs.c.user_id.not_in(seen) if seen else sa.true())
            .order_by(jobs.c.id)
            .limit(_SCAN_BATCH)
        ).all()
        for job_id, user in rows:
            if user not in seen:
                seen.add(user)
                fresh.append((0, job_id, user))
        if len(rows) < _SCAN_BATCH:
            break
        after = rows[-1][0]
    chosen = sorted(fresh + ranked)[:free]
    return [
        UserQueue(
            service=service,
            user_id=user,
            job_ids=tuple(
                connection.execute(
                    sa.select(jobs.c.id)
                    .where(queued, jobs.c.user_id == user)
                    .order_by(jobs.c.id)
                    .limit(limit.runs_per_user - count)
                ).scalars()
            ),
        )
        for count, _oldest, user in chosen
    ]


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
            return int(primary_key[0])

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
        return changed == 1

    async def claim(
        self, job_ids: Iterable[int], node_by_job: Mapping[int, str]
    ) -> list[JobRecord]:
        wanted = list(job_ids)
        now = time.time()

        def claim_all(connection: Connection) -> list[JobRecord]:
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
                        updated_at=now,
                    )
                    .returning(*jobs.c)
                ).first()
                if row is not None:
                    claimed.append(_record(row))
            return claimed

        return await self._run(claim_all) if wanted else []

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
        return [
            UserQueue(service=service, user_id=user_id, job_ids=tuple(ids))
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

    async def ping(self) -> None:
        await self._fetch(sa.select(sa.literal(1)))

    async def close(self) -> None:
        await self._backend.close()
