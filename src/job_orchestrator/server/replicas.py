"""This server's membership among the replicas that share one database.

Each replica has an id (REPLICA_ID, by default `<hostname>:<port>`) and a heartbeat row. The
heartbeat is the lease on every job the replica owns (procrastinate's worker heartbeat): a
job in flight whose owner has not beaten for LEASE_S is taken over by another replica, by
compare-and-set on its owner. A replica that finds its own lease lapsed (the database was
away for longer than LEASE_S) gives up what it was following and takes back only the jobs it
still owns, so no job is followed by two replicas for longer than one heartbeat.

Replicas must agree on the services (their quotas and nodes): each records a digest of its
SERVICE_* settings, and one that disagrees with a live replica refuses to start.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping

from job_orchestrator._loops import wait_any
from job_orchestrator.clock import SYSTEM_CLOCK, Clock
from job_orchestrator.config import ServerSettings, ServiceConfig
from job_orchestrator.errors import ConfigError, StoreError
from job_orchestrator.server.storage import Store

logger = logging.getLogger(__name__)


def services_digest(services: Mapping[str, ServiceConfig]) -> str:
    """A digest of what replicas must agree on: each service's limits and nodes."""
    described = [
        {
            "name": service.name,
            "max_runs": service.max_runs,
            "runs_per_user": service.runs_per_user,
            "timeout_s": service.timeout_s,
            "nodes": [node.upload_url for node in service.nodes],
        }
        for _, service in sorted(services.items())
    ]
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


class ReplicaLease:
    def __init__(self, settings: ServerSettings, store: Store, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.clock = clock
        self.replica_id = settings.replica_id or f"{socket.gethostname()}:{settings.port}"
        self.lease_s = settings.lease_s
        self.digest = services_digest(settings.services)
        self.incarnation = uuid.uuid4().hex
        #: When the last heartbeat was written (None: never).
        self._renewed_at: float | None = None
        #: The start of the current run of heartbeats, each within a lease of the one before.
        self._unbroken_since: float | None = None
        self._disagreeing: set[str] = set()

    @property
    def heartbeat_interval_s(self) -> float:
        return self.lease_s / 3

    async def join(self) -> None:
        """Write the first heartbeat; refuse to start beside a replica with other services."""
        await self.renew()
        others = await self._disagreeing_replicas()
        if others:
            raise ConfigError(
                "SERVICE_*",
                f"differs from the running replica(s) {', '.join(sorted(others))}: "
                "their quotas would disagree; give every replica the same SERVICE_* settings",
            )

    async def renew(self) -> bool:
        """Write a heartbeat. False: the lease had lapsed since the previous one, so other
        replicas may have taken this one's jobs (raises StoreError if the database fails)."""
        now = self.clock.now()
        previous = await self.store.heartbeat(self.replica_id, self.digest, now, self.incarnation)
        if self._renewed_at is not None and previous not in (None, self.incarnation):
            logger.error(
                "another server process runs with REPLICA_ID %s: both would follow the same "
                "jobs; give every replica its own REPLICA_ID",
                self.replica_id,
            )
        lapsed = self._renewed_at is not None and now - self._renewed_at >= self.lease_s
        if self._unbroken_since is None or lapsed:
            self._unbroken_since = now
        self._renewed_at = now
        return not lapsed

    async def warn_on_disagreement(self) -> None:
        for replica_id in await self._disagreeing_replicas() - self._disagreeing:
            logger.error(
                "replica %s runs with other SERVICE_* settings than this one (%s): quotas "
                "are only enforced as each replica sees them; make them the same",
                replica_id,
                self.replica_id,
            )
            self._disagreeing.add(replica_id)

    async def _disagreeing_replicas(self) -> set[str]:
        live = await self.store.live_replicas(self.clock.now() - self.lease_s)
        return {
            replica_id
            for replica_id, digest in live.items()
            if replica_id != self.replica_id and digest != self.digest
        }

    def may_take_over(self, now: float) -> bool:
        """Whether this replica may take over jobs of replicas whose heartbeat stopped.

        Only after one unbroken lease of its own: just back from a database outage, the
        others' heartbeats look stale only because they had no chance to write them yet.
        """
        return self._unbroken_since is not None and now - self._unbroken_since >= self.lease_s

    async def lease_loop(
        self, stop: asyncio.Event, on_lapse: Callable[[], Awaitable[None]]
    ) -> None:
        """Renew the lease every third of LEASE_S; after a lapse, `on_lapse()` resumes."""
        while not stop.is_set():
            await wait_any(stop.wait(), timeout_s=self.heartbeat_interval_s)
            if stop.is_set():
                return
            try:
                kept = await self.renew()
                await self.warn_on_disagreement()
            except StoreError as error:
                logger.warning("heartbeat of replica %s failed: %s", self.replica_id, error)
                continue
            if not kept:
                await on_lapse()

    async def retire(self) -> None:
        """Stop cleanly: the jobs this replica owns can be taken over at once."""
        await self.store.retire_replica(self.replica_id)
