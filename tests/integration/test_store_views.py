"""The Store verbs behind GET /jobs, GET /jobs/{id} and /status, on SQLite and PostgreSQL.

`list_jobs` (keyset pages, newest first, filters), `open_job_counts`, the job details the
migration 0005 adds (`started_at`, `exit_code`, `created_at`), and the queue position that
`queue_view` derives from `queue_heads` and the scheduler's rule.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from job_orchestrator.server.queue_view import QueuePositions, queue_position
from job_orchestrator.server.scheduler import ServiceLimits, plan_dispatch
from job_orchestrator.server.storage import SqlStore, open_store
from job_orchestrator.server.storage.backend import MIGRATIONS
from job_orchestrator.server.storage.changes import JobChanges
from job_orchestrator.status import Status
from tests.integration import test_store as contract
from tests.integration.test_store import AnyStore, get, job_in, new_job
from tests.moves import move_to

# The contract suite's backends: each test below runs on SQLite and on PostgreSQL.
pg_database = contract.pg_database
backend = contract.backend
db_url = contract.db_url
reopen = contract.reopen
sql_url = contract.sql_url
store = contract.store


async def walk(store: AnyStore, limit: int, **filters: object) -> list[list[int]]:
    """Every page of list_jobs, as the route walks them (one extra row says there is more)."""
    pages: list[list[int]] = []
    before: int | None = None
    while True:
        rows = await store.list_jobs(limit=limit + 1, before_id=before, **filters)  # type: ignore[arg-type]
        page = [job.id for job in rows[:limit]]
        pages.append(page)
        if len(rows) <= limit:
            return pages
        before = page[-1]


async def test_list_jobs_newest_first_in_keyset_pages(store: AnyStore) -> None:
    ids = [await new_job(store) for _ in range(7)]
    assert await walk(store, 3) == [ids[6:3:-1], ids[3:0:-1], ids[:1]]
    assert await walk(store, 7) == [ids[::-1]]
    assert await walk(store, 100) == [ids[::-1]]


async def test_list_jobs_pages_are_stable_while_jobs_arrive(store: AnyStore) -> None:
    ids = [await new_job(store) for _ in range(4)]
    first = await store.list_jobs(limit=2)
    assert [job.id for job in first] == [ids[3], ids[2]]
    await new_job(store)  # newer than the cursor: never shows up on later pages
    rest = await store.list_jobs(limit=10, before_id=first[-1].id)
    assert [job.id for job in rest] == [ids[1], ids[0]]


async def test_list_jobs_filters_combine(store: AnyStore) -> None:
    a_svc = await job_in(store, Status.QUEUED, user_id=1, service="svc")
    a_run = await job_in(store, Status.RUNNING, user_id=1, service="svc")
    a_other = await job_in(store, Status.QUEUED, user_id=1, service="other")
    b_svc = await job_in(store, Status.QUEUED, user_id=2, service="svc")

    async def ids(**filters: object) -> list[int]:
        return [job.id for job in await store.list_jobs(limit=50, **filters)]  # type: ignore[arg-type]

    assert await ids(user_id=1) == [a_other, a_run, a_svc]
    assert await ids(status=Status.QUEUED) == [b_svc, a_other, a_svc]
    assert await ids(service="svc") == [b_svc, a_run, a_svc]
    assert await ids(user_id=1, service="svc", status=Status.QUEUED) == [a_svc]
    assert await ids(user_id=3) == []
    assert await ids(status=Status.COMPLETED) == []


async def test_list_jobs_returns_full_records(store: AnyStore) -> None:
    job_id = await store.create_job(user_id=5, service="svc", loc="/data/x")
    assert await store.transition(
        job_id,
        [Status.QUEUED],
        Status.FAILED,
        changes=JobChanges(message="boom", exit_code=3, node="http://n/submit"),
    )
    [listed] = await store.list_jobs(limit=1)
    assert listed == await get(store, job_id)
    assert listed.exit_code == 3
    assert listed.node == "http://n/submit"


async def test_started_at_and_exit_code_round_trip(store: AnyStore) -> None:
    job_id = await new_job(store)
    job = await get(store, job_id)
    assert job.started_at is None
    assert job.exit_code is None
    assert job.created_at == job.queued_at
    assert await move_to(store, job_id, Status.RUNNING, changes=JobChanges(started_at=1234.5))
    assert await store.transition(
        job_id, [Status.RUNNING], Status.FAILED, changes=JobChanges(exit_code=-9)
    )
    job = await get(store, job_id)
    assert job.started_at == 1234.5
    assert job.exit_code == -9
    assert job.finished_at is not None


async def test_open_job_counts_per_service_user_and_status(store: AnyStore) -> None:
    await job_in(store, Status.QUEUED, user_id=1)
    await job_in(store, Status.QUEUED, user_id=1)
    await job_in(store, Status.RUNNING, user_id=1)
    await job_in(store, Status.QUEUED, user_id=2, service="other")
    await job_in(store, Status.COMPLETED, user_id=1)
    await job_in(store, Status.KILLED, user_id=3)
    assert await store.open_job_counts() == {
        ("svc", 1): {Status.QUEUED: 2, Status.RUNNING: 1},
        ("other", 2): {Status.QUEUED: 1},
    }


async def test_queue_position_follows_the_fairness_rule(store: AnyStore) -> None:
    """User 1 floods the queue, then users 2 and 3 each queue one: round-robin puts them
    second and third, exactly where plan_dispatch (quotas lifted) starts them."""
    flood = [await new_job(store, user_id=1) for _ in range(40)]
    second = await new_job(store, user_id=2)
    third = await new_job(store, user_id=3)
    occupancy = await store.occupancy()
    now = time.time()
    positions = {
        job_id: await queue_position(store, await get(store, job_id), occupancy, now)
        for job_id in [*flood, second, third]
    }
    assert positions[flood[0]] == 1
    assert positions[second] == 2
    assert positions[third] == 3
    assert positions[flood[1]] == 4
    assert positions[flood[-1]] == 42
    lifted = {"svc": ServiceLimits(runs_per_user=10**6, max_runs=10**6)}
    order = plan_dispatch(await store.queue_heads(lifted, now), occupancy, lifted)
    assert [positions[job_id] for job_id in order] == list(range(1, 43))


async def test_queue_position_counts_slots_held(store: AnyStore) -> None:
    """A user already running a job comes after one who runs none."""
    await job_in(store, Status.RUNNING, user_id=1)
    busy = await new_job(store, user_id=1)
    idle = await new_job(store, user_id=2)
    occupancy = await store.occupancy()
    now = time.time()
    assert await queue_position(store, await get(store, idle), occupancy, now) == 1
    assert await queue_position(store, await get(store, busy), occupancy, now) == 2


async def test_queue_position_of_a_job_no_longer_queued(store: AnyStore) -> None:
    job_id = await new_job(store)
    job = await get(store, job_id)
    assert await store.transition(job_id, [Status.QUEUED], Status.KILLED)
    assert await queue_position(store, job, await store.occupancy(), time.time()) is None


async def test_queue_position_of_a_job_in_backoff_counts_it_once_due(store: AnyStore) -> None:
    waiting = await new_job(store, user_id=1)
    later = time.time() + 3600
    assert await store.transition(waiting, [Status.QUEUED], changes=JobChanges(not_before=later))
    other = await new_job(store, user_id=2)
    occupancy, now = await store.occupancy(), time.time()
    assert await queue_position(store, await get(store, waiting), occupancy, now) == 1
    # Among the jobs due now it is not there, so it does not count for the others.
    assert await queue_position(store, await get(store, other), occupancy, now) == 1


async def test_kept_queue_orders_are_reused_and_renewed_for_new_jobs(store: AnyStore) -> None:
    positions = QueuePositions(store)
    positions.MIN_FRESH_S = 3600.0  # nothing in this test may depend on the clock
    first = await new_job(store, user_id=1)
    occupancy, now = await store.occupancy(), time.time()
    assert await positions.position(await get(store, first), occupancy, now) == 1
    second = await new_job(store, user_id=2)
    # Not in the kept order: a fresh one is computed.
    assert await positions.position(await get(store, second), occupancy, now) == 2
    assert await store.transition(first, [Status.QUEUED], Status.KILLED)
    # Kept: the first job's departure is not seen until the order is renewed.
    assert await positions.position(await get(store, second), occupancy, now) == 2
    assert await queue_position(store, await get(store, second), occupancy, now) == 1


async def test_migration_0005_keeps_existing_rows(tmp_path: Path) -> None:
    """A database at revision 0004 gains the new columns with NULLs and keeps its jobs."""
    path = tmp_path / "old.sqlite"
    store = await open_store(str(path))
    job_id = await new_job(store)
    await store.close()
    # Back to 0004 with the migrations' own downgrades (later revisions stack on 0005).
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.downgrade(config, "0004")
    engine.dispose()
    with sqlite3.connect(path) as connection:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(jobs)")}
    assert not {"started_at", "exit_code"} & columns
    reopened: SqlStore = await open_store(str(path))
    try:
        job = await get(reopened, job_id)
        assert (job.started_at, job.exit_code) == (None, None)
        assert await reopened.transition(
            job_id, [Status.QUEUED], Status.FAILED, changes=JobChanges(exit_code=1)
        )
        assert (await get(reopened, job_id)).exit_code == 1
    finally:
        await reopened.close()


@pytest.mark.parametrize("limit", [1, 2, 5])
async def test_list_jobs_walks_one_users_jobs(store: AnyStore, limit: int) -> None:
    mine = []
    for index in range(6):
        mine.append(await new_job(store, user_id=7))
        await new_job(store, user_id=8 + index)
    pages = await walk(store, limit, user_id=7)
    assert [job_id for page in pages for job_id in page] == mine[::-1]
    assert all(len(page) == limit for page in pages[:-1])
