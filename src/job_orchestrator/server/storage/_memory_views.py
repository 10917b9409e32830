"""The read views of MemoryStore (memory.py), mixed in as SqlViewVerbs is into SqlStore."""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from job_orchestrator.server.scheduler import Occupancy, ServiceLimits, UserQueue
from job_orchestrator.server.storage._memory_rows import (
    MemoryDatabase,
    due,
    node_occupancy,
    occupancy,
    record,
)
from job_orchestrator.server.storage.base import JobRecord, StoreViews
from job_orchestrator.status import Status

T = TypeVar("T")


class MemoryViewVerbs(StoreViews):
    @abc.abstractmethod
    async def _run(self, verb: str, work: Callable[[MemoryDatabase], T]) -> T: ...

    async def occupancy(self) -> Occupancy:
        return await self._run("occupancy", lambda db: occupancy(db, None))

    async def status_counts(self) -> dict[tuple[str, Status], int]:
        return await self._run(
            "status_counts",
            lambda db: dict(Counter((row["service"], row["status"]) for row in db.jobs.values())),
        )

    async def node_occupancy(self, service: str) -> dict[str, int]:
        return await self._run("node_occupancy", lambda db: node_occupancy(db, service))

    async def queue_heads(self, limits: Mapping[str, ServiceLimits], now: float) -> list[UserQueue]:
        def heads(db: MemoryDatabase) -> list[UserQueue]:
            queues: dict[tuple[str, int], list[int]] = {}
            for job_id, row in db.jobs.items():
                limit = limits.get(row["service"])
                if limit is None or not due(row, row["service"], now):
                    continue
                queue = queues.setdefault((row["service"], row["user_id"]), [])
                if len(queue) < limit.runs_per_user:
                    queue.append(job_id)
            return [
                UserQueue(service, user_id, tuple(ids), db.service_users[service, user_id][1])
                for (service, user_id), ids in sorted(queues.items())
                if ids
            ]

        return await self._run("queue_heads", heads)

    async def list_jobs(
        self,
        *,
        limit: int,
        before_id: int | None = None,
        user_id: int | None = None,
        status: Status | None = None,
        service: str | None = None,
        user_ranges: Sequence[tuple[int, int]] | None = None,
    ) -> list[JobRecord]:
        def page(db: MemoryDatabase) -> list[JobRecord]:
            found: list[JobRecord] = []
            for job_id in reversed(db.jobs):  # ids are inserted in increasing order
                if len(found) >= limit:
                    break
                row = db.jobs[job_id]
                if (
                    (before_id is None or job_id < before_id)
                    and (user_id is None or row["user_id"] == user_id)
                    and (status is None or row["status"] is status)
                    and (service is None or row["service"] == service)
                    and (
                        user_ranges is None
                        or any(low <= row["user_id"] <= high for low, high in user_ranges)
                    )
                ):
                    found.append(record(job_id, row))
            return found

        return await self._run("list_jobs", page)

    async def open_job_counts(self) -> dict[tuple[str, int], dict[Status, int]]:
        def counts(db: MemoryDatabase) -> dict[tuple[str, int], dict[Status, int]]:
            found: dict[tuple[str, int], dict[Status, int]] = {}
            for row in db.jobs.values():
                if not row["status"].is_terminal():
                    by_status = found.setdefault((row["service"], row["user_id"]), {})
                    by_status[row["status"]] = by_status.get(row["status"], 0) + 1
            return found

        return await self._run("open_job_counts", counts)
