"""The Slurm commands the Slurm executor (slurm.py) runs, and what it reads from their answers:
`sbatch` (the batch job of a payload), `squeue` (the states of this client's jobs), `sacct`
(the end of those squeue forgot), `scancel` and `sinfo` (the cluster's CPUs).

Every command runs with the client's environment minus its secrets, and is given up on after
COMMAND_TIMEOUT_S. A controller that cannot be reached is told apart from a refusal: sbatch
raises `LaunchUnavailableError` (the launch is tried again), the look-ups raise
`SlurmUnreachableError` (the jobs keep their last known state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter

from job_orchestrator.client.executors.base import LaunchError, LaunchUnavailableError
from job_orchestrator.client.payload import Payload
from job_orchestrator.client.sandbox import job_environment
from job_orchestrator.config import ClientSettings

logger = logging.getLogger(__name__)

#: A Slurm command that takes longer is given up on (the controller retries for ~10 s).
COMMAND_TIMEOUT_S = 30.0
#: What Slurm's commands print when the controller cannot be reached (retry, do not fail).
_UNREACHABLE = (
    "unable to contact slurm controller",
    "socket timed out",
    "temporarily unavailable",
    "slurm is busy",
    "connection refused",
    "zero bytes were transmitted",
)


class SlurmUnreachableError(Exception):
    """A look-up got no answer from Slurm; the message is what the command printed."""


@dataclass(frozen=True, slots=True)
class Cpus:
    allocated: int
    idle: int
    total: int


class SlurmCommands:
    def __init__(self, settings: ClientSettings, calls: Counter | None = None) -> None:
        self.settings = settings
        #: Slurm commands run, by name (one squeue per tick, not one per job).
        self._calls = calls
        #: None until known: whether sacct needs --completion (no slurmdbd).
        self._sacct_completion: bool | None = None

    async def sbatch(self, payload: Payload, script: Path) -> int:
        """Submit the payload's batch script; its Slurm job id."""
        paths = payload.paths
        argv = [
            "sbatch",
            "--parsable",
            f"--chdir={paths.work}",
            f"--job-name=jo-{payload.id}",
            f"--output={paths.log}",  # stderr too: without --error Slurm joins them
            "--open-mode=append",
            # Never rerun by Slurm itself (see slurm_states.py: PREEMPTED and REQUEUED).
            "--no-requeue",
            *_time_limit(payload),
            *self.settings.slurm.sbatch_options(),
            str(script),
        ]
        code, out, err = await self._call("sbatch", argv)
        if code is None or _unreachable(err):
            raise LaunchUnavailableError(f"slurmctld is unreachable: {one_line(err)}")
        if code != 0:
            raise LaunchError(one_line(err) or f"sbatch exited with status {code}")
        try:
            return int(out.strip().split(";", 1)[0])
        except ValueError:
            raise LaunchError(f"sbatch answered no job id: {out.strip()!r}") from None

    async def job_of(self, payload: Payload) -> int | None:
        """A job of an earlier launch of this payload: this client's user's, with the same
        name and work directory (another cluster user may name a job `jo-<id>` too)."""
        code, out, _err = await self._call(
            "squeue",
            [
                "squeue",
                "--noheader",
                f"--user={os.getuid()}",
                f"--name=jo-{payload.id}",
                "--format=%i|%Z",
            ],
        )
        if code != 0:
            return None
        for line in out.splitlines():
            job_id, _, workdir = line.strip().partition("|")
            if job_id.isdigit() and workdir == str(payload.paths.work):
                return int(job_id)
        return None

    async def queue_states(self, job_ids: list[int]) -> dict[int, tuple[str, str]]:
        """State and reason of each job squeue still lists (one call for all of them)."""
        code, out, err = await self._call(
            "squeue",
            [
                "squeue",
                "--noheader",
                "--states=all",
                f"--jobs={_id_list(job_ids)}",
                "--format=%i|%T|%r",
            ],
        )
        if code != 0 and "invalid job id" not in err.lower():
            raise SlurmUnreachableError(err)
        seen: dict[int, tuple[str, str]] = {}
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3 and parts[0].isdigit():
                seen[int(parts[0])] = (parts[1], parts[2])
        return seen

    async def accounting(self, job_ids: list[int]) -> dict[int, tuple[str, str, str]]:
        """State, reason and exit code (`code:signal`) of each job sacct knows."""
        base = ["sacct", "--noheader", "--parsable2", f"--jobs={_id_list(job_ids)}"]
        fields = "--format=JobID,State,Reason,ExitCode"
        completion = bool(self._sacct_completion)
        code, out, err = await self._call(
            "sacct", [*base, "--allocations", fields] if not completion else [*base, "-c", fields]
        )
        if code != 0 and self._sacct_completion is None and "disabled" in err.lower():
            # No slurmdbd: the completion log answers instead.
            self._sacct_completion = True
            code, out, err = await self._call("sacct", [*base, "-c", fields])
        if code != 0:
            logger.warning("sacct failed: %s", one_line(err))
            return {}
        if self._sacct_completion is None:
            self._sacct_completion = False
        found: dict[int, tuple[str, str, str]] = {}
        for line in out.splitlines():
            parts = line.strip().split("|")
            head = parts[0].split(".", 1)[0]
            if len(parts) >= 4 and head.isdigit():
                found.setdefault(int(head), (parts[1], parts[2], parts[3]))
        return found

    async def scancel(self, job_id: int, *options: str) -> bool:
        """Whether the controller took the request (a job already ended counts); False only
        when it could not be reached."""
        code, _out, err = await self._call("scancel", ["scancel", *options, str(job_id)])
        if code == 0 or "already completing or completed" in err.lower():
            return True
        logger.warning("scancel %s %d: %s", " ".join(options), job_id, one_line(err))
        return code is not None and not _unreachable(err)

    async def cluster_cpus(self) -> Cpus:
        """sinfo's CPU counts (of SLURM_PARTITION, if set)."""
        partition = self.settings.slurm.partition
        argv = [
            "sinfo",
            "--noheader",
            "--format=%C",
            *([f"--partition={partition}"] * bool(partition)),
        ]
        code, out, err = await self._call("sinfo", argv)
        if code != 0:
            raise SlurmUnreachableError(err)
        allocated = idle = total = 0
        for line in out.split():
            counts = line.split("/")
            if len(counts) == 4 and all(count.isdigit() for count in counts):
                allocated += int(counts[0])
                idle += int(counts[1])
                total += int(counts[3])
        return Cpus(allocated, idle, total)

    async def _call(self, name: str, argv: list[str]) -> tuple[int | None, str, str]:
        """Run a Slurm command; (None, "", why) when it cannot run or hangs."""
        if self._calls is not None:
            self._calls.labels(name).inc()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=job_environment(os.environ),
            )
        except OSError as error:
            return None, "", f"{argv[0]}: {error.strerror}"
        try:
            out, err = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return None, "", f"{argv[0]} did not answer within {COMMAND_TIMEOUT_S:g} s"
        return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def _time_limit(payload: Payload) -> list[str]:
    """The service's wall-time limit as --time, in whole minutes (Slurm's unit)."""
    if not payload.timeout_s:
        return []
    return [f"--time={max(1, math.ceil(payload.timeout_s / 60))}"]


def _id_list(job_ids: list[int]) -> str:
    return ",".join(str(job_id) for job_id in job_ids)


def _unreachable(err: str) -> bool:
    lowered = err.lower()
    return any(marker in lowered for marker in _UNREACHABLE)


def one_line(text: str) -> str:
    """A command's output on one line, for a log or a message."""
    return "; ".join(line.strip() for line in text.strip().splitlines() if line.strip())
