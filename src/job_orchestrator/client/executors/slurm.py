"""Runs payloads as Slurm batch jobs (EXECUTOR=slurm): one `sbatch` per payload.

The batch script is the same wrapper the local executor runs (client/sandbox.py), so run.sh's
exit status reaches `exit/code` in the payload directory, which must be on a filesystem the
compute nodes share with this client. The batch job writes it with the client's own uid (no
JOB_USER with Slurm), so run.sh could replace it: `recorded_exit_code` reads it without
following links, a few bytes at most, in a thread. Slurm writes run.sh's stdout and stderr,
interleaved, to the payload's output.log (`--output` without `--error`), the file
client/logs.py serves.

All of this client's jobs are tracked together: one `squeue` per tick (SLURM_POLL_INTERVAL)
for every job id, and one `sacct` for those squeue no longer knows (ended longer ago than
MinJobAge, e.g. while the client was down); no call at all while no job is in Slurm.
Without slurmdbd, sacct reads the job-completion log (`sacct --completion`,
JobCompType=jobcomp/filetxt). A controller that does not answer is waited for: the jobs
keep their last known state. The commands themselves, and how their answers are read, are
slurm_commands.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from prometheus_client import Counter

from job_orchestrator.client.executors.base import Handle, LaunchUnavailableError, Outcome
from job_orchestrator.client.executors.slurm_commands import (
    Cpus,
    SlurmCommands,
    SlurmUnreachableError,
    one_line,
)
from job_orchestrator.client.executors.slurm_states import (
    ENDED,
    RUNNING,
    base_state,
    outcome_for,
    sacct_exit_code,
)
from job_orchestrator.client.payload import Payload
from job_orchestrator.client.sandbox import command_for, private_tmp, recorded_exit_code
from job_orchestrator.config import ClientSettings

logger = logging.getLogger(__name__)

KIND = "slurm"
#: How long a sinfo answer serves /load and /health.
CLUSTER_CACHE_S = 2.0
BATCH_SCRIPT = "slurm-job.sh"


@dataclass
class _Job:
    payload: Payload
    state: str = "PENDING"
    started: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float | None = None
    ended: asyncio.Future[Outcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class SlurmExecutor:
    kind = KIND
    runs_at_launch = False
    log_is_local = False

    def __init__(self, settings: ClientSettings, calls: Counter | None = None) -> None:
        self.settings = settings
        self.slurm = SlurmCommands(settings, calls)
        self._jobs: dict[int, _Job] = {}
        self._wake = asyncio.Event()
        self._tracker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[bool]] = set()
        #: Payloads whose sbatch found no controller: their next try needs no look-up.
        self._retrying: set[int] = set()
        self._unreachable_logged = False
        self._cpus: Cpus | None = None
        self._cpus_at = 0.0
        self._cpus_refresh: asyncio.Task[None] | None = None

    # ---- launch ----------------------------------------------------------------------------

    async def launch(self, payload: Payload) -> Handle:
        paths = payload.paths
        private_tmp(self.settings, paths.tmp)
        wrapper = command_for(self.settings, paths.work, paths.exit_code, paths.tmp, None)
        script = paths.root / BATCH_SCRIPT
        relaunch = script.exists() and payload.id not in self._retrying
        if relaunch and (earlier := await self.slurm.job_of(payload)) is not None:
            # The client stopped between sbatch's answer and the state file: same job.
            logger.info("payload %d is already Slurm job %d", payload.id, earlier)
            handle = Handle(KIND, earlier)
            self._track(payload, handle)
            return handle
        script.write_text(f"#!/bin/bash\nexec {shlex.join(wrapper)}\n")
        self._retrying.discard(payload.id)
        try:
            job_id = await self.slurm.sbatch(payload, script)
        except LaunchUnavailableError:
            self._retrying.add(payload.id)
            raise
        logger.info(
            "payload %d submitted as Slurm job %d",
            payload.id,
            job_id,
            extra={"payload_id": payload.id, "slurm_job_id": job_id},
        )
        handle = Handle(KIND, job_id)
        self._track(payload, handle)
        return handle

    # ---- observe ---------------------------------------------------------------------------

    def _track(self, payload: Payload, handle: Handle) -> _Job:
        job = self._jobs.get(handle.id)
        if job is None:
            job = self._jobs[handle.id] = _Job(payload)
            job.ended.add_done_callback(lambda _: self._jobs.pop(handle.id, None))
        if self._tracker is None or self._tracker.done():
            self._tracker = asyncio.create_task(self._track_loop(), name="slurm_track_loop")
        self._wake.set()
        return job

    def reattach(self, payload: Payload, handle: Handle) -> bool:
        self._track(payload, handle)
        return True

    async def started(self, handle: Handle) -> float:
        job = self._jobs.get(handle.id)
        if job is None:
            return time.time()
        await job.started.wait()
        return job.started_at or time.time()

    async def wait(self, payload: Payload, handle: Handle) -> Outcome:
        return await asyncio.shield(self._track(payload, handle).ended)

    async def _track_loop(self) -> None:
        while self._jobs:
            self._wake.clear()
            try:
                await self.poll_once()
            except Exception:  # a bad answer must not stop the tracking of every job
                logger.exception("tracking the Slurm jobs failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.slurm.poll_interval_s)

    async def poll_once(self) -> None:
        """One squeue for every tracked job; one sacct for those squeue forgot."""
        ids = sorted(self._jobs)
        if not ids:
            return
        try:
            seen = await self.slurm.queue_states(ids)
        except SlurmUnreachableError as error:
            self._log_unreachable(str(error))
            return
        self._unreachable_logged = False
        for job_id, (state, reason) in seen.items():
            if job_id in self._jobs:
                await self._observe(job_id, state, reason, None)
        forgotten = [job_id for job_id in ids if job_id not in seen]
        if forgotten:
            await self._settle_forgotten(forgotten)

    async def _observe(self, job_id: int, state: str, reason: str, exit_code: int | None) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            return
        kind = base_state(state)
        job.state = kind
        if (kind in RUNNING or kind in ENDED) and not job.started.is_set():
            job.started_at = time.time()
            job.started.set()
        if kind in ENDED and not job.ended.done():
            recorded = await recorded_exit_code(job.payload.paths.exit_code)
            if job.ended.done():
                return
            job.ended.set_result(
                outcome_for(state, reason, recorded if recorded is not None else exit_code)
            )
            logger.info(
                "Slurm job %d ended: %s",
                job_id,
                state,
                extra={"payload_id": job.payload.id, "slurm_job_id": job_id},
            )

    async def _settle_forgotten(self, job_ids: list[int]) -> None:
        """Jobs squeue no longer lists ended long ago: sacct has their end."""
        found = await self.slurm.accounting(job_ids)
        for job_id in job_ids:
            if job_id in found:
                state, reason, exit_text = found[job_id]
                await self._observe(job_id, state, reason, sacct_exit_code(exit_text))
                continue
            job = self._jobs.get(job_id)
            if job is None or job.ended.done():
                continue
            # Neither squeue nor sacct knows it: all that is left is what the wrapper wrote.
            recorded = await recorded_exit_code(job.payload.paths.exit_code)
            if job.ended.done():
                continue
            job.started.set()
            job.ended.set_result(
                Outcome(recorded)
                if recorded is not None
                else Outcome(None, f"Slurm job {job_id} is unknown to squeue and sacct")
            )

    # ---- terminate -------------------------------------------------------------------------

    async def terminate(self, handle: Handle, grace_s: float) -> None:
        """SIGTERM to every process of the job, SIGKILL after the grace, then cancel it.

        A controller that does not answer is asked again until it does (or the job ended).
        """
        job = self._jobs.get(handle.id)
        if job is not None and job.ended.done():
            return
        if job is None or job.state not in RUNNING:
            # Not running yet (or not tracked): nothing to signal, just take it out.
            await self._scancel_until_delivered(handle.id, job)
            return
        await self._scancel_until_delivered(handle.id, job, "--signal=TERM", "--full")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(job.ended), grace_s)
            return
        await self._scancel_until_delivered(handle.id, job, "--signal=KILL", "--full")
        await self._scancel(handle.id)

    async def _scancel_until_delivered(self, job_id: int, job: _Job | None, *options: str) -> None:
        while not await self._scancel(job_id, *options):
            if job is None or job.ended.done():
                return
            await asyncio.sleep(self.settings.slurm.poll_interval_s)

    async def _scancel(self, job_id: int, *options: str) -> bool:
        delivered = await self.slurm.scancel(job_id, *options)
        self._wake.set()
        return delivered

    def find_launched(self, payload: Payload) -> Handle | None:
        return None  # launch() itself finds an earlier batch job of the payload (squeue)

    def abandon(self, handle: Handle) -> None:
        task = asyncio.create_task(self._scancel(handle.id), name=f"scancel-{handle.id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- the cluster -----------------------------------------------------------------------

    async def remove_strays(self, keep: Collection[int]) -> None:
        return None  # nothing outlives a payload here but its own directory

    async def load_percent(self) -> float:
        cpus = await self._cluster_cpus()
        if cpus is None or cpus.total == 0:
            return 0.0
        return 100.0 * cpus.allocated / cpus.total

    async def capacity(self, running: int, pending: int) -> int | None:
        """Our running jobs plus the CPUs still free for more (at least 1: never unlimited)."""
        cpus = await self._cluster_cpus()
        if cpus is None:
            return self.settings.max_concurrent
        return max(1, running + max(0, cpus.idle - pending))

    async def _cluster_cpus(self) -> Cpus | None:
        """sinfo's CPU counts, at most CLUSTER_CACHE_S old; never waits on a slow controller."""
        stale = time.monotonic() - self._cpus_at > CLUSTER_CACHE_S
        if stale and (self._cpus_refresh is None or self._cpus_refresh.done()):
            self._cpus_refresh = asyncio.create_task(self._refresh_cpus(), name="slurm_sinfo")
        if self._cpus is None and self._cpus_refresh is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._cpus_refresh), 2.0)
        return self._cpus

    async def _refresh_cpus(self) -> None:
        try:
            self._cpus = await self.slurm.cluster_cpus()
        except SlurmUnreachableError as error:
            self._log_unreachable(str(error))
            return
        self._cpus_at = time.monotonic()

    # ---- plumbing --------------------------------------------------------------------------

    def _log_unreachable(self, err: str) -> None:
        if not self._unreachable_logged:
            logger.warning("Slurm does not answer (jobs keep their state): %s", one_line(err))
            self._unreachable_logged = True

    async def close(self) -> None:
        tasks = [task for task in (self._tracker, self._cpus_refresh) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._background, return_exceptions=True)
