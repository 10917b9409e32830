"""The Store fixtures: one contract test on MemoryStore, a real SQLite file and, where
reachable, PostgreSQL.

`backend` is parametrised over the three (the PostgreSQL case carries the `postgres` marker);
`db_url` is the SQL database of a SQL backend (a test about the database itself, migrations
or DB_PATH, skips on memory); `reopen` opens the Store on this test's database any number of
times (as replicas, or across a restart: each sees what the others wrote) and closes them all
at the end; `store` is one opened Store. A module (or a conftest.py) uses them by importing
them:

    from testkit.stores import backend, db_url, pg_database, reopen, sql_url, store
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from job_orchestrator.server.storage import MemoryDatabase, MemoryStore, SqlStore, open_store
from testkit.pg import PG_PORT, admin, database_url, fresh_database

#: What the contract tests hold: any Store implementation, with its read views and the
#: verbs only tests use (claim, dispatch_candidates, callback_of).
AnyStore = SqlStore | MemoryStore
OpenStore = Callable[[], Awaitable[AnyStore]]


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The name of a fresh PostgreSQL database for this test session, dropped at the end."""
    with fresh_database() as url:
        yield url.rsplit("/", 1)[1]


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    """Which Store the contract runs on: MemoryStore, or SqlStore on SQLite or PostgreSQL."""
    return str(request.param)


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What open_store takes: a SQLite file path, or a PostgreSQL URL on an empty schema."""
    if backend == "memory":
        pytest.skip("about the SQL database itself (migrations, DB_PATH): no MemoryStore part")
    if backend == "sqlite":
        return str(tmp_path / "db.sqlite")
    name: str = request.getfixturevalue("pg_database")
    asyncio.run(admin(PG_PORT, "DROP SCHEMA public CASCADE; CREATE SCHEMA public", name))
    return database_url(PG_PORT, name)


@pytest.fixture
def sql_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """db_url, or None on MemoryStore (a sync fixture: db_url's setup runs its own loop)."""
    return None if backend == "memory" else str(request.getfixturevalue("db_url"))


@pytest.fixture
async def reopen(sql_url: str | None) -> AsyncIterator[OpenStore]:
    opened: list[AnyStore] = []
    database = MemoryDatabase()

    async def _open() -> AnyStore:
        store: AnyStore = MemoryStore(database) if sql_url is None else await open_store(sql_url)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        await store.close()


@pytest.fixture
async def store(reopen: OpenStore) -> AnyStore:
    return await reopen()
