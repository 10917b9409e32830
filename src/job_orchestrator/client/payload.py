"""What the client knows of one payload: its row (`Payload`), its files (`PayloadPaths`), how
it ended (`Ending`), and the columns that may change besides its status (`PayloadChanges`).

The registry (registry.py) holds these rows and is the only one that writes them: the status
moves through its verbs (`start_running`, `end`, `remove`), every other column through a
`PayloadChanges`, in which a field left at `KEEP` is not written.
"""

from __future__ import annotations

import contextlib
import enum
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from job_orchestrator.status import Status

STATE_FILE = "state.json"


@dataclass(frozen=True, slots=True)
class PayloadPaths:
    root: Path

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE

    @property
    def exit_code(self) -> Path:
        return self.root / "exit" / "code"

    @property
    def tmp(self) -> Path:
        """The job's private /tmp under the bwrap sandbox."""
        return self.root / "tmp"

    @property
    def result(self) -> Path:
        return self.root / "result.zip"

    @property
    def log(self) -> Path:
        """run.sh's stdout and stderr, interleaved as written (never in the result ZIP)."""
        return self.root / "output.log"


@dataclass(frozen=True, slots=True)
class Payload:
    id: int
    status: Status
    loc: str
    #: The executor's handle (client/executors/base.py `Handle`, encoded): a pid with its
    #: start time, or a Slurm job id. None until it was launched.
    handle: str | None = None
    #: When run.sh started running (epoch s): its wall-time limit counts from here.
    started_at: float | None = None
    killed: bool = False
    message: str = ""
    exit_code: int | None = None
    dispatch_key: str | None = None
    timeout_s: float | None = None
    timed_out: bool = False
    created_at: float = 0.0
    finished_at: float | None = None
    #: When a /retrieve first answered the final status (the server has the outcome).
    collected_at: float | None = None
    #: The uid of JOB_USERS it runs (or ran) under; a restarted client keeps it held while
    #: it re-adopts the payload.
    uid: int | None = None
    #: Why the client stopped it for disk space (disk.py): its final message; it ends Failed
    #: and its files are released as soon as the server has what it can keep.
    disk_stop: str | None = None
    #: The server instance that holds the payload: the last to /retrieve it. Its /changes
    #: requests renew the payload's lease (lease.py), no other server's do.
    holder: str | None = None

    @property
    def paths(self) -> PayloadPaths:
        return PayloadPaths(Path(self.loc).parent)

    @property
    def pid(self) -> int:
        """The process id the original's wire shows (0 when not a local process)."""
        with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
            values = json.loads(self.handle or "")
            if values["kind"] == "local":
                return int(values["id"])
        return 0

    def wire(self) -> dict[str, Any]:
        """The original's six-field Payload JSON; `input` is never echoed back."""
        return {
            "id": self.id,
            "input": {},
            "status": self.status.wire,
            "loc": self.loc,
            "pid": self.pid,
            "killed": self.killed,
        }


#: The payload JSON of an answer about no payload (404, 409, 500, ...), as the original's.
EMPTY_PAYLOAD = {"id": 0, "input": {}, "status": "Unknown", "loc": "", "pid": 0, "killed": False}


@dataclass(frozen=True, slots=True)
class Ending:
    """How a payload ended (`Registry.end`): its final status, why, and run.sh's exit status
    when it is known."""

    status: Status
    message: str
    exit_code: int | None = None


#: A payload killed through the API (or found killed before it ran).
TERMINATED = Ending(Status.KILLED, "job terminated")


class Keep(enum.Enum):
    """The type of `KEEP`: a field's column is left as it is."""

    KEEP = enum.auto()


KEEP: Final = Keep.KEEP


@dataclass(frozen=True, slots=True)
class PayloadChanges:
    """The columns of a payload that change without a move of its status (`Registry.change`).

    There is no status here: a status changes only through the registry's verbs.
    """

    #: The executor's handle, recorded once it was launched (while still Prepared).
    handle: str | Keep | None = KEEP
    #: The uid of JOB_USERS it was given (None: given back).
    uid: int | Keep | None = KEEP
    #: Killed through the API: it ends Killed.
    killed: bool | Keep = KEEP
    #: Past its wall-time limit: it ends Failed.
    timed_out: bool | Keep = KEEP
    #: Stopped for disk space, and why: it ends Failed with this message.
    disk_stop: str | Keep | None = KEEP
    #: The server has received its final status (its retention starts).
    collected_at: float | Keep | None = KEEP
    #: A server instance asked about it (/retrieve): that instance holds it now.
    holder: str | Keep | None = KEEP

    def columns(self) -> dict[str, object]:
        """The columns to write and their values."""
        return {name: value for name in _CHANGE_NAMES if (value := getattr(self, name)) is not KEEP}


_CHANGE_NAMES = tuple(field.name for field in fields(PayloadChanges))
