"""The job/payload status model shared by the server and the client.

Wire form (JSON) is PascalCase, storage form is lower-case, exactly as the original.

Every status change either side makes is listed once, as data: `SERVER_MOVES` (a job, from
`SERVER_INITIAL`) and `CLIENT_MOVES` (a payload, from `CLIENT_INITIAL`). The server's verbs
(server/lifecycle.py) and the client's (client/registry.py) declare their moves against these
tables, and the Store and the registry refuse any other (`check_move`).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from types import MappingProxyType

from job_orchestrator.errors import IllegalMoveError


class Status(enum.Enum):
    QUEUED = "Queued"
    PROCESSING = "Processing"
    SUBMITTED = "Submitted"
    PREPARED = "Prepared"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    INVALID = "Invalid"
    UNKNOWN = "Unknown"
    LOCKED = "Locked"
    KILLED = "Killed"
    CLEANED = "Cleaned"

    def __str__(self) -> str:
        """The wire string (`Failed`), as users print it: `print(job.status)`."""
        return self.value

    @property
    def wire(self) -> str:
        return self.value

    @property
    def db(self) -> str:
        return self.value.lower()

    @classmethod
    def from_db(cls, text: str) -> Status:
        """Case-insensitive, no trimming; anything unrecognised is Unknown (as upstream)."""
        return _BY_LOWER.get(text.lower(), cls.UNKNOWN)

    @classmethod
    def from_wire(cls, text: str) -> Status:
        """Exact and case-sensitive, as serde parses it; raises ValueError otherwise."""
        return cls(text)

    def is_terminal(self) -> bool:
        return self in TERMINAL


_BY_LOWER = {status.value.lower(): status for status in Status}

#: A job in one of these never changes again (Cleaned only replaces another final status).
TERMINAL = frozenset(
    {Status.COMPLETED, Status.FAILED, Status.INVALID, Status.KILLED, Status.CLEANED}
)

#: Server-side statuses that hold (or are about to hold) a slot of the quotas.
SLOT_HOLDING = frozenset(
    {Status.PROCESSING, Status.SUBMITTED, Status.PREPARED, Status.RUNNING, Status.LOCKED}
)

#: Server-side statuses in which the job lives on a client and its outcome is being collected.
ON_CLIENT = frozenset({Status.SUBMITTED, Status.PREPARED, Status.RUNNING})

#: Statuses a job can be terminated from (anything not final).
TERMINABLE = frozenset(
    {
        Status.QUEUED,
        Status.PROCESSING,
        Status.SUBMITTED,
        Status.PREPARED,
        Status.RUNNING,
        Status.LOCKED,
    }
)

#: The final statuses a job or payload reaches through its outcome (then only Cleaned).
OUTCOMES = TERMINAL - {Status.CLEANED}

Moves = Mapping[Status, frozenset[Status]]

#: A job is created Queued (server/storage `create_job`).
SERVER_INITIAL = Status.QUEUED

#: Every status change of a job on the server, from -> the statuses it may go to. Read off the
#: code (server/lifecycle.py holds the verbs, one per kind of move): dispatch claims Queued ->
#: Processing; a sent job is Submitted; the collector mirrors Prepared/Running and settles the
#: outcome; a job goes back to Queued when its dispatch must be retried, its payload was lost,
#: or its node failed over; /terminate locks it, then kills it (or restores it when the kill
#: could not be delivered); retention cleans a final job. Unknown is never written by the
#: server (it is what an unrecognised stored status reads as), so it has no moves.
SERVER_MOVES: Moves = MappingProxyType(
    {
        Status.QUEUED: frozenset({Status.PROCESSING, Status.KILLED, Status.FAILED}),
        Status.PROCESSING: frozenset(
            {Status.QUEUED, Status.SUBMITTED, Status.LOCKED, Status.FAILED}
        ),
        Status.SUBMITTED: frozenset(
            {Status.PREPARED, Status.RUNNING, Status.QUEUED, Status.LOCKED, *OUTCOMES}
        ),
        Status.PREPARED: frozenset({Status.RUNNING, Status.QUEUED, Status.LOCKED, *OUTCOMES}),
        # Running -> Prepared: the collector mirrors what the client reports, even backwards.
        Status.RUNNING: frozenset({Status.PREPARED, Status.QUEUED, Status.LOCKED, *OUTCOMES}),
        # Back to where it was locked from (a kill that could not be delivered), or final:
        # Killed, or Failed when the dispatch it interrupted failed for good.
        Status.LOCKED: frozenset({*ON_CLIENT, Status.KILLED, Status.FAILED}),
        **{final: frozenset({Status.CLEANED}) for final in OUTCOMES},
        Status.CLEANED: frozenset(),
    }
)

#: A payload is created Prepared (client/registry.py `add`).
CLIENT_INITIAL = Status.PREPARED

#: Every status change of a payload on a client (client/runner.py through the registry's
#: verbs). Prepared -> an outcome without Running: refused by the validator (Invalid), killed
#: or failed before it started, or found at start-up with an execution of another executor.
#: Cleaned is the payload's removal (`Registry.remove`); its id answers Cleaned from then on.
CLIENT_MOVES: Moves = MappingProxyType(
    {
        Status.PREPARED: frozenset({Status.RUNNING, *OUTCOMES}),
        Status.RUNNING: frozenset({Status.COMPLETED, Status.FAILED, Status.KILLED}),
        **{final: frozenset({Status.CLEANED}) for final in OUTCOMES},
        Status.CLEANED: frozenset(),
    }
)


def may_move(moves: Moves, old: Status, new: Status) -> bool:
    """Whether `moves` allows `old` -> `new` (staying in `old` is no move, always allowed)."""
    return old is new or new in moves.get(old, frozenset())


def check_move(moves: Moves, expected: Collection[Status], new: Status) -> None:
    """Raise IllegalMoveError unless `moves` allows every `expected` status -> `new`.

    A compare-and-set names the statuses it moves from: each of them must be allowed, or the
    call could move a job along a path the table does not have.
    """
    illegal = sorted(old.wire for old in expected if not may_move(moves, old, new))
    if illegal:
        raise IllegalMoveError(f"no move from {', '.join(illegal)} to {new.wire}")


#: What /status and /metrics say of a client: it takes work (up), or why not: it fails its
#: checks (down), refuses the server's token (unauthorized), is short of disk (disk_full).
CLIENT_CONDITIONS = ("up", "down", "unauthorized", "disk_full")
