"""A job's life on the server: every status change the engine makes, one verb per kind.

Each verb's move (`Move`: the statuses it leaves, those it may reach) is declared once below
and checked against SERVER_MOVES (status.py) when this module is imported; a test checks that
the verbs together make every move of the table, and no other. Every verb is a
compare-and-set through the Store and returns whether it moved the job (False: someone else
moved it first, which the caller handles). The dispatcher, the collector (collection.py), the
fleet (nodes.py) and retention call these, never `Store.transition` itself:

    claim              Queued -> Processing (in SQL, by Store.claim_dispatchable)
    mark_submitted     Processing -> Submitted
    requeue*           Processing -> Queued (restart, refused by the node, retry later)
    mark_on_client     Submitted/Prepared/Running -> Prepared/Running (the client's report)
    settle             Submitted/Prepared/Running -> Completed/Failed/Invalid/Killed
    requeue_lost       Submitted/Prepared/Running -> Queued (the client lost the payload)
    revoke             Submitted/Prepared -> Queued (failover; in SQL, Store.revoke_to_queue)
    unpin              Queued stays, for any node (failover)
    fail (FAIL_*)      Queued, Processing, Locked, Submitted/Prepared/Running -> Failed
    kill_queued        Queued -> Killed
    lock_for_kill      Processing/Submitted/Prepared/Running -> Locked
    record_payload     Locked stays, with the payload its dispatch created
    unlock             Locked -> where it was locked from (the kill was not delivered)
    kill_locked        Locked -> Killed
    clean              Completed/Failed/Invalid/Killed -> Cleaned
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace

from job_orchestrator.errors import IllegalMoveError
from job_orchestrator.server.storage import NO_CHANGES, JobChanges, JobRecord, Store
from job_orchestrator.status import ON_CLIENT, OUTCOMES, SERVER_MOVES, Status, check_move

#: Statuses of a job on a client that has not started it (failover may move it elsewhere).
NOT_STARTED = (Status.SUBMITTED, Status.PREPARED)


@dataclass(frozen=True, slots=True)
class Move:
    """One kind of status change: from any of `leaves` to one of `reaches` (none: the status
    stays, only columns change). Checked against SERVER_MOVES when declared."""

    name: str
    leaves: frozenset[Status]
    reaches: frozenset[Status]

    def __post_init__(self) -> None:
        for new in self.reaches:
            check_move(SERVER_MOVES, self.leaves, new)

    async def make(
        self,
        store: Store,
        job_id: int,
        new: Status | None,
        changes: JobChanges = NO_CHANGES,
        *,
        leaving: Collection[Status] | None = None,
    ) -> bool:
        """Move the job to `new` if it is in `leaving` (default: any status this move leaves)."""
        expected = self.expected(new, leaving)
        return await store.transition(job_id, expected, new, changes)

    def expected(self, new: Status | None, leaving: Collection[Status] | None) -> list[Status]:
        """The statuses a compare-and-set to `new` may leave; IllegalMoveError if this move
        does not make that change."""
        if (new is None) != (not self.reaches) or (new is not None and new not in self.reaches):
            raise IllegalMoveError(f"{self.name} does not move a job to {new}")
        expected = self.leaves if leaving is None else frozenset(leaving)
        if not expected <= self.leaves:
            raise IllegalMoveError(f"{self.name} does not move a job from {set(expected)}")
        return sorted(expected, key=lambda status: status.value)


#: Every move declared below, by name.
MOVES: dict[str, Move] = {}


def _declare(name: str, leaves: Iterable[Status], reaches: Iterable[Status] = ()) -> Move:
    move = Move(name, frozenset(leaves), frozenset(reaches))
    MOVES[name] = move
    return move


# Made in SQL by Store.claim_dispatchable (storage/_dispatch.py), declared here for the map.
CLAIM = _declare("claim", [Status.QUEUED], [Status.PROCESSING])
SUBMIT = _declare("mark_submitted", [Status.PROCESSING], [Status.SUBMITTED])
REQUEUE = _declare("requeue", [Status.PROCESSING], [Status.QUEUED])
RECORD_PAYLOAD = _declare("record_payload", [Status.LOCKED])
ON_CLIENT_REPORT = _declare("mark_on_client", ON_CLIENT, [Status.PREPARED, Status.RUNNING])
SETTLE = _declare("settle", ON_CLIENT, OUTCOMES)
REQUEUE_LOST = _declare("requeue_lost", ON_CLIENT, [Status.QUEUED])
# Made by Store.revoke_to_queue, which also records the payload to kill on the node.
REVOKE = _declare("revoke", NOT_STARTED, [Status.QUEUED])
UNPIN = _declare("unpin", [Status.QUEUED])
KILL_QUEUED = _declare("kill_queued", [Status.QUEUED], [Status.KILLED])
LOCK = _declare("lock_for_kill", [Status.PROCESSING, *ON_CLIENT], [Status.LOCKED])
UNLOCK = _declare("unlock", [Status.LOCKED], ON_CLIENT)
KILL_LOCKED = _declare("kill_locked", [Status.LOCKED], [Status.KILLED])
CLEAN = _declare("clean", OUTCOMES, [Status.CLEANED])

# Failures, by where they catch the job (`fail` takes one of these).
#: No client of its service answered for RETRY_DEADLINE while it waited.
FAIL_QUEUED = _declare("fail_queued", [Status.QUEUED], [Status.FAILED])
#: Its client left the configuration, or its service did, before it was sent.
FAIL_UNSENT = _declare("fail_unsent", [Status.PROCESSING], [Status.FAILED])
#: Its dispatch failed for good; a termination that arrived meanwhile ends Failed too.
FAIL_DISPATCH = _declare("fail_dispatch", [Status.PROCESSING, Status.LOCKED], [Status.FAILED])
#: Its collection failed (client gone, lost contact past RETRY_DEADLINE, unreadable result).
FAIL_ON_CLIENT = _declare("fail_on_client", ON_CLIENT, [Status.FAILED])


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a job on a client ended, as `settle` records it."""

    status: Status
    message: str
    exit_code: int | None = None
    #: When run.sh started, if the server learns it only now.
    started_at: float | None = None


