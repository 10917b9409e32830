"""A unit of work and what runs it: the interface between SqlStore and its databases."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.engine import Connection

T = TypeVar("T")
#: One Store verb's work: statements on a Connection, atomic, and safe to run again after a
#: rollback (it changes nothing outside the database).
Work = Callable[[Connection], T]


class Backend:
    #: Transactions committed so far.
    commits = 0

    async def run(self, work: Work[T]) -> T:
        raise NotImplementedError

    async def read(self, work: Work[T]) -> T:
        """Run a unit that only reads (one statement's snapshot is all it needs)."""
        return await self.run(work)

    async def close(self) -> None:
        raise NotImplementedError
