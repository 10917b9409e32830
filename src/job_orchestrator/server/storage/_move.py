"""transition's compare-and-set as a unit of work: `UPDATE ... WHERE id = ? AND status IN
(...)`, alone, or on PostgreSQL joined with the other moves of its shape in a batch.

A batch of PostgreSQL writes runs its units' statements one after another, each a round trip
that every unit of the batch waits for (about a turn of the busy server's event loop each,
bench/README.md). Most units are moves, and most moves have one of a few shapes (the statuses
expected, the columns set): the moves of one shape in a batch run as one `UPDATE ... FROM
unnest(...)`, one round trip, each unit still told whether its own row moved.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from job_orchestrator.server.storage._unit import JoinableWork
from job_orchestrator.server.storage.tables import jobs


@functools.lru_cache(maxsize=512)
def move_statement(expected: tuple[str, ...], columns: tuple[str, ...], returning: bool) -> Any:
    """The compare-and-set UPDATE of one shape of move: a handful of shapes, each built once;
    the values are parameters."""
    statement = (
        jobs.update()
        .where(jobs.c.id == sa.bindparam("job_id"), jobs.c.status.in_(expected))
        .values({column: sa.bindparam(f"set_{column}") for column in columns})
    )
    return statement.returning(*jobs.c) if returning else statement


@functools.lru_cache(maxsize=512)
def joined_move_statement(
    expected: tuple[str, ...], columns: tuple[str, ...], returning: bool
) -> Any:
    """move_statement for many rows at once (PostgreSQL): each parameter an array, a row's
    values at its index; it returns the rows that moved."""
    names = ("job_id", *(f"set_{column}" for column in columns))
    types = (jobs.c.id.type, *(jobs.c[column].type for column in columns))
    moves = (
        sa.func.unnest(
            *(
                sa.cast(sa.bindparam(name), postgresql.ARRAY(type_))
                for name, type_ in zip(names, types, strict=True)
            )
        )
        .table_valued(*(sa.column(name, type_) for name, type_ in zip(names, types, strict=True)))
        .render_derived(name="moves")
    )
    statement = (
        jobs.update()
        .where(jobs.c.id == moves.c.job_id, jobs.c.status.in_(expected))
        .values({column: moves.c[f"set_{column}"] for column in columns})
    )
    return statement.returning(*jobs.c) if returning else statement.returning(jobs.c.id)


@dataclass(eq=False)
class Move(JoinableWork[Any]):
    """Job `job_id` from a status in `expected` (storage forms) to `values` (column -> value):
    the row as moved (`returning`) or whether it moved; None/False: it did not."""

    job_id: int
    expected: tuple[str, ...]
    values: dict[str, Any]
    returning: bool
    #: Called in the transaction once the row moved (the Store's announcements).
    moved: Callable[[Connection], None]

    @property
    def join_key(self) -> Hashable:
        return (self.expected, tuple(self.values), self.returning)

    @property
    def row(self) -> Hashable:
        return self.job_id

    def __call__(self, connection: Connection) -> Any:
        statement = move_statement(self.expected, tuple(self.values), self.returning)
        params = {f"set_{column}": value for column, value in self.values.items()}
        result = connection.execute(statement, {**params, "job_id": self.job_id})
        outcome = result.first() if self.returning else result.rowcount == 1
        if outcome:
            self.moved(connection)
        return outcome

    def run_joined(self, connection: Connection, moves: Sequence[Move]) -> list[Any]:
        params: dict[str, list[Any]] = {"job_id": [move.job_id for move in moves]}
        for column in self.values:
            params[f"set_{column}"] = [move.values[column] for move in moves]
        statement = joined_move_statement(self.expected, tuple(self.values), self.returning)
        moved = {row.id: row for row in connection.execute(statement, params)}
        outcomes = []
        for move in moves:
            row = moved.get(move.job_id)
            if row is not None:
                move.moved(connection)
            outcomes.append(row if move.returning else row is not None)
        return outcomes
