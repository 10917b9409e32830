"""The clients (nodes) of each service: health, capacity, choice and failover.

Health and load are sampled in the background, never on a job's path. A node that fails two
checks in a row (or a dispatch) is skipped for new work until it answers again; once it has
been down for FAILOVER_AFTER seconds, its jobs that had not started are queued again for
another node, and their payloads there are revoked: killed as soon as the node is back, before
it gets any new work. (A payload a restarted client finds unstarted waits for the server to
ask for it before it runs, so a revoked payload never starts.)

That holds only while the server waits longer than the node's lease (its SERVER_LEASE: a
payload starts only if the server asked about it that recently). So the wait is never shorter
than the lease the node advertises on /health plus LEASE_MARGIN_S, whatever FAILOVER_AFTER
says; a node that never said (down since the server started, or the original's client) is
taken to hold our client's default lease.

Which client a job may be spoken about with, and how: node_client.py; what is known of each
client: node_state.py.
"""

from __future__ import annotations

import asyncio
import logging

from job_orchestrator import settings_table
from job_orchestrator.clock import SYSTEM_CLOCK, Clock
from job_orchestrator.config import NodeConfig, ServerSettings
from job_orchestrator.errors import (
    ClientCallError,
    OutOfDescriptorsError,
    PayloadLostError,
    UndeliveredError,
)
from job_orchestrator.server import lifecycle
from job_orchestrator.server.fleet_snapshot import FleetSnapshot, NodeView
from job_orchestrator.server.node_calls import NodeCalls
from job_orchestrator.server.node_client import NodeClient, recorded_node
from job_orchestrator.server.node_state import REFUSALS, NodeState
from job_orchestrator.server.scheduler import NodeSlot, Placement
from job_orchestrator.server.storage import JobRecord, Store
from job_orchestrator.status import Status

logger = logging.getLogger(__name__)

FAILURES_BEFORE_DOWN = 2
#: How much longer than a node's lease its jobs wait before failover: requests in flight
#: and a client's own scheduling delay (its lease counts from when it read the request).
LEASE_MARGIN_S = 5.0
#: The lease assumed of a node that has not said its own: our client's default.
DEFAULT_CLIENT_LEASE_S = float(settings_table.SERVER_LEASE.literal or 15)
NOT_STARTED = lifecycle.NOT_STARTED


