"""The callback verbs of MemoryStore (memory.py), with SqlCallbackVerbs' rules: a delivery is
due once its job is final; an attempt is claimed on its attempt count and leased to a token;
only the lease's holder settles or releases it."""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from job_orchestrator.server.storage._memory_rows import MemoryDatabase
from job_orchestrator.server.storage.callback_verbs import (
    CallbackRecord,
    CallbackState,
    CallbackVerbs,
)
from job_orchestrator.status import TERMINAL

T = TypeVar("T")
Row = dict[str, Any]


def new_delivery(url: str, now: float) -> Row:
    """A job's pending delivery, stored with the job."""
    return {
        "url": url,
        "state": CallbackState.PENDING,
        "attempts": 0,
        "next_attempt_at": None,
        "lease_token": None,
        "lease_until": None,
        "body": None,
        "first_attempt_at": None,
        "last_error": None,
        "delivered_at": None,
        "created_at": now,
    }


def _record(job_id: int, row: Row, job: Row | None = None) -> CallbackRecord:
    return CallbackRecord(
        job_id=job_id,
        url=row["url"],
        state=row["state"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        lease_until=row["lease_until"],
        body=row["body"],
        first_attempt_at=row["first_attempt_at"],
        last_error=row["last_error"],
        delivered_at=row["delivered_at"],
        job_status=job["status"] if job is not None else None,
        job_message=(job["message"] or "") if job is not None else "",
        user_id=job["user_id"] if job is not None else None,
    )


def _next_attempt(row: Row) -> float:
    return float(row["next_attempt_at"] or 0.0)


def _leased_until(row: Row) -> float:
    return float(row["lease_until"] or 0.0)


def _pending_of_final(
    db: MemoryDatabase, exclude: Collection[int], exclude_users: Collection[int]
) -> list[tuple[int, Row, Row]]:
    """(job id, delivery, job) of pending deliveries of final jobs, but those excluded."""
    found = []
    for job_id, row in db.callbacks.items():
        job = db.jobs.get(job_id)
        if (
            job is not None
            and row["state"] is CallbackState.PENDING
            and job["status"] in TERMINAL
            and job_id not in exclude
            and job["user_id"] not in exclude_users
        ):
            found.append((job_id, row, job))
    return found


class MemoryCallbackVerbs(CallbackVerbs):
    @abc.abstractmethod
    async def _run(self, verb: str, work: Callable[[MemoryDatabase], T]) -> T: ...

    async def callback_of(self, job_id: int) -> CallbackRecord | None:
        """The job's callback delivery (with the job's status), or None if it has none."""

        def read(db: MemoryDatabase) -> CallbackRecord | None:
            row, job = db.callbacks.get(job_id), db.jobs.get(job_id)
            return None if row is None or job is None else _record(job_id, row, job)

        return await self._run("callback_of", read)

    async def callback_urls(self, job_ids: Collection[int]) -> dict[int, str]:
        wanted = set(job_ids)
        return await self._run(
            "callback_urls",
            lambda db: {
                job_id: db.callbacks[job_id]["url"] for job_id in wanted & db.callbacks.keys()
            },
        )

    async def due_callbacks(
        self,
        now: float,
        limit: int,
        exclude: Collection[int] = (),
        exclude_users: Collection[int] = (),
    ) -> list[CallbackRecord]:
        def due(db: MemoryDatabase) -> list[CallbackRecord]:
            found = [
                (_next_attempt(row), job_id, row, job)
                for job_id, row, job in _pending_of_final(db, exclude, exclude_users)
                if _next_attempt(row) <= now and _leased_until(row) <= now
            ]
            found.sort(key=lambda item: (item[0], item[1]))
            return [_record(job_id, row, job) for _at, job_id, row, job in found[:limit]]

        return await self._run("due_callbacks", due)

    async def next_callback_at(
        self, exclude: Collection[int] = (), exclude_users: Collection[int] = ()
    ) -> float | None:
        def earliest(db: MemoryDatabase) -> float | None:
            times = [
                max(_leased_until(row), _next_attempt(row))
                for _job_id, row, _job in _pending_of_final(db, exclude, exclude_users)
            ]
            return min(times) if times else None

        return await self._run("next_callback_at", earliest)

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
        def claim(db: MemoryDatabase) -> CallbackRecord | None:
            row = db.callbacks.get(job_id)
            if (
                row is None
                or row["state"] is not CallbackState.PENDING
                or row["attempts"] != attempts_seen
                or _next_attempt(row) > now
                or _leased_until(row) > now
            ):
                return None
            row.update(
                attempts=row["attempts"] + 1,
                lease_token=token,
                lease_until=lease_until,
                body=row["body"] if row["body"] is not None else body,
                first_attempt_at=(
                    row["first_attempt_at"] if row["first_attempt_at"] is not None else now
                ),
            )
            return _record(job_id, row)

        return await self._run("claim_callback", claim)

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
        def settle(db: MemoryDatabase) -> bool:
            row = db.callbacks.get(job_id)
            if row is None or row["lease_token"] != token:
                return False
            row.update(
                state=state,
                lease_token=None,
                lease_until=None,
                next_attempt_at=next_attempt_at,
                last_error=error,
                delivered_at=now if state is CallbackState.DELIVERED else None,
            )
            return True

        return await self._run("settle_callback", settle)

    async def release_callback(self, job_id: int, token: str) -> bool:
        def release(db: MemoryDatabase) -> bool:
            row = db.callbacks.get(job_id)
            if row is None or row["lease_token"] != token:
                return False
            row.update(lease_token=None, lease_until=None)
            return True

        return await self._run("release_callback", release)
