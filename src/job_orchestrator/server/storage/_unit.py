"""A unit of work and what runs it: the interface between SqlStore and its databases."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Container, Hashable, Mapping, Sequence
from typing import Any, Generic, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

T = TypeVar("T")
#: One Store verb's work: statements on a Connection, atomic, and safe to run again after a
#: rollback (it changes nothing outside the database).
Work = Callable[[Connection], T]


class JoinableWork(abc.ABC, Generic[T]):
    """A unit that is one statement on one row, which a batch may run as one statement with
    the batch's other units of its `join_key`, on other rows (PostgreSQL, where each
    statement is a round trip). Alone, it is called as any unit is."""

    @property
    @abc.abstractmethod
    def join_key(self) -> Hashable:
        """Units with equal keys can run together (`run_joined`)."""

    @property
    @abc.abstractmethod
    def row(self) -> Hashable:
        """The row it changes: two units of one row never run as one statement."""

    @abc.abstractmethod
    def __call__(self, connection: Connection) -> T: ...

    @abc.abstractmethod
    def run_joined(self, connection: Connection, units: Sequence[Self]) -> list[T]:
        """Run `units` (this one among them, all of its key, so all of its kind) as one
        statement: each one's result, in their order, as if each had run alone."""


class PreparedRead:
    """A hot read built once, at import, with every value a bind parameter: a backend may
    compile it once and run it without SQLAlchemy's per-execution work (PostgreSQL runs it
    on asyncpg directly). Its rows answer by column name and by position."""

    def __init__(self, statement: sa.Select[Any]) -> None:
        self.statement = statement


Read = sa.Executable | PreparedRead


def settle(settled: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """Hand each caller its unit's outcome: (its future, ok, the result or the exception)."""
    for future, ok, value in settled:
        if future.done():  # its caller was cancelled while its unit ran
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class Backend:
    #: Transactions committed so far.
    commits = 0
    #: Requests sent to a database server and waited for so far (Store.round_trips).
    round_trips = 0
    #: The database sessions (PostgreSQL backend pids) this backend's NOTIFYs come from.
    notifier_pids: Container[int] = frozenset()

    async def run(self, work: Work[T], *, alone: bool = False) -> T:
        """The unit's result once committed. `alone`: in a transaction of its own, not
        waiting for others queued (a long unit that others' work waits for)."""
        raise NotImplementedError

    async def fetch(self, read: Read, params: Mapping[str, Any] | None = None) -> list[Any]:
        """The rows of one read statement (one statement's snapshot is all it needs)."""
        statement = read.statement if isinstance(read, PreparedRead) else read
        return await self.run(lambda connection: list(connection.execute(statement, params)))

    async def close(self) -> None:
        raise NotImplementedError