class Fleet:
    def __init__(
        self,
        settings: ServerSettings,
        store: Store,
        gateway: NodeCalls,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.store = store
        self.gateway = gateway
        self._tokens: dict[str, str | None] = {}
        self._nodes: dict[str, NodeConfig] = {}
        self._has_sibling: dict[str, bool] = {}
        for service in settings.services.values():
            for node in service.nodes:
                self._nodes[node.upload_url] = node
                self._tokens[node.upload_url] = service.client_token
                self._has_sibling[node.upload_url] = len(service.nodes) > 1
        self._clients = {
            (service.name, node.upload_url): NodeClient(node, service.client_token, gateway)
            for service in settings.services.values()
            for node in service.nodes
        }
        self.state: dict[str, NodeState] = {url: NodeState() for url in self._nodes}
        #: When the server last sent a request about each collected job (the clock's time).
        self.asked_at: dict[int, float] = {}
        #: When each client's change feed last sent a request (feeds.py): it renews the
        #: leases of every payload this server holds there.
        self.feed_asked_at: dict[str, float] = {}
        self._flushing: dict[str, asyncio.Lock] = {}

    def endpoints(self) -> list[tuple[NodeConfig, str | None]]:
        """Every client of every service once, with the token the server speaks to it with."""
        return [(node, self._tokens[url]) for url, node in self._nodes.items()]

    def client_for(self, job: JobRecord) -> NodeClient | None:
        """The client a job is (or is to be) on; None if its service is not configured.

        Raises ClientLeftError when the job's recorded client is no longer configured.
        """
        node = recorded_node(self.settings, job)
        return self._clients[(job.service, node.upload_url)] if node is not None else None

    def usable(self, node: NodeConfig) -> bool:
        state = self.state[node.upload_url]
        return state.healthy and state.refusing is None and not state.revocations_pending

    def condition(self, node_url: str) -> str:
        """One of CLIENT_CONDITIONS, as /status and /metrics show a client."""
        state = self.state[node_url]
        if not state.healthy:
            return "down"
        return state.refusing or "up"

    def is_down(self, node_url: str) -> bool:
        state = self.state.get(node_url)
        return state is not None and not state.healthy

    def unusable_since(self, nodes: tuple[NodeConfig, ...]) -> float | None:
        """Since when none of `nodes` is usable (None: one is, or not known)."""
        since = []
        for node in nodes:
            state = self.state.get(node.upload_url)
            if state is None or self.usable(node) or state.down_since is None:
                return None
            since.append(state.down_since)
        return max(since, default=None)

    def others_usable(self, nodes: tuple[NodeConfig, ...], node_url: str) -> bool:
        """Whether a node of this service other than node_url can take work now."""
        return any(node.upload_url != node_url and self.usable(node) for node in nodes)

    def placement(self, nodes: tuple[NodeConfig, ...], *, probe: bool) -> Placement | None:
        """Where a service's jobs may go in the next claim, as plain data: its usable nodes.

        With none usable, only when `probe`: one job tries the others anyway, so it fails,
        backs off and RETRY_DEADLINE ends it, instead of the jobs waiting in Queued forever.
        Never one that refuses the token: it would refuse the job (the job waits, with the
        reason). None: no job of the service may be claimed now.
        """
        usable = [node for node in nodes if self.usable(node)]
        if usable:
            return Placement(tuple(self._slot(node) for node in usable))
        tried = [node for node in nodes if self.state[node.upload_url].refusing is None]
        if not probe or not tried:
            return None
        return Placement(tuple(self._slot(node) for node in tried), at_most=1)

    def _slot(self, node: NodeConfig) -> NodeSlot:
        state = self.state[node.upload_url]
        return NodeSlot(node.upload_url, state.max_concurrent, state.load_percent or 0.0)

    def report_failure(
        self, node_url: str, *, definite: bool = False, reason: str = "a call failed"
    ) -> None:
        """A call to the node failed: count it like a failed health check.

        `definite`: it refused the connection (or has no address); nothing listens there, so
        it is down at once instead of after a second failure.
        """
        state = self.state.get(node_url)
        if state is not None:
            self._failed(node_url, state, reason, definite=definite)

    def report_refusing(self, node_url: str, cause: str) -> None:
        """The node refused a dispatch for `cause` (a key of REFUSALS): no work for it until a
        check finds the cause gone."""
        state = self.state.get(node_url)
        if state is not None:
            self._refusing(node_url, state, cause)

    def _refusing(self, url: str, state: NodeState, cause: str | None) -> None:
        """The node's refusal is now `cause` (None: it takes work); said once per change."""
        if cause is not None:
            state.last_error, state.last_error_at = REFUSALS[cause].message, self.clock.now()
        if cause == state.refusing:
            return
        if cause is not None:
            logger.warning("client %s %s", url, REFUSALS[cause].started)
        elif state.refusing is not None:
            logger.info("client %s %s", url, REFUSALS[state.refusing].ended)
        state.refusing = cause

    def _failed(self, url: str, state: NodeState, reason: str, *, definite: bool = False) -> None:
        state.failures += 1
        state.last_error, state.last_error_at = reason, self.clock.now()
        if (definite or state.failures >= FAILURES_BEFORE_DOWN) and state.healthy:
            state.healthy = False
            state.down_since = self.clock.now()
            logger.warning("client %s is down (%s); skipping it", url, reason)

    async def check_once(self) -> bool:
        """Check every node; return True if one became usable (dispatch should wake)."""
        woke = False
        for url, node in self._nodes.items():
            state = self.state[url]
            was_usable = self.usable(node)
            try:
                report = await self.gateway.check(node, token=self._tokens[url])
            except OutOfDescriptorsError as error:
                # Our own shortage says nothing about the client: it keeps its state.
                logger.warning("health check of %s skipped: %s", url, error)
                continue
            except UndeliveredError as error:
                self._failed(url, state, str(error), definite=True)
                continue
            except ClientCallError as error:
                self._failed(url, state, str(error))
                continue
            if not state.healthy:
                logger.info("client %s answers again", url)
            state.healthy, state.failures, state.down_since = True, 0, None
            state.max_concurrent, state.load_percent = report.max_concurrent, report.load_percent
            state.warnings = report.warnings
            if report.server_lease_s is not None and report.server_lease_s != state.server_lease_s:
                state.server_lease_s = report.server_lease_s
                self._check_failover_margin(url, report.server_lease_s)
            cause = "unauthorized" if report.token_refused else report.refusing
            self._refusing(url, state, cause if cause in REFUSALS else None)
            if state.refusing is not None:
                continue
            await self.flush_revocations(url)
            woke = woke or (self.usable(node) and not was_usable)
        return woke

    def _check_failover_margin(self, url: str, lease_s: float) -> None:
        if self.settings.failover_after_s < lease_s + LEASE_MARGIN_S:
            logger.warning(
                "FAILOVER_AFTER (%g s) is below client %s's SERVER_LEASE (%g s) plus %g s: its "
                "jobs are failed over only after %g s, so that none can run twice",
                self.settings.failover_after_s,
                url,
                lease_s,
                LEASE_MARGIN_S,
                self.failover_after_s(url),
            )

    def failover_after_s(self, url: str) -> float:
        """How long the node's jobs wait before they may go elsewhere (see the module doc)."""
        lease_s = self.state[url].server_lease_s
        assumed_s = DEFAULT_CLIENT_LEASE_S if lease_s is None else lease_s
        return max(self.settings.failover_after_s, assumed_s + LEASE_MARGIN_S)

    async def flush_revocations(self, url: str) -> bool:
        """Kill the payloads revoked from this node, if any are; True once none is left."""
        state = self.state[url]
        async with self._flushing.setdefault(url, asyncio.Lock()):  # the feed's, the checks'
            if state.revocations_pending:
                state.revocations_pending = not await self._flush_revocations(self._nodes[url])
        return not state.revocations_pending

    async def _flush_revocations(self, node: NodeConfig) -> bool:
        """Kill payloads revoked from this node; True once none is left."""
        for payload_id, job_id, key in await self.store.revocations(node.upload_url):
            try:
                await self.gateway.kill(
                    node, payload_id, key=key, token=self._tokens[node.upload_url]
                )
            except PayloadLostError:
                pass
            except ClientCallError as error:
                logger.warning(
                    "could not revoke payload %d of job %d: %s", payload_id, job_id, error
                )
                return False
            await self.store.forget_revocation(node.upload_url, payload_id)
        return True

    async def revoke(self, node_url: str, job: JobRecord) -> None:
        """Kill the job's payload when its node answers again (the server gave the job up)."""
        await self.store.add_revocation(node_url, job.dest_id, job.id, job.dispatch_key)
        state = self.state.get(node_url)
        if state is not None:
            state.revocations_pending = True

    async def fail_over(self, owner: str | None = None) -> list[int]:
        """Queue again the unstarted jobs of nodes down for longer than FAILOVER_AFTER.

        Given an `owner` (a replica), only its own unstarted jobs: `asked_at`, which says
        whether the node's lease on a payload may still run, is known only to the replica
        that follows the job.
        """
        moved: list[int] = []
        now = self.clock.now()
        for url, state in self.state.items():
            if state.healthy or state.down_since is None:
                continue
            failover_after_s = self.failover_after_s(url)
            if now - state.down_since < failover_after_s:
                continue
            if self._has_sibling[url]:
                for job in await self.store.jobs_on_node(url, [Status.QUEUED]):
                    # Its last dispatch may have reached the node, but a payload nobody
                    # asks about never starts there (the lease), so another node may run it,
                    # at once. Only when one can: else it keeps its backoff (and its key).
                    service = self.settings.services.get(job.service)
                    if service is None or not self.others_usable(service.nodes, url):
                        continue
                    if await lifecycle.unpin(self.store, job.id):
                        logger.warning(
                            "job %d: client %s is down; dispatching it elsewhere", job.id, url
                        )
                        moved.append(job.id)
            fed_at = self.feed_asked_at.get(url, 0.0)
            for job in await self.store.jobs_on_node(url, NOT_STARTED):
                if owner is not None and job.owner != owner:
                    continue
                if now - max(self.asked_at.get(job.id, 0.0), fed_at) < failover_after_s:
                    continue  # asked about lately: its lease there may not have run out
                if await lifecycle.revoke(self.store, job):
                    state.revocations_pending = True
                    logger.warning(
                        "job %d: client %s is down; dispatching it elsewhere", job.id, url
                    )
                    moved.append(job.id)
        return moved

    def snapshot(self) -> FleetSnapshot:
        """The clients as they are now, frozen: what /metrics, /status and the queue view read."""
        return FleetSnapshot(
            nodes={
                url: NodeView(
                    url=url,
                    condition=self.condition(url),
                    healthy=state.healthy,
                    down_since=state.down_since,
                    load_percent=state.load_percent,
                    max_concurrent=state.max_concurrent,
                    last_error=state.last_error,
                    last_error_at=state.last_error_at,
                    warnings=state.warnings,
                )
                for url, state in self.state.items()
            },
            services={
                name: tuple(node.upload_url for node in service.nodes)
                for name, service in self.settings.services.items()
            },
        )