# ---- dispatch ------------------------------------------------------------------------------


def as_submitted(job: JobRecord, dest_id: int, now: float) -> JobRecord:
    """The job as `mark_submitted` writes it."""
    return replace(
        job,
        status=Status.SUBMITTED,
        dest_id=dest_id,
        failing_since=None,
        not_before=None,
        message="",
        dispatched_at=now,
    )


async def mark_submitted(store: Store, job: JobRecord, dest_id: int, now: float) -> bool:
    """Processing -> Submitted as payload `dest_id` at `now` (as_submitted); False: it moved."""
    changes = JobChanges(
        dest_id=dest_id, failing_since=None, not_before=None, message="", dispatched_at=now
    )
    return await SUBMIT.make(store, job.id, Status.SUBMITTED, changes)


async def requeue(store: Store, job_id: int) -> bool:
    """Processing -> Queued, keeping node and dispatch key: a node that already has the
    payload returns it instead of running it twice (after a restart, or a dead task)."""
    return await REQUEUE.make(store, job_id, Status.QUEUED)


async def requeue_refused(store: Store, job_id: int, message: str) -> bool:
    """Processing -> Queued for any node, saying why: its node refused it unread."""
    return await REQUEUE.make(store, job_id, Status.QUEUED, JobChanges(node=None, message=message))


async def retry_dispatch(
    store: Store, job: JobRecord, *, failing_since: float, not_before: float | None, unpin: bool
) -> bool:
    """Processing -> Queued after a failed dispatch, one attempt more; `unpin`: for any node."""
    changes = JobChanges(
        attempts=job.attempts + 1, failing_since=failing_since, not_before=not_before
    )
    if unpin:
        changes = replace(changes, node=None)
    return await REQUEUE.make(store, job.id, Status.QUEUED, changes)


