"""The order in which this client's payloads changed, for the change feed (changes.py).

Every status move of a payload (created Prepared, Running, final, Cleaned) takes the next
number of one sequence. A reader holds a cursor `<epoch>.<seq>` and is given each payload that
changed after it, once, in the order of its latest change, with its state as it is now: a
payload that moved twice since is given once, as it ended up (the feed says where things are,
not every step they took).

The epoch is drawn when the process starts. The registry is rebuilt from disk then, and the
numbers start again, so a cursor of another epoch (the client restarted), of a number not
handed out yet, or of one older than the log still remembers, is answered with a snapshot:
every payload the registry holds. What the log remembers is bounded: a payload's entry lives
as long as the payload, and that of a removed (Cleaned) one until REMEMBERED_REMOVALS later
removals.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from dataclasses import dataclass

#: How many removals the log remembers, so a reader a little behind is not sent a snapshot.
REMEMBERED_REMOVALS = 10_000


@dataclass(frozen=True, slots=True)
class Cursor:
    epoch: str
    seq: int

    @classmethod
    def parse(cls, raw: str | None) -> Cursor | None:
        """`<epoch>.<seq>`; None for anything else (answered with a snapshot)."""
        epoch, dot, number = (raw or "").partition(".")
        if not dot or not epoch or not number.isdigit() or len(number) > 18:
            return None
        return cls(epoch, int(number))

    def __str__(self) -> str:
        return f"{self.epoch}.{self.seq}"


@dataclass(frozen=True, slots=True)
class Page:
    """What changed after a cursor: payload ids in the order of their latest change."""

    ids: list[int]
    cursor: Cursor
    #: The ids are every payload held (the reader's cursor was not of this log).
    snapshot: bool


class ChangeLog:
    def __init__(self, remembered_removals: int = REMEMBERED_REMOVALS) -> None:
        self.epoch = secrets.token_hex(6)
        self._seq = 0
        #: Payload id -> the number of its latest change; insertion order is number order.
        self._latest: dict[int, int] = {}
        self._removals: deque[tuple[int, int]] = deque()
        self._remembered_removals = remembered_removals
        #: The highest number forgotten: a cursor below it may have missed a change.
        self._floor = 0
        self._changed = asyncio.Event()

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.epoch, self._seq)

    def record(self, payload_id: int, *, removed: bool = False) -> None:
        """The payload's status moved (or it was removed): it changed after every cursor."""
        self._seq += 1
        self._latest.pop(payload_id, None)
        self._latest[payload_id] = self._seq
        if removed:
            self._removals.append((self._seq, payload_id))
            while len(self._removals) > self._remembered_removals:
                seq, forgotten = self._removals.popleft()
                if self._latest.get(forgotten) == seq:
                    del self._latest[forgotten]
                    self._floor = max(self._floor, seq)
        # Each waiter holds the event of its turn; a new one for the next turn.
        self._changed.set()
        self._changed = asyncio.Event()

    def knows(self, cursor: Cursor | None) -> bool:
        """Whether the cursor is of this log and not older than what it remembers."""
        return (
            cursor is not None
            and cursor.epoch == self.epoch
            and self._floor <= cursor.seq <= self._seq
        )

    def after(self, cursor: Cursor) -> Page:
        """The payloads that changed after a cursor this log knows (see `knows`)."""
        ids: list[int] = []
        for payload_id in reversed(self._latest):
            if self._latest[payload_id] <= cursor.seq:
                break
            ids.append(payload_id)
        ids.reverse()
        return Page(ids, self.cursor, snapshot=False)

    def next_change(self) -> asyncio.Event:
        """An event set at the next change (take it before reading, so none slips by)."""
        return self._changed
