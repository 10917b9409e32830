"""What a Slurm job state means for a payload (pure: no Slurm calls here).

The table (also in docs/slurm.md):

| Slurm state | payload |
|---|---|
| PENDING, CONFIGURING, REQUEUED, REQUEUE_HOLD, REQUEUE_FED, RESV_DEL_HOLD | Prepared |
| RUNNING, COMPLETING, SUSPENDED, STOPPED, SIGNALING, STAGE_OUT, RESIZING | Running |
| COMPLETED | Completed (exit 0) or Failed with the code |
| FAILED | Failed with run.sh's code, or with Slurm's reason when run.sh never ran |
| TIMEOUT | Failed, "wall-time limit" |
| OUT_OF_MEMORY | Failed, "out of memory" |
| NODE_FAIL, BOOT_FAIL | Failed, node failure |
| CANCELLED | Killed if this client cancelled it, else Failed, "cancelled in Slurm" |
| PREEMPTED | Failed, "preempted" (jobs are submitted with --no-requeue) |
| DEADLINE, REVOKED, SPECIAL_EXIT | Failed with the state |

PREEMPTED and REQUEUED: payloads are submitted with `--no-requeue`, so Slurm never reruns
one on its own: a rerun would start run.sh again in a work directory the first attempt
already wrote to, and the server (which may fail the job over to another client) decides
about retries, not the cluster. A preempted job is therefore Failed. An administrator's
explicit `scontrol requeue` is respected: the job is watched through its PENDING phase
again and the payload keeps its status until the job's final state.
"""

from __future__ import annotations

from job_orchestrator.client.executors.base import Outcome

WAITING = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
)
RUNNING = frozenset(
    {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}
)
_FAILURES = {
    "TIMEOUT": "wall-time limit exceeded (Slurm TIMEOUT)",
    "OUT_OF_MEMORY": "out of memory (Slurm OUT_OF_MEMORY)",
    "NODE_FAIL": "the node failed (Slurm NODE_FAIL)",
    "BOOT_FAIL": "the node failed to boot (Slurm BOOT_FAIL)",
    "PREEMPTED": "preempted by a higher-priority job (Slurm PREEMPTED; not requeued)",
    "DEADLINE": "the job's deadline passed before it could run (Slurm DEADLINE)",
    "REVOKED": "the job was revoked by another cluster (Slurm REVOKED)",
    "SPECIAL_EXIT": "the job ended in Slurm's SPECIAL_EXIT state",
}
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", *_FAILURES})


def base_state(state: str) -> str:
    """`CANCELLED by 0` (sacct) -> CANCELLED; `COMPLETED+` -> COMPLETED."""
    return state.split(" ", 1)[0].rstrip("+").upper()


def sacct_exit_code(text: str) -> int | None:
    """sacct's ExitCode `status:signal` -> run.sh-style status (128 + n for a signal)."""
    status, _, signal = text.partition(":")
    try:
        code, signum = int(status), int(signal or 0)
    except ValueError:
        return None
    return 128 + signum if signum and not code else code


def outcome_for(state: str, reason: str, exit_code: int | None) -> Outcome:
    """The outcome of a job that ended in `state` (with Slurm's `reason`).

    `exit_code` is run.sh's status as the wrapper recorded it (or sacct reported it); a job
    whose run.sh never ran has none.
    """
    kind = base_state(state)
    if kind in _FAILURES:
        return Outcome(exit_code, _FAILURES[kind])
    if kind == "CANCELLED":
        detail = state.split(" ", 1)[1] if " " in state else "by an operator or the cluster"
        return Outcome(exit_code, f"cancelled in Slurm ({detail})")
    if kind == "COMPLETED":
        return Outcome(0 if exit_code is None else exit_code)
    if exit_code is not None and exit_code != 0:
        return Outcome(exit_code)  # run.sh ran and failed: the usual non-zero exit
    why = f": {reason}" if reason and reason != "None" else ""
    return Outcome(exit_code, f"the Slurm job failed before run.sh ended ({kind}{why})")
