"""Where SqlStore's units of work run: a backend per database, opened and migrated.

On SQLite, one dedicated thread owns the only connection, so writes are serialised there
(as in datasette) and never wait on SQLite's lock; on PostgreSQL, the async engine
(asyncpg), whose lost or refused connections become StoreUnavailableError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from job_orchestrator.errors import StoreError, StoreUnavailableError
from job_orchestrator.server.storage._notify import asyncpg_dsn

MIGRATIONS = Path(__file__).with_name("migrations")
T = TypeVar("T")
Work = Callable[[Connection], T]


def database_url(db_path: str) -> str:
    """DB_PATH is a file path (as upstream) or a full SQLAlchemy URL (PostgreSQL)."""
    if "://" in db_path:
        return db_path
    return f"sqlite:///{db_path}"


async def open_backend(db_path: str) -> tuple[Backend, str | None]:
    """The migrated database of DB_PATH, and where its replicas LISTEN (None: SQLite)."""
    url = database_url(db_path)
    backend: Backend
    if url.startswith("sqlite"):
        if db_path != ":memory:" and "://" not in db_path:
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        backend = SqliteThread(url)
    else:
        backend = AsyncEngineBackend(create_async_engine(url, pool_pre_ping=True))
    try:
        await backend.run(migrate)
    except StoreUnavailableError:
        await backend.close()
        raise
    except (SQLAlchemyError, OSError) as error:
        await backend.close()
        raise StoreError(f"cannot open database {db_path!r}: {error}") from error
    return backend, None if url.startswith("sqlite") else asyncpg_dsn(url)


class Backend:
    async def run(self, work: Work[T]) -> T:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class SqliteThread(Backend):
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


class AsyncEngineBackend(Backend):
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def run(self, work: Work[T]) -> T:
        try:
            async with self._engine.begin() as connection:
                return await connection.run_sync(work)
        except (OSError, TimeoutError) as error:  # asyncpg could not connect at all
            raise StoreUnavailableError(f"the database cannot be reached: {error}") from error
        except DBAPIError as error:
            if _is_unavailable(error):
                raise StoreUnavailableError(f"the database cannot be reached: {error}") from error
            raise

    async def close(self) -> None:
        await self._engine.dispose()


def _is_unavailable(error: DBAPIError) -> bool:
    """A lost or refused connection, or a server shutting down or starting up: not our bug."""
    sqlstate = str(getattr(error.orig, "sqlstate", None) or "")
    return (
        error.connection_invalidated
        or isinstance(error, OperationalError | InterfaceError)
        # Class 08: connection exception; 57P01-57P03: admin shutdown, crash, cannot connect now.
        or sqlstate.startswith("08")
        or sqlstate in {"57P01", "57P02", "57P03"}
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def migrate(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Replicas starting together on an empty database: one migrates, the others wait
        # here, then find the schema at head. Released when this transaction commits.
        connection.execute(MIGRATION_LOCK)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


MIGRATION_LOCK = sa.text("SELECT pg_advisory_xact_lock(hashtext('job-orchestrator:migrate'))")
