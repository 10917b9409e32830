"""How an execution that ended settles its payload: the final status, its message, and the
result ZIP of a run.sh that exited 0.

Why it ended is decided in this order: a kill through the API, a stop for disk space, the
wall-time limit, what the executor says (Slurm's limits, out of memory, a lost node), then
run.sh's exit status; only an exit status of 0 with a result ZIP that could be built is
Completed.
"""

from __future__ import annotations

import contextlib
import logging
import signal

from job_orchestrator.archive import ArchiveError
from job_orchestrator.client.archives import Archiver
from job_orchestrator.client.executors.base import Outcome
from job_orchestrator.client.log_tail import with_last_line
from job_orchestrator.client.payload import Ending, Payload
from job_orchestrator.client.registry import Registry
from job_orchestrator.status import Status

logger = logging.getLogger(__name__)


async def settle(
    registry: Registry,
    archiver: Archiver,
    payload_id: int,
    outcome: Outcome,
    *,
    result_max_bytes: int | None,
) -> None:
    """End the payload as its execution's outcome says (see the module docstring)."""
    current = registry.get(payload_id)
    if current is None:
        return
    ending = ending_of(current, outcome)
    if ending is not None:
        registry.end(payload_id, ending)
        return
    try:
        summary = await archiver.result(
            current.paths.work, current.paths.result, max_total_bytes=result_max_bytes
        )
    except ArchiveError as error:
        registry.end(payload_id, Ending(Status.FAILED, str(error), exit_code=0))
        return
    # Still Completed, but the user is told (message and the archive's manifest).
    message = "; ".join(part for part in (outcome.note, summary.describe()) if part)
    if message:
        logger.warning("payload %d: %s", payload_id, message)
    registry.end(payload_id, Ending(Status.COMPLETED, message, exit_code=0))


def ending_of(current: Payload, outcome: Outcome) -> Ending | None:
    """How an execution that ended did, unless it exited 0 (then its result decides)."""
    returncode = outcome.exit_code
    if current.killed:
        return Ending(Status.KILLED, "job terminated", returncode)
    if current.disk_stop is not None:
        return Ending(Status.FAILED, current.disk_stop, returncode)
    if current.timed_out:
        message = f"wall-time limit of {current.timeout_s:g} s exceeded"
        return Ending(Status.FAILED, message, returncode)
    if outcome.failure is not None:
        # The executor ended it (Slurm's wall-time limit, out of memory, a node failure, a
        # cancellation by someone else): never a success, whatever the exit status.
        return Ending(Status.FAILED, outcome.failure, returncode)
    if returncode is None:
        lost = "run.sh ended while the client was down and its exit status was lost"
        return Ending(Status.FAILED, lost)
    if returncode != 0:
        message = with_last_line(_describe_exit(returncode), current.paths.log)
        return Ending(Status.FAILED, message, returncode)
    return None


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"run.sh was killed by {signal.Signals(-returncode).name}"
        return f"run.sh was killed by signal {-returncode}"
    # The wrapper's bash reports a script killed by signal n as status 128 + n.
    if 128 < returncode <= 128 + signal.SIGRTMAX:
        with contextlib.suppress(ValueError):
            name = signal.Signals(returncode - 128).name
            return f"run.sh exited with status {returncode} (killed by {name})"
    return f"run.sh exited with status {returncode}"
