"""The callback verbs on SQLAlchemy Core, mixed into SqlStore (same backends, same rules).

The claim is one `UPDATE ... WHERE attempts = :seen AND <due and unleased>`: on SQLite the
single writer serialises it, on PostgreSQL the row lock makes a second claimer re-check the
condition after the first commits and find the attempt count moved on.
"""

from __future__ import annotations

import abc
from collections.abc import Collection
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from job_orchestrator.server.storage.callback_verbs import (
    CallbackRecord,
    CallbackState,
    CallbackVerbs,
)
from job_orchestrator.server.storage.tables import callbacks, jobs
from job_orchestrator.status import TERMINAL, Status

T = TypeVar("T")
_FINAL_DB = [status.db for status in TERMINAL]
_PENDING = CallbackState.PENDING.value
_DUE_JOIN = callbacks.join(jobs, jobs.c.id == callbacks.c.job_id)
_PENDING_OF_FINAL = sa.and_(callbacks.c.state == _PENDING, jobs.c.status.in_(_FINAL_DB))
_next_attempt = sa.func.coalesce(callbacks.c.next_attempt_at, 0.0)
_leased_until = sa.func.coalesce(callbacks.c.lease_until, 0.0)


def insert_callback(connection: Connection, job_id: int, url: str, now: float) -> None:
    """Store a job's pending callback (in the transaction that inserts the job)."""
    connection.execute(callbacks.insert().values(job_id=job_id, url=url, created_at=now))


def _record(row: Any, *, with_job: bool = False) -> CallbackRecord:
    return CallbackRecord(
        job_id=row.job_id,
        url=row.url,
        state=CallbackState(row.state),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        lease_until=row.lease_until,
        body=row.body.encode() if row.body is not None else None,
        first_attempt_at=row.first_attempt_at,
        last_error=row.last_error,
        delivered_at=row.delivered_at,
        job_status=Status.from_db(row.status) if with_job else None,
        job_message=(row.message or "") if with_job else "",
        user_id=row.user_id if with_job else None,
    )


def _not_in(exclude: Collection[int], users: Collection[int] = ()) -> sa.ColumnElement[bool]:
    jobs_out = callbacks.c.job_id.not_in(list(exclude)) if exclude else sa.true()
    users_out = jobs.c.user_id.not_in(list(users)) if users else sa.true()
    return sa.and_(jobs_out, users_out)


class SqlCallbackVerbs(CallbackVerbs):
    @abc.abstractmethod
    async def _run(self, verb: str, work: Any) -> Any: ...

    async def _rows(self, verb: str, statement: sa.Executable) -> list[Any]:
        rows: list[Any] = await self._run(
            verb, lambda connection: list(connection.execute(statement).all())
        )
        return rows

    async def callback_of(self, job_id: int) -> CallbackRecord | None:
        """The job's callback delivery (with the job's status), or None if it has none."""
        rows = await self._rows(
            "callback_of",
            sa.select(callbacks, jobs.c.status, jobs.c.message, jobs.c.user_id)
            .select_from(_DUE_JOIN)
            .where(callbacks.c.job_id == job_id),
        )
        return _record(rows[0], with_job=True) if rows else None

    async def callback_urls(self, job_ids: Collection[int]) -> dict[int, str]:
        if not job_ids:
            return {}
        rows = await self._rows(
            "callback_urls",
            sa.select(callbacks.c.job_id, callbacks.c.url).where(
                callbacks.c.job_id.in_(list(job_ids))
            ),
        )
        return {row.job_id: row.url for row in rows}

    async def due_callbacks(
        self,
        now: float,
        limit: int,
        exclude: Collection[int] = (),
        exclude_users: Collection[int] = (),
    ) -> list[CallbackRecord]:
        rows = await self._rows(
            "due_callbacks",
            sa.select(callbacks, jobs.c.status, jobs.c.message, jobs.c.user_id)
            .select_from(_DUE_JOIN)
            .where(
                _PENDING_OF_FINAL,
                _next_attempt <= now,
                _leased_until <= now,
                _not_in(exclude, exclude_users),
            )
            .order_by(_next_attempt, callbacks.c.job_id)
            .limit(limit),
        )
        return [_record(row, with_job=True) for row in rows]

    async def next_callback_at(
        self, exclude: Collection[int] = (), exclude_users: Collection[int] = ()
    ) -> float | None:
        due_at = sa.case((_leased_until > _next_attempt, _leased_until), else_=_next_attempt)
        rows = await self._rows(
            "next_callback_at",
            sa.select(sa.func.min(due_at))
            .select_from(_DUE_JOIN)
            .where(_PENDING_OF_FINAL, _not_in(exclude, exclude_users)),
        )
        value = rows[0][0] if rows else None
        return float(value) if value is not None else None

    async def claim_callback(
        self,
        job_id: int,
        attempts_seen: int,
        *,
        token: str,
        lease_until: float,
        body: bytes,
        now: float,
    ) -> CallbackRecord | None:
        statement = (
            callbacks.update()
            .where(
                callbacks.c.job_id == job_id,
                callbacks.c.state == _PENDING,
                callbacks.c.attempts == attempts_seen,
                _next_attempt <= now,
                _leased_until <= now,
            )
            .values(
                attempts=callbacks.c.attempts + 1,
                lease_token=token,
                lease_until=lease_until,
                body=sa.func.coalesce(callbacks.c.body, body.decode()),
                first_attempt_at=sa.func.coalesce(callbacks.c.first_attempt_at, now),
            )
            .returning(*callbacks.c)
        )
        row = await self._run(
            "claim_callback", lambda connection: connection.execute(statement).first()
        )
        return _record(row) if row is not None else None

    async def settle_callback(
        self,
        job_id: int,
        token: str,
        state: CallbackState,
        *,
        now: float,
        next_attempt_at: float | None = None,
        error: str | None = None,
    ) -> bool:
        statement = (
            callbacks.update()
            .where(callbacks.c.job_id == job_id, callbacks.c.lease_token == token)
            .values(
                state=state.value,
                lease_token=None,
                lease_until=None,
                next_attempt_at=next_attempt_at,
                last_error=error,
                delivered_at=now if state is CallbackState.DELIVERED else None,
            )
        )
        changed: int = await self._run(
            "settle_callback", lambda connection: connection.execute(statement).rowcount
        )
        return changed == 1

    async def release_callback(self, job_id: int, token: str) -> bool:
        statement = (
            callbacks.update()
            .where(callbacks.c.job_id == job_id, callbacks.c.lease_token == token)
            .values(lease_token=None, lease_until=None)
        )
        changed: int = await self._run(
            "release_callback", lambda connection: connection.execute(statement).rowcount
        )
        return changed == 1
