"""The failover verbs, mixed into SqlStore (same backends, same rules): payloads revoked from
a node that is down (killed once it answers again), and the replicas' heartbeats and the
take-over of a dead replica's jobs."""

from __future__ import annotations

import abc
import time
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from job_orchestrator.server.storage._rows import job_record
from job_orchestrator.server.storage._unit import Read, Work
from job_orchestrator.server.storage.base import JobRecord
from job_orchestrator.server.storage.tables import jobs, replicas, revocations
from job_orchestrator.status import SERVER_MOVES, Status, check_move

T = TypeVar("T")


class SqlFailoverVerbs(abc.ABC):
    @abc.abstractmethod
    async def _run(self, verb: str, work: Work[T]) -> T: ...

    @abc.abstractmethod
    async def _execute(self, verb: str, statement: sa.Executable) -> int: ...

    @abc.abstractmethod
    async def _fetch(
        self, verb: str, statement: Read, params: Mapping[str, Any] | None = None
    ) -> list[Any]: ...

    @abc.abstractmethod
    def _notify(self, connection: Connection, new: Status | None, job_id: int) -> None: ...

    # ---- revocations -------------------------------------------------------------------------

    async def revoke_to_queue(self, job: JobRecord, expected: Collection[Status]) -> bool:
        check_move(SERVER_MOVES, expected, Status.QUEUED)
        now = time.time()

        def revoke(connection: Connection) -> bool:
            moved = connection.execute(
                jobs.update()
                .where(
                    jobs.c.id == job.id,
                    jobs.c.node == job.node,
                    jobs.c.dest_id == job.dest_id,
                    jobs.c.status.in_([s.db for s in expected]),
                )
                .values(
                    status=Status.QUEUED.db,
                    node=None,
                    dest_id=None,
                    dispatch_key=None,
                    attempts=job.attempts + 1,
                    updated_at=now,
                )
            ).rowcount
            if moved != 1:
                return False
            connection.execute(
                revocations.insert().values(
                    node=job.node,
                    payload_id=job.dest_id,
                    job_id=job.id,
                    dispatch_key=job.dispatch_key,
                    created_at=now,
                )
            )
            self._notify(connection, Status.QUEUED, job.id)
            return True

        return await self._run("revoke_to_queue", revoke)

    async def revocations(self, node: str) -> list[tuple[int, int, str | None]]:
        rows = await self._fetch(
            "revocations",
            sa.select(revocations.c.payload_id, revocations.c.job_id, revocations.c.dispatch_key)
            .where(revocations.c.node == node)
            .order_by(revocations.c.payload_id),
        )
        return [(row[0], row[1], row[2]) for row in rows]

    async def add_revocation(
        self, node: str, payload_id: int, job_id: int, dispatch_key: str | None
    ) -> None:
        def add(connection: Connection) -> None:
            exists = connection.execute(
                sa.select(revocations.c.job_id).where(
                    revocations.c.node == node, revocations.c.payload_id == payload_id
                )
            ).first()
            if exists is None:
                connection.execute(
                    revocations.insert().values(
                        node=node,
                        payload_id=payload_id,
                        job_id=job_id,
                        dispatch_key=dispatch_key,
                        created_at=time.time(),
                    )
                )

        await self._run("add_revocation", add)

    async def forget_revocation(self, node: str, payload_id: int) -> None:
        await self._execute(
            "forget_revocation",
            revocations.delete().where(
                revocations.c.node == node, revocations.c.payload_id == payload_id
            ),
        )

    # ---- replicas and leases ---------------------------------------------------------------

    async def heartbeat(
        self, replica_id: str, services_digest: str, now: float, incarnation: str = ""
    ) -> str | None:
        def beat(connection: Connection) -> str | None:
            previous = connection.execute(
                sa.select(replicas.c.incarnation).where(replicas.c.id == replica_id)
            ).scalar()
            dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
            connection.execute(
                dialect.insert(replicas)
                .values(
                    id=replica_id,
                    heartbeat_at=now,
                    started_at=now,
                    services_digest=services_digest,
                    incarnation=incarnation,
                )
                .on_conflict_do_update(
                    index_elements=["id"],
                    set_={
                        "heartbeat_at": now,
                        "services_digest": services_digest,
                        "incarnation": incarnation,
                    },
                )
            )
            return None if previous is None else str(previous)

        return await self._run("heartbeat", beat)

    async def live_replicas(self, since: float) -> dict[str, str]:
        rows = await self._fetch(
            "live_replicas",
            sa.select(replicas.c.id, replicas.c.services_digest).where(
                replicas.c.heartbeat_at >= since
            ),
        )
        return {row[0]: row[1] for row in rows}

    async def retire_replica(self, replica_id: str) -> None:
        await self._execute("retire_replica", replicas.delete().where(replicas.c.id == replica_id))

    async def take_over(
        self, replica_id: str, statuses: Collection[Status], alive_since: float, *, own: bool
    ) -> list[JobRecord]:
        alive = sa.select(replicas.c.id).where(
            replicas.c.heartbeat_at >= alive_since, replicas.c.id != replica_id
        )
        expired = sa.or_(jobs.c.owner.is_(None), jobs.c.owner.not_in(alive))
        if not own:
            expired = sa.and_(expired, sa.or_(jobs.c.owner.is_(None), jobs.c.owner != replica_id))
        wanted = [s.db for s in statuses]

        def take(connection: Connection) -> list[JobRecord]:
            taken = []
            for row in connection.execute(
                jobs.select().where(jobs.c.status.in_(wanted), expired).order_by(jobs.c.id)
            ):
                moved = connection.execute(
                    jobs.update()
                    .where(
                        jobs.c.id == row.id,
                        jobs.c.status == row.status,
                        jobs.c.owner.is_(None) if row.owner is None else jobs.c.owner == row.owner,
                    )
                    .values(owner=replica_id)
                    .returning(*jobs.c)
                ).first()
                if moved is not None:
                    taken.append(job_record(moved))
            return taken

        return await self._run("take_over", take)
