"""PostgreSQL's backend: hot reads on asyncpg, writes in group commits, no pre-ping.

Through SQLAlchemy on asyncpg, a unit of work in a transaction of its own took six round trips
and a WAL flush: the pool's pre-ping (BEGIN, an empty query, ROLLBACK), BEGIN, the statement,
COMMIT. Each round trip costs CPU in this process and waits for a turn of its busy event loop
(bench/README.md, "Where issue 24 stands"). Here:

- A checkout costs no round trip. A connection the database has closed (a restart, an
  administrator's terminate) is known to asyncpg, which saw its socket close, and is replaced
  at checkout. One that dies unnoticed fails its unit as unavailable, as a pre-pinged one
  dying right after its ping did.
- Writes queue to up to `WRITERS` writer tasks; each runs everything queued so far (up to
  `_MAX_BATCH` units) in one transaction and commits once; only then do the callers hear back.
  Under load a job's units share commits; alone, a unit costs BEGIN, its statements and
  COMMIT. What a transaction announced (NOTIFY) is sent after its commit, together with every
  other's (`_notify.take_announcements` says why). Alike units of a batch on distinct rows
  (`JoinableWork`: the moves of one shape, storage/_move.py; new jobs,
  storage/_service_users.py) run as one statement.
- A unit that raises rolls back its whole batch. The batch then runs again, one unit per
  transaction, so each caller gets its own outcome. Units change nothing outside the
  database, so running one again after a rollback is safe. A batch whose connection was lost
  is never run again: its COMMIT may have reached the database, so its callers are told the
  database is unavailable, as a lone unit's caller was.
- Reads run without a transaction (BEGIN and COMMIT were two of a read's three round trips)
  and never wait for a writer. The hottest (`PreparedRead`: a job by id, a user's queue
  length) skip SQLAlchemy: compiled once, run on an asyncpg pool of their own (90 instead of
  240 us of CPU each).

A server holds at most READ_POOL_SIZE + ENGINE_POOL_SIZE + 1 (LISTEN) connections: PostgreSQL's
`max_connections` must cover that for every replica (docs/replicas.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Hashable, Iterator, Mapping
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from job_orchestrator.errors import StoreError, StoreUnavailableError
from job_orchestrator.server.storage._notify import (
    CONNECTION_LOST,
    NOTIFY_ALL,
    Announcements,
    asyncpg_dsn,
    forget_announcements,
    take_announcements,
)
from job_orchestrator.server.storage._unit import (
    Backend,
    JoinableWork,
    PreparedRead,
    Read,
    T,
    Work,
    settle,
)

logger = logging.getLogger(__name__)

#: At most this many units share a transaction, so one batch never holds row locks for long.
_MAX_BATCH = 256
#: Connections of a server process's asyncpg pool, for the hot reads (PreparedRead). Fixed
#: pools: an overflow connection was closed as soon as it was returned, so a burst past the
#: pool paid a new connection (and its TLS handshake) each, 20 % of a busy server's CPU
#: (bench/README.md). Past it, a read waits for a free connection; one takes about 1 ms.
READ_POOL_SIZE = 8
#: Connections of SQLAlchemy's pool: the writers' batches and the other reads.
ENGINE_POOL_SIZE = 8
#: Writer tasks at most, each with a transaction of its own. One was not enough: each of a
#: batch's round trips waits for a turn of the server's busy event loop, so one writer's
#: batches came one after another too slowly for the uploads waiting on them (3: a write took
#: 100 ms at p50 in the `replicas` case; 6 to 8: 70 ms; SQLite: 14 ms).
WRITERS = 6
#: Seconds to wait for a free connection before answering that the database is unavailable.
POOL_TIMEOUT_S = 30.0


_Queued = tuple[Work[Any], "asyncio.Future[Any]"]


class PostgresBackend(Backend):
    def __init__(self, engine: AsyncEngine, reads: asyncpg.Pool) -> None:
        self._engine = engine
        sa.event.listen(engine.sync_engine, "checkout", _replace_if_closed)
        sa.event.listen(engine.sync_engine, "before_cursor_execute", self._count_statement)
        self._reads = reads
        self._prepared: dict[PreparedRead, tuple[str, tuple[str, ...], dict[str, Any]]] = {}
        self._queued: list[_Queued] = []
        self._writers: set[asyncio.Task[None]] = set()
        self._lone: set[asyncio.Task[None]] = set()
        self._announcements: Announcements = {}
        self._announcer: asyncio.Task[None] | None = None
        self.notifier_pids: set[int] = set()
        self._closed = False

    @classmethod
    async def open(cls, url: str) -> PostgresBackend:
        """Nothing connects yet: the first unit does (migrate, at a server's start)."""
        engine = create_async_engine(
            url, pool_size=ENGINE_POOL_SIZE, max_overflow=0, pool_timeout=POOL_TIMEOUT_S
        )
        # asyncpg's pool replaces a connection it finds closed when it hands it out.
        reads = await asyncpg.create_pool(
            asyncpg_dsn(url), min_size=0, max_size=READ_POOL_SIZE, reset=_nothing_to_reset
        )
        return cls(engine, reads)

    async def run(self, work: Work[T], *, alone: bool = False) -> T:
        if self._closed:
            raise StoreUnavailableError("the store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if alone:
            lone = asyncio.create_task(self._write_alone(work, future), name="postgres-alone")
            self._lone.add(lone)
            lone.add_done_callback(self._lone.discard)
            return await future
        self._queued.append((work, future))
        # A writer runs while anything is queued and then ends; none is between the two when
        # this runs (one loop, and it checks the queue without awaiting before it ends).
        if len(self._writers) < WRITERS:
            writer = asyncio.create_task(self._write_queued(), name="postgres-writer")
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        # A caller cancelled while queued is skipped; one cancelled while its batch runs only
        # loses the answer, as with a lone transaction whose COMMIT is on its way.
        return await future

    async def fetch(self, read: Read, params: Mapping[str, Any] | None = None) -> list[Any]:
        if isinstance(read, PreparedRead):
            sql, names, constants = self._compiled(read)
            values = {**constants, **(params or {})}  # a missing one: KeyError, a bug of ours
            async with (
                _unavailable_raised(),
                self._reads.acquire(timeout=POOL_TIMEOUT_S) as connection,
            ):
                self.round_trips += 1
                records = await connection.fetch(sql, *(values[name] for name in names))
            return [_Row(record) for record in records]
        async with _unavailable_raised(), self._engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            result = await autocommit.execute(read, params)
            return list(result)

    def _count_statement(self, *_: Any) -> None:
        """Each statement SQLAlchemy sends: one round trip (an executemany is one too, as
        asyncpg pipelines it). asyncpg's first preparation of a statement on a connection
        adds one, not counted."""
        self.round_trips += 1

    def _compiled(self, read: PreparedRead) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        """Its SQL, the names of its positional parameters, and the values fixed at import."""
        compiled = self._prepared.get(read)
        if compiled is None:
            form = read.statement.compile(dialect=self._engine.dialect)
            binds = form.binds.values()
            constants = {form.bind_names[bind]: bind.value for bind in binds if not bind.required}
            compiled = (form.string, tuple(form.positiontup or ()), constants)
            self._prepared[read] = compiled
        return compiled

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*self._writers, *self._lone)  # what was accepted commits first
        if self._announcer is not None:
            await self._announcer
        await self._reads.close()
        await self._engine.dispose()

    async def _write_queued(self) -> None:
        while self._queued:
            batch = [unit for unit in self._queued[:_MAX_BATCH] if not unit[1].done()]
            del self._queued[:_MAX_BATCH]
            if not batch:
                continue
            outcomes = await self._commit([work for work, _future in batch])
            settle(
                [
                    (future, ok, value)
                    for (_work, future), (ok, value) in zip(batch, outcomes, strict=True)
                ]
            )

    async def _write_alone(self, work: Work[Any], future: asyncio.Future[Any]) -> None:
        """A unit in a transaction of its own, at once: each statement of a writer's batch is a
        round trip that every unit of the batch waits for, and a batch waits for a free
        writer. A dispatch decision (about eight statements) is what freed slots wait for."""
        [(ok, value)] = await self._commit([work])
        settle([(future, ok, value)])

    async def _commit(self, works: list[Work[Any]]) -> list[tuple[bool, Any]]:
        """Each unit's (ok, result or exception), from one transaction if they all succeed."""
        self.round_trips += 2  # BEGIN, and COMMIT or ROLLBACK; the statements are counted apart
        try:
            async with _unavailable_raised(), self._engine.begin() as connection:
                results, announcements = await connection.run_sync(_run_each, works)
        except StoreUnavailableError as error:
            return [(False, error)] * len(works)
        except Exception as error:
            if len(works) == 1:
                return [(False, error)]
            # Nothing of the batch was kept: each unit again, alone, for its own outcome.
            return [outcome for work in works for outcome in await self._commit([work])]
        self.commits += 1
        self._announce(announcements)
        return [(True, result) for result in results]

    def _announce(self, announcements: Announcements) -> None:
        """Send what committed transactions announced, soon, and together (take_announcements
        says why not in them)."""
        if not announcements:
            return
        self._announcements.update(announcements)
        if self._announcer is None or self._announcer.done():
            self._announcer = asyncio.create_task(self._send_announcements(), name="notify")

    async def _send_announcements(self) -> None:
        while self._announcements:
            channels, payloads = zip(*self._announcements, strict=True)
            self._announcements = {}
            try:
                async with self._reads.acquire(timeout=POOL_TIMEOUT_S) as connection:
                    # Known before it is sent: this process's listener hears it too.
                    self.notifier_pids.add(connection.get_server_pid())
                    self.round_trips += 1
                    await connection.execute(NOTIFY_ALL, channels, payloads)
            except CONNECTION_LOST as error:
                # A lost wake-up: the other replicas' safety tick finds the work anyway.
                logger.warning("could not wake the other replicas: %s", error)


class _Row:
    """An asyncpg record that also answers by attribute, as SQLAlchemy's rows do."""

    __slots__ = ("_record",)

    def __init__(self, record: asyncpg.Record) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        try:
            return self._record[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, index: int) -> Any:
        return self._record[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._record.values())

    def __len__(self) -> int:
        return len(self._record)


async def _nothing_to_reset(_connection: asyncpg.Connection) -> None:
    """A read leaves no session state (one SELECT, no transaction, no LISTEN, no SET), so the
    pool's default reset query, a round trip per read (7 % of a busy server's CPU), is not
    needed."""


def _run_each(connection: Connection, works: list[Work[Any]]) -> tuple[list[Any], Announcements]:
    forget_announcements(connection)
    results: list[Any] = [None] * len(works)
    for group in _joined(works):
        first = works[group[0]]
        if len(group) == 1:
            results[group[0]] = first(connection)
            continue
        assert isinstance(first, JoinableWork)
        units = [unit for index in group if isinstance(unit := works[index], JoinableWork)]
        for index, result in zip(group, first.run_joined(connection, units), strict=True):
            results[index] = result
    return results, take_announcements(connection)


def _joined(works: list[Work[Any]]) -> list[list[int]]:
    """The batch's units as groups to run one statement each, by index, in the order of each
    group's first unit: alike joinable units on distinct rows together, every other alone.
    Running a later unit earlier is safe: the units of a batch come from callers that do not
    wait for each other, and writers commit batches in any order already."""
    groups: list[list[int]] = []
    open_groups: dict[Hashable, tuple[list[int], set[Hashable]]] = {}
    for index, work in enumerate(works):
        if not isinstance(work, JoinableWork):
            groups.append([index])
            continue
        group, rows = open_groups.get(work.join_key, (None, set()))
        if group is None or work.row in rows:  # a row twice: its second move comes after
            group, rows = [], set()
            open_groups[work.join_key] = (group, rows)
            groups.append(group)
        group.append(index)
        rows.add(work.row)
    return groups


def _replace_if_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """At checkout: a connection whose socket asyncpg saw close makes the pool connect anew
    (SQLAlchemy retries a checkout that raises DisconnectionError)."""
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the database closed this connection")


@contextlib.asynccontextmanager
async def _unavailable_raised() -> AsyncIterator[None]:
    try:
        yield
    except (OSError, TimeoutError, *_ASYNCPG_UNAVAILABLE) as error:  # could not connect, or lost
        raise StoreUnavailableError(f"the database cannot be reached: {error}") from error
    except PoolTimeoutError as error:  # every connection held for pool_timeout: it hangs
        raise StoreUnavailableError(f"the database does not answer: {error}") from error
    except asyncpg.PostgresError as error:
        raise StoreError(str(error)) from error
    except DBAPIError as error:
        if _is_unavailable(error):
            raise StoreUnavailableError(f"the database cannot be reached: {error}") from error
        raise


_ASYNCPG_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,  # class 08, and a connection lost mid-query
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)


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
