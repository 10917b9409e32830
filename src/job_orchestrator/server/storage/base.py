"""The storage interface the server's scheduler and loops speak to.

Every status change is a compare-and-set: `transition(job_id, expected, new)` moves a job only
from a status its caller saw, so two loops (or, later, two server replicas) can never both move
the same job, and a final status is never overwritten.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from job_orchestrator.server.scheduler import Occupancy, Placement, ServiceLimits, UserQueue
from job_orchestrator.server.storage.callback_verbs import CallbackVerbs
from job_orchestrator.server.storage.changes import NO_CHANGES, JobChanges
from job_orchestrator.status import Status

#: (service, slot-holding jobs per node) -> the node to send the next job to, or None.


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: int
    user_id: int
    service: str
    status: Status
    loc: str
    dest_id: int
    message: str
    node: str | None
    dispatch_key: str | None
    attempts: int
    not_before: float | None
    failing_since: float | None
    queued_at: float | None
    dispatched_at: float | None
    finished_at: float | None
    #: When the job was uploaded (time.time()).
    created_at: float | None = None
    #: When the server first saw run.sh running (None: not seen, or never ran).
    started_at: float | None = None
    #: run.sh's exit status, when the client reported it.
    exit_code: int | None = None
    #: The replica whose lease covers the job's work in flight (None: nobody's).
    owner: str | None = None
    #: The name of the token (or `jwt:<key>`) that uploaded the job; None: no authentication.
    token_name: str | None = None


class Store(CallbackVerbs, abc.ABC):
    """The verbs the engine (dispatch, collection, nodes, retention, replicas, callback
    delivery, uploads) speaks. Implementations must make `transition` atomic.

    The verbs of completion callbacks are in `callback_verbs.CallbackVerbs`; what routes,
    the status page and /metrics only read is in `StoreViews`. Implementations: SqlStore
    (sql.py: SQLite, PostgreSQL) and MemoryStore (memory.py: a double for engine tests).
    """

    #: Whether other processes (server replicas) may use the same database.
    shared: bool = False
    #: Pairs: what to call when this process moves a job to a final status, and what to call
    #: when it hears that another replica did.
    _final_listeners: tuple[tuple[Callable[[int], None], Callable[[int], None]], ...] = ()

    def on_final(
        self, listener: Callable[[int], None], elsewhere: Callable[[int], None] | None = None
    ) -> None:
        """Have `listener(job_id)` called after every move of a job to a final status by this
        process, and `elsewhere(job_id)` (by default `listener`) once this process hears of
        another replica's."""
        self._final_listeners = (*self._final_listeners, (listener, elsewhere or listener))

    def _announce_final(self, job_id: int) -> None:
        for listener, _elsewhere in self._final_listeners:
            listener(job_id)

    def _heard_final(self, job_id: int) -> None:
        for _listener, elsewhere in self._final_listeners:
            elsewhere(job_id)

    def work_counts(self) -> tuple[Mapping[str, int], int]:
        """Units of work run by this process per verb, and the transactions it committed
        (one unit may take part in a shared commit), since it opened the store (/metrics)."""
        return {}, 0

    def round_trips(self) -> int:
        """Requests this process has sent its database server and waited for, since it opened
        the store (/metrics); none for a database in the process (SQLite, memory)."""
        return 0

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Have `wake()` called whenever any process using this database (another replica)
        queues a job or frees a slot; also once after each reconnection of the listener, for
        what it may have missed, and when this process comes to lead dispatch. A no-op where
        this process is the only one (SQLite)."""
        del wake

    def leads_dispatch(self) -> bool:
        """Whether this process is the one that dispatches for every process using this
        database (one at a time; another takes over when it is gone). The others run a
        dispatch pass only on their safety tick, so a wake-up heard by every replica costs one
        decision, not one per replica. Only work is saved: each decision is serialised and
        quota-checked whoever makes it. True where this process is the only one."""
        return True

    @abc.abstractmethod
    async def create_job(
        self,
        *,
        user_id: int,
        service: str,
        loc: str,
        callback_url: str | None = None,
        token_name: str | None = None,
        queue_max: int = 0,
    ) -> int:
        """Insert a Queued job and return its id (ids are never reused); with `callback_url`,
        its pending callback delivery in the same transaction.

        With `queue_max`, raise QueueFullError instead if the user has that many jobs Queued
        already, in every service, counted in the same transaction: on SQLite and in memory
        two uploads at the limit never both pass; on PostgreSQL (read committed) two that
        commit at the same instant on different connections can.
        """

    @abc.abstractmethod
    async def get_job(self, job_id: int) -> JobRecord | None: ...

    @abc.abstractmethod
    async def transition(
        self,
        job_id: int,
        expected: Collection[Status],
        new: Status | None = None,
        changes: JobChanges = NO_CHANGES,
    ) -> bool:
        """Set `new` (and the columns of `changes`) only if the job's status is in `expected`.

        Returns whether the row changed. `finished_at` is stamped when `new` is final. Raises
        IllegalMoveError if SERVER_MOVES (status.py) has no move from an `expected` status to
        `new`: the engine moves jobs through server/lifecycle.py, whose verbs it checks.
        """

    async def transition_returning(
        self,
        job_id: int,
        expected: Collection[Status],
        new: Status | None = None,
        changes: JobChanges = NO_CHANGES,
    ) -> JobRecord | None:
        """As `transition`, returning the job as the change left it (None: no change), in the
        same unit of work where the database can (RETURNING); this default reads it after."""
        if not await self.transition(job_id, expected, new, changes):
            return None
        return await self.get_job(job_id)

    @abc.abstractmethod
    async def claim_dispatchable(
        self,
        limits: Mapping[str, ServiceLimits],
        now: float,
        placements: Mapping[str, Placement],
        owner: str | None = None,
    ) -> list[JobRecord]:
        """Dispatch: claim the jobs the fairness rule starts now, each on a chosen node.

        Per service, in one transaction serialised against every other dispatcher of the
        database (other replicas included): the occupancy, the candidates, the
        scheduler's decision (`plan_dispatch`) and the compare-and-set claim, so no quota is
        ever exceeded. Claimed jobs are Processing, owned by `owner`, each on a node of its
        service's placement (`limits` and `placements` name the same services).
        """

    @abc.abstractmethod
    async def next_retry_at(self, after: float | None = None) -> float | None:
        """The earliest `not_before` of a Queued job (later than `after`, if given), so
        dispatch can sleep until then."""

    @abc.abstractmethod
    async def jobs_with_status(self, statuses: Collection[Status]) -> list[JobRecord]: ...

    @abc.abstractmethod
    async def owned_job_ids(self, statuses: Collection[Status], owner: str) -> list[int]:
        """The ids of `owner`'s jobs in `statuses`, in id order: what the reaper reads every
        tick, so no more than the ids (a record costs ten times an id)."""

    @abc.abstractmethod
    async def finished_before(self, cutoff: float, limit: int = 500) -> list[JobRecord]:
        """Final, not yet Cleaned jobs that finished before `cutoff`."""

    @abc.abstractmethod
    async def known_locs(self, locs: Collection[str]) -> set[str]:
        """Which of `locs` belong to a job (used to find orphan directories)."""

    @abc.abstractmethod
    async def jobs_on_node(self, node: str, statuses: Collection[Status]) -> list[JobRecord]: ...

    @abc.abstractmethod
    async def revoke_to_queue(self, job: JobRecord, expected: Collection[Status]) -> bool:
        """Send a job held by an unreachable node back to the queue, atomically recording its
        payload there as revoked (to be killed when the node answers again)."""

    @abc.abstractmethod
    async def revocations(self, node: str) -> list[tuple[int, int, str | None]]:
        """(payload_id, job_id, dispatch_key) of the payloads revoked on a node."""

    @abc.abstractmethod
    async def add_revocation(
        self, node: str, payload_id: int, job_id: int, dispatch_key: str | None
    ) -> None:
        """Record a payload to kill on a node when it answers again (idempotent)."""

    @abc.abstractmethod
    async def forget_revocation(self, node: str, payload_id: int) -> None: ...

    # ---- replicas and leases ------------------------------------------------------------------

    @abc.abstractmethod
    async def heartbeat(
        self, replica_id: str, services_digest: str, now: float, incarnation: str = ""
    ) -> str | None:
        """Record that this replica is alive (and its services' digest); renews its lease.

        Returns the incarnation (process) that wrote the previous heartbeat of this id, None
        if there was none."""

    @abc.abstractmethod
    async def live_replicas(self, since: float) -> dict[str, str]:
        """Replicas whose last heartbeat is at or after `since`: id -> services digest."""

    @abc.abstractmethod
    async def retire_replica(self, replica_id: str) -> None:
        """Forget a replica that stops cleanly: its jobs' leases expire at once."""

    @abc.abstractmethod
    async def take_over(
        self, replica_id: str, statuses: Collection[Status], alive_since: float, *, own: bool
    ) -> list[JobRecord]:
        """Become the owner of every job in `statuses` whose lease expired: no owner, or an
        owner with no heartbeat since `alive_since` (and, with `own`, the jobs this replica
        already owns: a restarted replica resumes them). Each job moves by compare-and-set
        on its owner, so two replicas never both take it. Returns the jobs taken."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreError unless the database answers."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class StoreViews(abc.ABC):
    """What routes, the status page, /metrics and queue positions read: counts and pages of
    jobs, never a change. Apart from `Store`, which the engine needs alone."""

    @abc.abstractmethod
    async def occupancy(self) -> Occupancy:
        """Slot-holding jobs per (service, user) and per service (queue positions)."""

    @abc.abstractmethod
    async def status_counts(self) -> dict[tuple[str, Status], int]:
        """Jobs per (service, status), in one grouped query (read by /metrics)."""

    @abc.abstractmethod
    async def node_occupancy(self, service: str) -> dict[str, int]:
        """Slot-holding jobs of a service per node (client upload URL)."""

    @abc.abstractmethod
    async def queue_heads(self, limits: Mapping[str, ServiceLimits], now: float) -> list[UserQueue]:
        """The oldest due Queued jobs of each (service, user), at most runs_per_user each, with
        the user's latest turn in the service."""

    @abc.abstractmethod
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
        """Up to `limit` jobs with an id below `before_id` matching every filter given, newest
        (highest id) first: one page of a keyset walk. `user_ranges`: only users in one of
        these inclusive ranges (a portal's)."""

    @abc.abstractmethod
    async def open_job_counts(self) -> dict[tuple[str, int], dict[Status, int]]:
        """Jobs not yet final per (service, user), by status, in one grouped query."""

    async def callback_url(self, job_id: int) -> str | None:
        """The callback URL given at upload (for `GET /jobs/{id}`), or None."""
        return (await self.callback_urls([job_id])).get(job_id)

    @abc.abstractmethod
    async def callback_urls(self, job_ids: Collection[int]) -> dict[int, str]:
        """The callback URLs of those of these jobs that gave one (one query for a page)."""


class ServerStore(Store, StoreViews, abc.ABC):
    """What a server opens: the engine's verbs and the read views, on one database."""
