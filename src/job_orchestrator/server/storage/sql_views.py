"""The read-only views of the jobs table, mixed into SqlStore (same backends, same rules).

What the job list, the status page, the metrics and the queue positions read: counts and
pages of jobs, never a change, so none of them takes a lock or notifies a replica.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from job_orchestrator.server.scheduler import ServiceLimits, UserQueue
from job_orchestrator.server.storage._rows import job_record
from job_orchestrator.server.storage._unit import Read
from job_orchestrator.server.storage.base import JobRecord
from job_orchestrator.server.storage.tables import jobs, service_users
from job_orchestrator.status import SLOT_HOLDING, Status


class SqlViewVerbs:
    @abc.abstractmethod
    async def _fetch(
        self, verb: str, statement: Read, params: Mapping[str, Any] | None = None
    ) -> list[Any]: ...

    async def status_counts(self) -> dict[tuple[str, Status], int]:
        rows = await self._fetch(
            "status_counts",
            sa.select(jobs.c.service, jobs.c.status, sa.func.count()).group_by(
                jobs.c.service, jobs.c.status
            ),
        )
        counts: dict[tuple[str, Status], int] = {}
        for service, status, count in rows:
            key = (service, Status.from_db(status))
            counts[key] = counts.get(key, 0) + count
        return counts

    async def node_occupancy(self, service: str) -> dict[str, int]:
        rows = await self._fetch(
            "node_occupancy",
            sa.select(jobs.c.node, sa.func.count())
            .where(
                jobs.c.service == service,
                jobs.c.status.in_([s.db for s in SLOT_HOLDING]),
            )
            .group_by(jobs.c.node),
        )
        return {row[0]: row[1] for row in rows if row[0] is not None}

    async def queue_heads(self, limits: Mapping[str, ServiceLimits], now: float) -> list[UserQueue]:
        depths = {name: limit.runs_per_user for name, limit in limits.items()}
        if not any(depths.values()):
            return []
        position = (
            sa.func.row_number()
            .over(partition_by=(jobs.c.service, jobs.c.user_id), order_by=jobs.c.id)
            .label("position")
        )
        due = (
            sa.select(jobs.c.service, jobs.c.user_id, jobs.c.id, position)
            .where(
                jobs.c.status == Status.QUEUED.db,
                jobs.c.service.in_(list(limits)),
                sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= now),
            )
            .subquery()
        )
        rows = await self._fetch(
            "queue_heads",
            sa.select(due.c.service, due.c.user_id, due.c.id)
            .where(due.c.position <= sa.case(depths, value=due.c.service, else_=0))
            .order_by(due.c.service, due.c.user_id, due.c.id),
        )
        grouped: dict[tuple[str, int], list[int]] = {}
        for service, user_id, job_id in rows:
            grouped.setdefault((service, user_id), []).append(job_id)
        turns = {
            (service, user_id): turn
            for service, user_id, turn in await self._fetch(
                "queue_heads",
                sa.select(
                    service_users.c.service, service_users.c.user_id, service_users.c.served_turn
                ).where(
                    service_users.c.service.in_(list(limits)),
                    service_users.c.served_turn.is_not(None),
                ),
            )
        }
        return [
            UserQueue(service, user_id, tuple(ids), turns.get((service, user_id)))
            for (service, user_id), ids in grouped.items()
        ]

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
        conditions = []
        if user_ranges is not None:
            conditions.append(
                sa.or_(
                    sa.false(), *(jobs.c.user_id.between(low, high) for low, high in user_ranges)
                )
            )
        if before_id is not None:
            conditions.append(jobs.c.id < before_id)
        if user_id is not None:
            conditions.append(jobs.c.user_id == user_id)
        if status is not None:
            conditions.append(jobs.c.status == status.db)
        if service is not None:
            conditions.append(jobs.c.service == service)
        rows = await self._fetch(
            "list_jobs", jobs.select().where(*conditions).order_by(jobs.c.id.desc()).limit(limit)
        )
        return [job_record(row) for row in rows]

    async def open_job_counts(self) -> dict[tuple[str, int], dict[Status, int]]:
        rows = await self._fetch(
            "open_job_counts",
            sa.select(jobs.c.service, jobs.c.user_id, jobs.c.status, sa.func.count())
            .where(jobs.c.status.in_([s.db for s in Status if not s.is_terminal()]))
            .group_by(jobs.c.service, jobs.c.user_id, jobs.c.status),
        )
        counts: dict[tuple[str, int], dict[Status, int]] = {}
        for service, user_id, status, count in rows:
            counts.setdefault((service, user_id), {})[Status.from_db(status)] = count
        return counts
