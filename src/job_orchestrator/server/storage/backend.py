"""Where SqlStore's units of work run: a backend per database, opened and migrated.

On SQLite, one dedicated thread owns the only connection, so writes are serialised there
(as in datasette) and never wait on SQLite's lock, and units queued together share one
commit (group commit); on PostgreSQL, the async engine (asyncpg) with group commit of its
own (postgres_backend.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from job_orchestrator._logging import MASK, display_url, url_secrets
from job_orchestrator.errors import StoreError, StoreUnavailableError
from job_orchestrator.server.storage._notify import asyncpg_dsn
from job_orchestrator.server.storage._unit import Backend, T, Work, settle
from job_orchestrator.server.storage.postgres_backend import PostgresBackend

MIGRATIONS = Path(__file__).with_name("migrations")


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
        backend = await PostgresBackend.open(url)
    try:
        await backend.run(migrate)
    except StoreUnavailableError:
        await backend.close()
        raise
    except (SQLAlchemyError, OSError) as error:
        await backend.close()
        reason = str(error)
        for secret in url_secrets(db_path):
            reason = reason.replace(secret, MASK)
        raise StoreError(f"cannot open database {display_url(db_path)!r}: {reason}") from error
    return backend, None if url.startswith("sqlite") else asyncpg_dsn(url)


class SqliteThread(Backend):
    """One thread, one connection, group commit: every unit of work runs there.

    Callers queue (work, future); the thread takes everything queued so far as one batch,
    runs each unit inside its own SAVEPOINT of one `BEGIN IMMEDIATE` transaction (so a unit
    that raises rolls back only itself and gets its own exception), commits once, and only
    then settles the batch's futures, with one `call_soon_threadsafe` per batch. Under load a
    job's many small units share commits and thread hand-offs instead of paying one each;
    alone, a unit costs what it did before (one hand-off, one commit, no savepoint).
    Durability is unchanged: a result is seen only once its commit is in the WAL.
    """

    def __init__(self, url: str) -> None:
        self._engine: Engine = sa.create_engine(
            url, poolclass=StaticPool, connect_args={"check_same_thread": False, "timeout": 30}
        )
        sa.event.listen(self._engine, "connect", _sqlite_connect)
        sa.event.listen(self._engine, "begin", _sqlite_begin)
        self._queue: queue.SimpleQueue[_Unit] = queue.SimpleQueue()
        self._connection: Connection | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="sqlite-store", daemon=True)
        self._thread.start()

    async def run(self, work: Work[T], *, alone: bool = False) -> T:
        # `alone` changes nothing here: units run one after another in this thread, without
        # round trips, so sharing a commit delays none of them noticeably.
        if self._closed:
            raise StoreUnavailableError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((work, future, loop))
        return await future

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Queued after every unit already accepted: those run (and commit) first.
        loop = asyncio.get_running_loop()
        stopped: asyncio.Future[None] = loop.create_future()
        self._queue.put((None, stopped, loop))
        await stopped
        self._thread.join()

    # ---- in the store thread -------------------------------------------------------------

    def _serve(self) -> None:
        stopping: list[_Unit] = []
        units: list[_Unit] = []
        try:
            while not stopping:
                batch = [self._queue.get()]
                while len(batch) < _MAX_BATCH and not self._queue.empty():
                    batch.append(self._queue.get_nowait())  # this thread alone takes
                # A caller cancelled before its unit started: skip it, as an executor would.
                units = [unit for unit in batch if unit[0] is not None and not unit[1].cancelled()]
                stopping = [unit for unit in batch if unit[0] is None]
                _settle_all(units, self._run_batch(units) if units else [])
                units = []
        finally:
            # Also if this thread dies of a bug: then no caller may wait for it forever.
            self._closed = True
            try:
                if self._connection is not None:
                    self._connection.close()
                self._engine.dispose()
            finally:
                while not self._queue.empty():  # came in while close() queued its stop
                    unit = self._queue.get_nowait()
                    (stopping if unit[0] is None else units).append(unit)
                late = StoreUnavailableError("the store is closed")
                _settle_all(units, [(False, late)] * len(units))
                _settle_all(stopping, [(True, None)] * len(stopping))

    def _run_batch(self, units: list[_Unit]) -> list[tuple[bool, Any]]:
        """Each unit's (ok, result or exception); none is seen before the commit."""
        outcomes: list[tuple[bool, Any]] = []
        try:
            if self._connection is None:
                self._connection = self._engine.connect()
            connection = self._connection
            with connection.begin():
                if len(units) == 1:
                    work = units[0][0]
                    assert work is not None
                    outcomes.append((True, work(connection)))
                else:
                    # Savepoints on the driver's connection: SQLAlchemy's begin_nested costs
                    # two compiled statements per unit, this a few microseconds.
                    driver = connection.connection.driver_connection
                    assert driver is not None
                    for work, _future, _loop in units:
                        assert work is not None
                        driver.execute("SAVEPOINT unit")
                        try:
                            outcomes.append((True, work(connection)))
                        except Exception as error:
                            driver.execute("ROLLBACK TO unit")
                            outcomes.append((False, error))
                        driver.execute("RELEASE unit")
            self.commits += 1
        except Exception as error:  # the only unit, a rollback or the commit failed: none kept
            # A unit that failed by itself keeps its own exception; the others get this one.
            outcomes = [outcome if not outcome[0] else (False, error) for outcome in outcomes]
            outcomes += [(False, error)] * (len(units) - len(outcomes))
        return outcomes


#: A unit of work, the future of its caller and that caller's loop; work None: stop.
_Unit = tuple[Work[Any] | None, "asyncio.Future[Any]", asyncio.AbstractEventLoop]
#: At most this many units share a commit, so one batch never holds the others up for long.
_MAX_BATCH = 256


def _settle_all(units: list[_Unit], outcomes: list[tuple[bool, Any]]) -> None:
    """Hand the outcomes to their callers: one wake-up of each caller's loop per batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for (_work, future, loop), (ok, value) in zip(units, outcomes, strict=True):
        by_loop.setdefault(loop, []).append((future, ok, value))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits now
            loop.call_soon_threadsafe(settle, settled)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling would open transactions behind our back (and make
    # the outermost RELEASE a commit); we say BEGIN ourselves (_sqlite_begin), as SQLAlchemy
    # documents for working savepoints.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # IMMEDIATE: the write lock is taken up front, so a unit that reads and then writes
    # never finds it taken by another process (a second store on the file) halfway through.
    driver = connection.connection.driver_connection
    assert driver is not None
    driver.execute("BEGIN IMMEDIATE")


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
