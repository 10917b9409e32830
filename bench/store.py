"""store: the SQLite store's own CPU per job, in this process, without HTTP or a client.

Each job makes the store calls the server makes for a trivial job in the throughput case
(upload, claim, hand-over, Running, Completed, six status reads), plus a dispatch decision
and its retry look-up every fourth job; from 64 coroutines at once (the throughput case's
load) and from one (the latency case's). CPU is this process's (the event loop and the store
thread together), so it is steadier than the throughput case's server figure on a busy
machine.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.common import Context, SectionResult, log
from job_orchestrator.server.scheduler import NodeSlot, Placement, ServiceLimits
from job_orchestrator.server.storage import SqlStore, open_store
from job_orchestrator.server.storage.changes import JobChanges
from job_orchestrator.status import ON_CLIENT, Status

SERVICE = "example"
LIMITS = {SERVICE: ServiceLimits(runs_per_user=64, max_runs=64)}
PLACEMENTS = {SERVICE: Placement((NodeSlot("http://node", None, 0.0),))}
STATUS_READS = 6


async def _job(store: SqlStore, number: int) -> None:
    job_id = await store.create_job(user_id=number % 10 + 1, service=SERVICE, loc=f"/x/{number}")
    await store.claim([job_id], {job_id: "http://node"}, owner="bench")
    await store.transition_returning(
        job_id,
        [Status.PROCESSING],
        Status.SUBMITTED,
        changes=JobChanges(dest_id=number + 1, message=""),
    )
    await store.transition(
        job_id, ON_CLIENT, Status.RUNNING, changes=JobChanges(started_at=time.time())
    )
    await store.transition(
        job_id, ON_CLIENT, Status.COMPLETED, changes=JobChanges(message="", exit_code=0)
    )
    for _ in range(STATUS_READS):
        await store.get_job(job_id)
    if number % 4 == 0:
        await store.claim_dispatchable(LIMITS, time.time(), PLACEMENTS)
        await store.next_retry_at()


async def _measure(db_path: Path, jobs: int, lanes: int) -> tuple[float, float, float, float]:
    """(CPU s per job, wall s per job, units of work per job, commits per job)."""
    store = await open_store(str(db_path))
    try:
        numbers = iter(range(jobs))

        async def lane() -> None:
            for number in numbers:  # shared: each job is taken once
                await _job(store, number)

        per_verb, commits = store.work_counts()
        units_before, commits_before = sum(per_verb.values()), commits
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(lanes)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        per_verb, commits = store.work_counts()
        units = sum(per_verb.values()) - units_before
        return cpu / jobs, wall / jobs, units / jobs, (commits - commits_before) / jobs
    finally:
        await store.close()


def store(ctx: Context) -> SectionResult:
    jobs = ctx.sizes.store_jobs
    result = SectionResult(
        "store",
        "Store: CPU per job of the SQLite store alone",
        f"{jobs} jobs, each: create_job, claim, transition_returning (Submitted), transition "
        f"(Running), transition (Completed), {STATUS_READS} get_job; every 4th job also "
        "claim_dispatchable + next_retry_at; in this process (no HTTP), a fresh database each",
    )
    for lanes in (64, 1):
        log(f"store: {jobs} jobs from {lanes} coroutine(s)")
        cpu, wall, units, commits = asyncio.run(
            _measure(ctx.workdir / f"store-{lanes}.sqlite", jobs, lanes)
        )
        result.add(
            f"{lanes} at once: CPU per job (loop + store thread)",
            f"{cpu * 1000:.2f} ms ({wall * 1000:.2f} ms wall; {units:.1f} units of work in "
            f"{commits:.2f} commits per job)",
        )
    return result
