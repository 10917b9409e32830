"""The job/payload status model shared by the server and the client.

Wire form (JSON) is PascalCase, storage form is lower-case, exactly as the original.
"""

from __future__ import annotations

import enum


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


#: What /status and /metrics say of a client: it takes work (up), or why not: it fails its
#: checks (down), refuses the server's token (unauthorized), is short of disk (disk_full).
CLIENT_CONDITIONS = ("up", "down", "unauthorized", "disk_full")
