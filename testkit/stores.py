"""The Store fixtures: one test on a real SQLite file and, where reachable, on PostgreSQL.

`db_url` is parametrised over both backends (the PostgreSQL case carries the `postgres`
marker); `reopen` opens the Store on that database any number of times and closes them all at
the end; `store` is one opened Store. A module (or a conftest.py) uses them by importing them:

    from testkit.stores import db_url, pg_database, reopen, store
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from job_orchestrator.server.storage import SqlStore, open_store
from testkit.pg import PG_PORT, admin, database_url, fresh_database

OpenStore = Callable[[], Awaitable[SqlStore]]


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The name of a fresh PostgreSQL database for this test session, dropped at the end."""
    with fresh_database() as url:
        yield url.rsplit("/", 1)[1]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What open_store takes: a SQLite file path, or a PostgreSQL URL on an empty schema."""
    if request.param == "sqlite":
        return str(tmp_path / "db.sqlite")
    name: str = request.getfixturevalue("pg_database")
    asyncio.run(admin(PG_PORT, "DROP SCHEMA public CASCADE; CREATE SCHEMA public", name))
    return database_url(PG_PORT, name)


@pytest.fixture
async def reopen(db_url: str) -> AsyncIterator[OpenStore]:
    """open_store on this test's database, any number of times; all closed at the end."""
    opened: list[SqlStore] = []

    async def _open() -> SqlStore:
        store = await open_store(db_url)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        await store.close()


@pytest.fixture
async def store(reopen: OpenStore) -> SqlStore:
    return await reopen()
