"""throughput: many trivial jobs from several users, submitted as fast as possible."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import psutil

from bench.common import (
    SCRIPT,
    Context,
    SectionResult,
    StatusSampler,
    check_result_zip,
    check_status_body,
    cpu_breakdown,
    cpu_snapshot,
    is_zip,
    log,
    median,
    ms,
    processes,
    running_cluster,
    upload_form,
)
from bench.profiling import Profiler

THROUGHPUT_TARGET = 150.0
QUOTA = "64"


def throughput_jobs(default: int) -> int:
    """BENCH_THROUGHPUT_JOBS overrides the job count (1000 in a full run) without editing it."""
    raw = os.environ.get("BENCH_THROUGHPUT_JOBS")
    return int(raw) if raw else default


class _Counts:
    def __init__(self) -> None:
        self.polls = 0
        self.submitted_at: float | None = None
        self.turnaround: list[float] = []


async def _drive(
    base_url: str, jobs: int, users: int, concurrency: int, poll_s: float, script: str = SCRIPT
) -> tuple[float, float, _Counts]:
    """Returns (seconds until all downloaded, seconds until all submitted, counters)."""
    counts = _Counts()
    submitters = max(1, concurrency // 2)
    collectors = max(1, concurrency - submitters)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    pending: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    numbers = iter(range(jobs))
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=120, trust_env=False
    ) as http:

        async def submit() -> None:
            for number in numbers:  # shared iterator: each job is taken once
                started = time.perf_counter()
                response = await http.post(
                    "/upload",
                    files=[("file", ("run.sh", script))],
                    data=upload_form(number % users + 1),
                )
                if response.status_code != 201:
                    raise RuntimeError(f"upload answered {response.status_code}: {response.text}")
                pending.put_nowait((int(response.json()["id"]), started))

        async def collect() -> None:
            while (item := await pending.get()) is not None:
                job_id, started = item
                while True:
                    answer = await http.get(f"/download/{job_id}")
                    counts.polls += 1
                    if is_zip(answer):
                        check_result_zip(answer.content, job_id)
                        counts.turnaround.append(time.perf_counter() - started)
                        break
                    check_status_body(answer, job_id)
                    await asyncio.sleep(poll_s)

        started = time.perf_counter()
        collecting = [asyncio.create_task(collect()) for _ in range(collectors)]
        try:
            await asyncio.gather(*(submit() for _ in range(submitters)))
            submitted = time.perf_counter() - started
            for _ in collecting:
                pending.put_nowait(None)
            await asyncio.gather(*collecting)
        finally:
            for task in collecting:
                task.cancel()
            await asyncio.gather(*collecting, return_exceptions=True)
        return time.perf_counter() - started, submitted, counts


def store_work(base_url: str) -> tuple[dict[str, float], float]:
    """The server's store units of work per verb and its commits, from /metrics."""
    per_verb: dict[str, float] = {}
    commits = 0.0
    verb_prefix = 'job_orchestrator_store_operations_total{verb="'
    for line in httpx.get(f"{base_url}/metrics", timeout=30, trust_env=False).text.splitlines():
        if line.startswith(verb_prefix):
            labels, value = line.rsplit(" ", 1)
            per_verb[labels[len(verb_prefix) : -2]] = float(value)
        elif line.startswith("job_orchestrator_store_commits_total "):
            commits = float(line.split()[1])
    return per_verb, commits


def work_per_job(
    before: tuple[dict[str, float], float], after: tuple[dict[str, float], float], jobs: int
) -> str:
    """'12.1 units in 6.3 commits per job: transition 4.0, get_job 3.1, ...'."""
    per_verb = {verb: (count - before[0].get(verb, 0.0)) / jobs for verb, count in after[0].items()}
    units = sum(per_verb.values())
    listed = ", ".join(
        f"{verb} {count:.2f}"
        for verb, count in sorted(per_verb.items(), key=lambda item: -item[1])
        if count >= 0.005
    )
    commits = (after[1] - before[1]) / jobs
    return f"{units:.1f} units in {commits:.1f} commits per job: {listed}"


def throughput(ctx: Context) -> SectionResult:
    sizes = ctx.sizes
    jobs, users, concurrency = (
        throughput_jobs(sizes.throughput_jobs),
        sizes.throughput_users,
        sizes.throughput_concurrency,
    )
    result = SectionResult(
        "throughput",
        "Throughput: trivial jobs submitted as fast as possible, until all are downloaded",
        f"{jobs} jobs from {users} users (round-robin), SERVICE_EXAMPLE_MAX_RUNS="
        f"SERVICE_EXAMPLE_RUNS_PER_USER={QUOTA}, one client; asyncio + one httpx.AsyncClient "
        f"with {concurrency} connections: {concurrency // 2} tasks upload, the others take the "
        f"ids in submission order and poll /download/{{id}} every "
        f"{sizes.throughput_poll_s * 1000:g} ms until the ZIP arrives (output.txt checked)",
    )
    env = {"SERVICE_EXAMPLE_MAX_RUNS": QUOTA, "SERVICE_EXAMPLE_RUNS_PER_USER": QUOTA}
    log(f"throughput: {jobs} jobs from {users} users, concurrency {concurrency}")
    with running_cluster(ctx.workdir / "throughput", server_env=env) as running:
        procs = processes(running)
        # Warm-up: one job end to end, so imports and connection set-up are not timed.
        asyncio.run(_drive(running.api.base_url, 1, 1, 2, sizes.throughput_poll_s))
        with_driver = {**procs, "bench driver": psutil.Process()}
        before = cpu_snapshot(with_driver)
        work_before = store_work(running.api.base_url)
        db_path = Path(running.server.env["DB_PATH"]) if running.server else Path()
        with StatusSampler(db_path) as statuses, Profiler(ctx.profile_dir, "throughput", procs):
            elapsed, submitted, counts = asyncio.run(
                _drive(running.api.base_url, jobs, users, concurrency, sizes.throughput_poll_s)
            )
        after = cpu_snapshot(with_driver)
        work_after = store_work(running.api.base_url)
    rate = jobs / elapsed
    ctx.figures["throughput"] = rate
    result.add("jobs/s (first upload -> last ZIP downloaded)", f"{rate:.1f}")
    result.add("wall time", f"{elapsed:.2f} s")
    result.add("uploads/s (all submitted after)", f"{jobs / submitted:.1f} ({submitted:.2f} s)")
    result.add("job turnaround (upload start -> ZIP) p50", ms(median(counts.turnaround)))
    result.add("job turnaround max", ms(max(counts.turnaround)))
    result.add("polls of /download", f"{counts.polls} ({counts.polls / jobs:.1f} per job)")
    result.add("CPU per job", cpu_breakdown(before, after, jobs))
    result.add("server store work per job", work_per_job(work_before, work_after, jobs))
    result.add(
        "server jobs by status, mean over the run (sampled every 250 ms)",
        statuses.summary(["queued", "processing", "submitted", "prepared", "running"]),
    )
    result.target(
        f"throughput >= {THROUGHPUT_TARGET:g} jobs/s",
        f"{rate:.1f} jobs/s",
        rate >= THROUGHPUT_TARGET,
    )
    return result
