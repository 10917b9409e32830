"""The failover verbs of MemoryStore (memory.py), with SqlFailoverVerbs' rules: payloads
revoked from a node that is down (killed once it answers again), and the replicas' heartbeats
and the take-over of a dead replica's jobs."""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection
from typing import TypeVar

from job_orchestrator.errors import StoreError
from job_orchestrator.server.storage import _memory_rows as rows
from job_orchestrator.server.storage._memory_rows import MemoryDatabase
from job_orchestrator.server.storage.base import JobRecord
from job_orchestrator.status import SERVER_MOVES, Status, check_move

T = TypeVar("T")


class MemoryFailoverVerbs(abc.ABC):
    @abc.abstractmethod
    async def _run(self, verb: str, work: Callable[[MemoryDatabase], T]) -> T: ...

    @abc.abstractmethod
    def _notify(self, new: Status | None, job_id: int) -> None: ...

    # ---- revocations -------------------------------------------------------------------------

    async def revoke_to_queue(self, job: JobRecord, expected: Collection[Status]) -> bool:
        check_move(SERVER_MOVES, expected, Status.QUEUED)

        def revoke(db: MemoryDatabase) -> bool:
            now = db.clock.now()
            row = db.jobs.get(job.id)
            # As SQL compares them: a job never given a payload id (dest_id NULL) is no match.
            if (
                row is None
                or row["node"] != job.node
                or row["dest_id"] != job.dest_id
                or row["status"] not in expected
            ):
                return False
            key = (str(job.node), job.dest_id)
            if key in db.revocations:  # the SQL primary key refuses it; nothing changes
                raise StoreError(f"payload {job.dest_id} on {job.node} is already revoked")
            row.update(
                status=Status.QUEUED,
                node=None,
                dest_id=None,
                dispatch_key=None,
                attempts=job.attempts + 1,
                updated_at=now,
            )
            db.revocations[key] = (job.id, job.dispatch_key)
            return True

        revoked = await self._run("revoke_to_queue", revoke)
        if revoked:
            self._notify(Status.QUEUED, job.id)
        return revoked

    async def revocations(self, node: str) -> list[tuple[int, int, str | None]]:
        return await self._run(
            "revocations",
            lambda db: sorted(
                (payload_id, job_id, key)
                for (on, payload_id), (job_id, key) in db.revocations.items()
                if on == node
            ),
        )

    async def add_revocation(
        self, node: str, payload_id: int, job_id: int, dispatch_key: str | None
    ) -> None:
        await self._run(
            "add_revocation",
            lambda db: db.revocations.setdefault((node, payload_id), (job_id, dispatch_key)),
        )

    async def forget_revocation(self, node: str, payload_id: int) -> None:
        await self._run("forget_revocation", lambda db: db.revocations.pop((node, payload_id), 0))

    # ---- replicas and leases ---------------------------------------------------------------

    async def heartbeat(
        self, replica_id: str, services_digest: str, now: float, incarnation: str = ""
    ) -> str | None:
        def beat(db: MemoryDatabase) -> str | None:
            previous = db.replicas.get(replica_id)
            started_at = now if previous is None else previous.started_at
            db.replicas[replica_id] = rows.Replica(now, started_at, services_digest, incarnation)
            return None if previous is None else previous.incarnation

        return await self._run("heartbeat", beat)

    async def live_replicas(self, since: float) -> dict[str, str]:
        return await self._run(
            "live_replicas",
            lambda db: {
                replica_id: replica.services_digest
                for replica_id, replica in db.replicas.items()
                if replica.heartbeat_at >= since
            },
        )

    async def retire_replica(self, replica_id: str) -> None:
        await self._run("retire_replica", lambda db: db.replicas.pop(replica_id, None))

    async def take_over(
        self, replica_id: str, statuses: Collection[Status], alive_since: float, *, own: bool
    ) -> list[JobRecord]:
        wanted = set(statuses)

        def take(db: MemoryDatabase) -> list[JobRecord]:
            alive = {
                other
                for other, replica in db.replicas.items()
                if replica.heartbeat_at >= alive_since and other != replica_id
            }
            taken = []
            for job_id, row in db.jobs.items():
                owner = row["owner"]
                if row["status"] not in wanted or owner in alive:
                    continue
                if owner == replica_id and not own:
                    continue
                row["owner"] = replica_id
                taken.append(rows.record(job_id, row))
            return taken

        return await self._run("take_over", take)