async def fail(store: Store, job_id: int, move: Move, message: str) -> bool:
    """-> Failed with `message`, from the statuses of `move` (one of the FAIL_* moves)."""
    return await move.make(store, job_id, Status.FAILED, JobChanges(message=message))


# ---- collection ----------------------------------------------------------------------------


async def mark_on_client(store: Store, job_id: int, status: Status, started_at: float) -> bool:
    """Mirror the Prepared or Running its client reports; Running dates its start."""
    changes = JobChanges(started_at=started_at) if status is Status.RUNNING else NO_CHANGES
    return await ON_CLIENT_REPORT.make(store, job_id, status, changes)


async def settle(store: Store, job_id: int, outcome: Outcome) -> bool:
    """Submitted/Prepared/Running -> the outcome's final status, exactly once."""
    changes = JobChanges(message=outcome.message)
    if outcome.exit_code is not None:
        changes = replace(changes, exit_code=outcome.exit_code)
    if outcome.started_at is not None:
        changes = replace(changes, started_at=outcome.started_at)
    return await SETTLE.make(store, job_id, outcome.status, changes)


async def requeue_lost(store: Store, job: JobRecord) -> bool:
    """On a client that lost its payload -> Queued for any node, with a fresh dispatch key."""
    changes = JobChanges(
        attempts=job.attempts + 1, dest_id=None, dispatch_key=None, node=None, started_at=None
    )
    return await REQUEUE_LOST.make(store, job.id, Status.QUEUED, changes)


# ---- failover ------------------------------------------------------------------------------


async def revoke(store: Store, job: JobRecord) -> bool:
    """Not started on a node that stays down -> Queued, its payload there to be killed."""
    return await store.revoke_to_queue(job, REVOKE.leaves)


async def unpin(store: Store, job_id: int) -> bool:
    """A Queued job pinned to a node that stays down may go to any node (its key too)."""
    changes = JobChanges(node=None, dispatch_key=None, not_before=None)
    return await UNPIN.make(store, job_id, None, changes)


# ---- termination ---------------------------------------------------------------------------


async def kill_queued(store: Store, job_id: int) -> bool:
    return await KILL_QUEUED.make(
        store, job_id, Status.KILLED, JobChanges(message="job terminated")
    )


def may_lock(status: Status) -> bool:
    """Whether a job in `status` can be locked for a kill."""
    return status in LOCK.leaves


async def lock_for_kill(store: Store, job: JobRecord, owner: str | None = None) -> bool:
    """The job, still as seen in `job.status`, -> Locked; `owner`: this replica takes it."""
    changes = NO_CHANGES if owner is None else JobChanges(owner=owner)
    return await LOCK.make(store, job.id, Status.LOCKED, changes, leaving=[job.status])


async def record_payload(store: Store, job_id: int, dest_id: int) -> JobRecord | None:
    """A Locked job's dispatch created payload `dest_id`, to be killed: the job, or None."""
    expected = RECORD_PAYLOAD.expected(None, None)
    return await store.transition_returning(job_id, expected, None, JobChanges(dest_id=dest_id))


async def unlock(store: Store, job_id: int, restore: Status) -> bool:
    """Locked -> `restore`, where it was locked from: its kill could not be delivered."""
    return await UNLOCK.make(store, job_id, restore)


async def kill_locked(store: Store, job_id: int, message: str = "job terminated") -> bool:
    return await KILL_LOCKED.make(store, job_id, Status.KILLED, JobChanges(message=message))


# ---- retention -----------------------------------------------------------------------------


async def clean(store: Store, job: JobRecord) -> bool:
    """A final job, still in `job.status`, whose files are gone -> Cleaned."""
    return await CLEAN.make(store, job.id, Status.CLEANED, leaving=[job.status])
