"""The client's payload registry: an in-memory SQLite table, written through to disk.

Each payload lives in `DATA_PATH/<id>/` with `work/` (the script's directory), `state.json`
(this registry's row), `exit/code` (written by the wrapper when run.sh ends), `tmp/` (its /tmp
in the bwrap sandbox, made at launch), `result.zip` and `output.log` (the script's stdout and
stderr). The registry is rebuilt from those directories at start, so finished results survive
a restart, and ids are never reused: a high-water mark on disk stays ahead of every id handed
out. It is moved a block of ID_BLOCK ids at a time (one file write per block, not per
payload), so after a restart ids continue past the block's end, and the ids skipped count as
used (Cleaned).

A cleaned payload leaves the registry (and its directory the disk), so memory grows with the
payloads held, not with every payload ever run. An id below the high-water mark that is no
longer held was cleaned (or its directory removed by hand): `lookup` answers for it with a
Cleaned stand-in, as the original answers for its cleaned rows, so a server never takes it
for a payload that was lost and runs the job again. Only an id this client never handed out
is unknown (404). A cleaned payload's Idempotency-Key is forgotten with it; payloads are kept
until their outcome was collected (or for hours), far beyond a server's resend of a dispatch.

The table answers the queries (by status, dispatch key, retention); the Payload objects
themselves are kept beside it by id, so a `get` (several per request) builds nothing.

Each row is written through to the payload's state file (state_file.py), which says how a
write survives a client killed at any moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Collection, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from job_orchestrator.client.change_log import ChangeLog
from job_orchestrator.client.payload import (
    STATE_FILE,
    Ending,
    Payload,
    PayloadChanges,
    PayloadPaths,
)
from job_orchestrator.client.state_file import read_state, row_of, write_state
from job_orchestrator.status import CLIENT_MOVES, Status, check_move

logger = logging.getLogger(__name__)

NEXT_ID_FILE = ".next-payload-id"
#: Ids reserved on disk at once: the high-water mark is written once per this many payloads.
ID_BLOCK = 64

_SCHEMA = """
CREATE TABLE payloads (
    id INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    loc TEXT NOT NULL,
    handle TEXT,
    started_at REAL,
    killed INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    exit_code INTEGER,
    dispatch_key TEXT UNIQUE,
    timeout_s REAL,
    timed_out INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL,
    collected_at REAL,
    uid INTEGER,
    disk_stop TEXT,
    holder TEXT
)
"""


class Registry:
    def __init__(self, data_path: Path) -> None:
        self.data_path = data_path
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute(_SCHEMA)
        #: Every payload in the table, by id (the objects are immutable).
        self._payloads: dict[int, Payload] = {}
        self._next_id = 1
        #: The high-water mark on disk: every id below it counts as handed out after a restart.
        self._reserved_until = 1
        #: Ids whose directory a /submit is still filling (not in the table yet).
        self._receiving: set[int] = set()
        self._watchers: dict[int, set[asyncio.Event]] = {}
        #: Every status move, in order, for the change feed (changes.py).
        self.changes = ChangeLog()

    # ---- ids and directories ---------------------------------------------------------------

    def allocate(self) -> PayloadPaths:
        """Reserve a new payload id and create its directory (never an existing one)."""
        while True:
            payload_id = self._next_id
            self._next_id += 1
            root = self.data_path / str(payload_id)
            try:
                root.mkdir(parents=True)
            except FileExistsError:
                continue
            if payload_id >= self._reserved_until:
                # Written before the id is used, so a crash can never hand it out again.
                self._write_next_id(payload_id + ID_BLOCK)
            paths = PayloadPaths(root)
            # Not `tmp`: only the bwrap sandbox needs it (sandbox.py `private_tmp` makes it).
            paths.work.mkdir()
            # The client's own: the job never reaches its exit status (sandbox.py).
            paths.exit_code.parent.mkdir(mode=0o700)
            self._receiving.add(payload_id)
            return paths

    def _write_next_id(self, reserved_until: int) -> None:
        marker = self.data_path / NEXT_ID_FILE
        temporary = marker.with_name(marker.name + ".tmp")
        temporary.write_text(str(reserved_until))
        os.replace(temporary, marker)
        self._reserved_until = reserved_until

    def rebuild(self) -> list[Payload]:
        """Load every payload directory with a state file; return them."""
        self.data_path.mkdir(parents=True, exist_ok=True)
        highest = 0
        with contextlib.suppress(FileNotFoundError, ValueError):
            highest = int((self.data_path / NEXT_ID_FILE).read_text()) - 1
        loaded: list[Payload] = []
        for entry in self.data_path.iterdir():
            if not entry.name.isdigit():
                continue
            highest = max(highest, int(entry.name))
            payload = read_state(entry / STATE_FILE)
            if payload is not None and payload.id == int(entry.name):
                self._insert(payload)
                loaded.append(payload)
        # Ids up to the mark may have been handed out (and cleaned): never again.
        self._next_id = self._reserved_until = highest + 1
        return sorted(loaded, key=lambda p: p.id)

    # ---- rows ------------------------------------------------------------------------------

    def _insert(self, payload: Payload) -> None:
        row = row_of(payload)
        columns = ", ".join(row)
        self._db.execute(
            f"INSERT INTO payloads ({columns}) VALUES ({', '.join('?' * len(row))})",
            list(row.values()),
        )
        self._payloads[payload.id] = payload

    def add(
        self, paths: PayloadPaths, *, dispatch_key: str | None, timeout_s: float | None = None
    ) -> Payload:
        payload = Payload(
            id=int(paths.root.name),
            status=Status.PREPARED,
            loc=str(paths.work),
            dispatch_key=dispatch_key,
            timeout_s=timeout_s,
            created_at=time.time(),
        )
        self._insert(payload)
        self._receiving.discard(payload.id)
        write_state(payload)
        self.changes.record(payload.id)
        return payload

    def get(self, payload_id: int) -> Payload | None:
        return self._payloads.get(payload_id)

    def _select(self, sql: str, parameters: Any = ()) -> list[Payload]:
        """The payloads whose ids a query of the table returns, in its order."""
        rows = self._db.execute(sql, parameters).fetchall()
        return [self._payloads[row[0]] for row in rows]

    def ids(self) -> list[int]:
        """Every payload's id."""
        return list(self._payloads)

    def holds(self, payload_id: int) -> bool:
        """Whether the id is a payload here, or one whose upload is still being received."""
        return payload_id in self._receiving or self.get(payload_id) is not None

    def forget_abandoned(self) -> None:
        """Stop counting uploads as received whose directory was removed (a failed /submit)."""
        self._receiving = {i for i in self._receiving if (self.data_path / str(i)).is_dir()}

    def lookup(self, payload_id: int) -> Payload | None:
        """The payload, a Cleaned stand-in for one this client held and cleaned, or None."""
        payload = self.get(payload_id)
        if payload is None and 0 < payload_id < self._next_id:
            root = self.data_path / str(payload_id)
            return Payload(id=payload_id, status=Status.CLEANED, loc=str(PayloadPaths(root).work))
        return payload

    def by_dispatch_key(self, key: str) -> Payload | None:
        found = self._select("SELECT id FROM payloads WHERE dispatch_key = ?", (key,))
        return found[0] if found else None

    def with_status(self, *statuses: Status) -> list[Payload]:
        marks = ", ".join("?" * len(statuses))
        return self._select(
            f"SELECT id FROM payloads WHERE status IN ({marks}) ORDER BY id",
            [s.db for s in statuses],
        )

    def cleanable(self, cutoff: float, uncollected_cutoff: float) -> list[Payload]:
        """Final payloads whose retention ran out.

        Retention counts from the collection of the outcome (`cutoff`); a payload that was
        killed (the server gave it up) counts from its end, and one never collected is kept
        until `uncollected_cutoff`, so a server that was away still finds its result.
        """
        return self._select(
            "SELECT id FROM payloads WHERE finished_at IS NOT NULL AND ("
            " collected_at < :cutoff"
            " OR (killed = 1 AND finished_at < :cutoff)"
            " OR finished_at < :uncollected)",
            {"cutoff": cutoff, "uncollected": uncollected_cutoff},
        )

    def released_early(self, cutoff: float) -> list[Payload]:
        """Payloads stopped for disk space whose outcome was collected before `cutoff`."""
        return self._select(
            "SELECT id FROM payloads WHERE disk_stop IS NOT NULL AND finished_at IS NOT NULL"
            " AND (collected_at < :cutoff OR (killed = 1 AND finished_at < :cutoff))",
            {"cutoff": cutoff},
        )

    def mark_collected(self, payload_id: int) -> None:
        """The server has received this final payload's outcome; its retention starts."""
        payload = self.get(payload_id)
        if payload is not None and payload.status.is_terminal() and payload.collected_at is None:
            self.change(payload_id, PayloadChanges(collected_at=time.time()))

    def remove(self, payload_id: int) -> None:
        """Forget a cleaned payload (final -> Cleaned); its id stays used (see `lookup`)."""
        current = self.get(payload_id)
        if current is not None:
            check_move(CLIENT_MOVES, [current.status], Status.CLEANED)
        self._db.execute("DELETE FROM payloads WHERE id = ?", (payload_id,))
        if self._payloads.pop(payload_id, None) is not None:
            self.changes.record(payload_id, removed=True)
        for event in self._watchers.get(payload_id, ()):
            event.set()

    # ---- status changes: the moves of CLIENT_MOVES (status.py), and no other -----------------

    def start_running(
        self, payload_id: int, started_at: float, handle: str | None = None
    ) -> Payload | None:
        """Prepared -> Running since `started_at` (with the executor's `handle`, when it was
        just launched); None if it is not Prepared any more."""
        columns: dict[str, Any] = {"started_at": started_at}
        if handle is not None:
            columns["handle"] = handle
        return self._move(payload_id, Status.RUNNING, columns, expected={Status.PREPARED})

    def end(self, payload_id: int, ending: Ending) -> Payload | None:
        """Prepared/Running -> the ending's final status; None if the payload is gone or
        already final (its first ending stands)."""
        columns: dict[str, Any] = {"message": ending.message, "finished_at": time.time()}
        if ending.exit_code is not None:
            columns["exit_code"] = ending.exit_code
        return self._move(payload_id, ending.status, columns)

    def _move(
        self,
        payload_id: int,
        new: Status,
        columns: dict[str, Any],
        expected: Collection[Status] | None = None,
    ) -> Payload | None:
        current = self.get(payload_id)
        if current is None or (expected is not None and current.status not in expected):
            return None
        if current.status.is_terminal():
            return None  # a final status is never left (but for Cleaned: `remove`)
        check_move(CLIENT_MOVES, [current.status], new)
        return self._write(current, {**columns, "status": new})

    def change(
        self,
        payload_id: int,
        changes: PayloadChanges,
        expected: Collection[Status] | None = None,
    ) -> Payload | None:
        """Change a payload's columns, not its status (only from `expected` statuses, if
        given); persist; wake watchers. The status moves through the verbs above."""
        current = self.get(payload_id)
        if current is None or (expected is not None and current.status not in expected):
            return None
        columns = changes.columns()
        return self._write(current, columns) if columns else current

    def _write(self, current: Payload, changes: dict[str, Any]) -> Payload:
        payload_id = current.id
        updated = replace(current, **changes)
        # Only the changed columns (booleans are stored as 0/1 by sqlite3 itself).
        columns = {k: v.db if isinstance(v, Status) else v for k, v in changes.items()}
        self._db.execute(
            f"UPDATE payloads SET {', '.join(f'{k} = ?' for k in columns)} WHERE id = ?",
            [*columns.values(), payload_id],
        )
        self._payloads[payload_id] = updated
        if updated.status is not Status.CLEANED:
            write_state(updated)
        if "status" in changes:
            self.changes.record(payload_id)
        for event in self._watchers.get(payload_id, ()):
            event.set()
        return updated

    @contextlib.contextmanager
    def watch(self, payload_id: int) -> Iterator[asyncio.Event]:
        """An event set whenever the payload changes, for long-polling."""
        event = asyncio.Event()
        self._watchers.setdefault(payload_id, set()).add(event)
        try:
            yield event
        finally:
            watchers = self._watchers.get(payload_id)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[payload_id]

    def count(self) -> int:
        """How many payloads the registry holds (what its memory grows with)."""
        row = self._db.execute("SELECT COUNT(*) FROM payloads").fetchone()
        return int(row[0])

    def status_counts(self) -> dict[Status, int]:
        """Payloads per status (read by /metrics)."""
        rows = self._db.execute("SELECT status, COUNT(*) FROM payloads GROUP BY status")
        counts: dict[Status, int] = {}
        for status, count in rows.fetchall():
            key = Status.from_db(status)
            counts[key] = counts.get(key, 0) + int(count)
        return counts

    def ping(self) -> None:
        self._db.execute("SELECT 1").fetchone()
