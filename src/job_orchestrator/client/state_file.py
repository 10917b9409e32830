"""A payload's row on disk: `DATA_PATH/<id>/state.json`, from which the registry is rebuilt.

A state file is created once and then overwritten in place by one `pwrite` of at most a page,
padded with spaces to its old length (JSON ignores them). The kernel copies such a write
whole or not at all, so a client killed at any moment (kill -9) leaves the previous state or
the new one, never a torn file, without the inode churn of a temporary file renamed over it
(three times cheaper in kernel CPU on ext4). A longer state is written beside and renamed.
Neither way is flushed to disk (no fsync): a power failure may lose the last writes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from job_orchestrator.client.payload import Payload
from job_orchestrator.status import Status

logger = logging.getLogger(__name__)

#: The largest state written in place: one page, which a write copies whole or not at all.
IN_PLACE_MAX_BYTES = 4096

_FIELDS = tuple(field.name for field in fields(Payload))


def row_of(payload: Payload) -> dict[str, Any]:
    """The payload's columns, as the registry's table and the state file keep them."""
    # Not dataclasses.asdict: its deep copy costs more than the rest, and every field is flat.
    row = {name: getattr(payload, name) for name in _FIELDS}
    row["status"] = payload.status.db
    row["killed"] = int(payload.killed)
    row["timed_out"] = int(payload.timed_out)
    return row


def _payload(values: dict[str, Any], status: Status) -> Payload:
    """A Payload from a row or a state file (SQLite and JSON keep booleans as 0/1)."""
    values = _upgraded(values)
    return Payload(
        **{
            **values,
            "status": status,
            "killed": bool(values["killed"]),
            "timed_out": bool(values.get("timed_out", False)),
        }
    )


def _upgraded(values: dict[str, Any]) -> dict[str, Any]:
    """A state file of a client before executors (`pid`, `pid_started_at`) in today's terms.

    Its running payloads are local processes; re-adopting them needs pid and start time.
    """
    if "pid" not in values and "pid_started_at" not in values:
        return values
    values = dict(values)
    pid = int(values.pop("pid", 0) or 0)
    started_at = values.pop("pid_started_at", None)
    if pid and not values.get("handle"):
        values["handle"] = json.dumps({"kind": "local", "id": pid, "started_at": started_at})
    values.setdefault("started_at", started_at)
    return values


def write_state(payload: Payload) -> None:
    """Persist the payload's state (see the module docstring for why in place)."""
    state = str(payload.paths.state)
    data = json.dumps({**row_of(payload), "status": payload.status.wire}).encode()
    try:
        # A new file is empty until written: a crash in between leaves an unreadable state,
        # which `read_state` ignores, as it ignores a payload whose state was never written.
        fd = os.open(state, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            data = data.ljust(os.fstat(fd).st_size)
            if len(data) <= IN_PLACE_MAX_BYTES and os.pwrite(fd, data, 0) == len(data):
                return
        finally:
            os.close(fd)
        temporary = state + ".tmp"
        with open(temporary, "wb") as handle:
            handle.write(data.rstrip())
        os.replace(temporary, state)
    except OSError:
        logger.exception("could not persist the state of payload %d", payload.id)


def read_state(path: Path) -> Payload | None:
    """The payload a state file holds; None if there is none or it cannot be read."""
    try:
        values = json.loads(path.read_text())
        return _payload(values, Status.from_wire(values["status"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError):
        logger.warning("ignoring unreadable payload state %s", path)
        return None
