"""What portal authentication asks of the Store, on SQLite and PostgreSQL: a job keeps the
name of the token that uploaded it (migration 0009), and `list_jobs` lists a portal's users."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import create_async_engine

from job_orchestrator.server.storage import SqlStore, open_store
from job_orchestrator.server.storage.backend import MIGRATIONS
from job_orchestrator.status import Status
from tests.integration import test_store as contract
from tests.integration.test_store import AnyStore, OpenStore, get, new_job
from tests.integration.test_store_views import walk

pg_database = contract.pg_database
backend = contract.backend
db_url = contract.db_url
reopen = contract.reopen
sql_url = contract.sql_url
store = contract.store


async def test_a_job_keeps_the_name_of_its_token(store: AnyStore) -> None:
    named = await store.create_job(
        user_id=1500, service="svc", loc=f"/data/{uuid.uuid4()}", token_name="haddock"
    )
    unnamed = await new_job(store)
    assert (await get(store, named)).token_name == "haddock"
    assert (await get(store, unnamed)).token_name is None
    # Every verb that returns records carries it.
    listed = await store.list_jobs(limit=10)
    assert {job.id: job.token_name for job in listed} == {named: "haddock", unnamed: None}
    moved = await store.transition_returning(named, [Status.QUEUED], Status.KILLED)
    assert moved is not None
    assert moved.token_name == "haddock"


async def test_list_jobs_of_user_ranges(store: AnyStore) -> None:
    by_user = {user: await new_job(store, user_id=user) for user in (5, 999, 1000, 1999, 2000)}
    by_user[5001] = await new_job(store, user_id=5001)
    pages = await walk(store, 2, user_ranges=((1000, 1999), (5000, 5009)))
    assert [job_id for page in pages for job_id in page] == [
        by_user[5001],
        by_user[1999],
        by_user[1000],
    ]
    # Combined with the other filters, and an empty set of ranges matches nothing.
    assert [job.id for job in await store.list_jobs(limit=9, user_ranges=((0, 10),))] == [
        by_user[5]
    ]
    assert await store.list_jobs(limit=9, user_ranges=((1000, 1999),), user_id=1000) == [
        await get(store, by_user[1000])
    ]
    assert await store.list_jobs(limit=9, user_ranges=()) == []


async def test_migration_0009_keeps_jobs_and_goes_both_ways(reopen: OpenStore, db_url: str) -> None:
    """Down to 0008 with the migration's own downgrade (no column), up again at the next
    open: the job of before is still there, with no token name."""
    store = await open_store(db_url)
    job_id = await new_job(store)
    await store.close()
    assert "token_name" not in await _downgrade(db_url, "0008")
    reopened: SqlStore = await reopen()  # open_store upgrades to head again
    assert (await get(reopened, job_id)).token_name is None
    named = await reopened.create_job(user_id=2, service="svc", loc="/data/x", token_name="t")
    assert (await get(reopened, named)).token_name == "t"
    assert await reopened.schema_revision() == "0009"


async def _downgrade(db_url: str, target: str) -> set[str]:
    """Run the migrations' downgrades to `target`; the jobs table's columns after."""
    url = db_url if "://" in db_url else f"sqlite+aiosqlite:///{db_url}"
    engine = create_async_engine(url, poolclass=sa.pool.NullPool)

    def run(connection: sa.Connection) -> set[str]:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.downgrade(config, target)
        return {column["name"] for column in sa.inspect(connection).get_columns("jobs")}

    try:
        async with engine.begin() as connection:
            return await connection.run_sync(run)
    finally:
        await engine.dispose()
