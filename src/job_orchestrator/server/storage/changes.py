"""The columns a status change may set besides the status: one typed value, `JobChanges`.

A field left at `KEEP` is not written; any other value (None included) is. The engine's verbs
(server/lifecycle.py) build these; the Store turns them into columns (`columns()`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Final


class Keep(enum.Enum):
    """The type of `KEEP`: a field's column is left as it is."""

    KEEP = enum.auto()


KEEP: Final = Keep.KEEP


@dataclass(frozen=True, slots=True)
class JobChanges:
    message: str | Keep = KEEP
    #: The node the job is (to be) dispatched to; None: none, any node may take it.
    node: str | Keep | None = KEEP
    #: The payload id on the node.
    dest_id: int | Keep | None = KEEP
    dispatch_key: str | Keep | None = KEEP
    attempts: int | Keep = KEEP
    not_before: float | Keep | None = KEEP
    failing_since: float | Keep | None = KEEP
    dispatched_at: float | Keep | None = KEEP
    started_at: float | Keep | None = KEEP
    exit_code: int | Keep | None = KEEP
    owner: str | Keep | None = KEEP
    #: Stamped by the Store on a move to a final status unless given here.
    finished_at: float | Keep | None = KEEP

    def columns(self) -> dict[str, object]:
        """The columns to write and their values."""
        return {name: value for name in _NAMES if (value := getattr(self, name)) is not KEEP}


_NAMES = tuple(field.name for field in fields(JobChanges))

#: Only the status changes.
NO_CHANGES: Final = JobChanges()
