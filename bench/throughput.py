"""throughput: many trivial jobs from several users, submitted as fast as possible."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

from bench.common import (
    SCRIPT,
    SERVICE,
    Context,
    SectionResult,
    StatusSampler,
    check_result_zip,
    check_status,
    cpu_breakdown,
    cpu_snapshot,
    log,
    median,
    ms,
    processes,
    retrieve_calls,
    running_cluster,
    store_work,
)
from bench.profiling import Profiler
from testkit.harness import Cluster

THROUGHPUT_TARGET = 150.0
SERVER_CPU_TARGET_S = 0.008
CLIENT_CPU_TARGET_S = 0.005
#: The wait variant's `?wait=`: longer than any trivial job's turnaround under load.
WAIT_S = 60.0
QUOTA = "64"


def throughput_jobs(default: int) -> int:
    """BENCH_THROUGHPUT_JOBS overrides the job count (1000 in a full run) without editing it."""
    raw = os.environ.get("BENCH_THROUGHPUT_JOBS")
    return int(raw) if raw else default


class Counts:
    def __init__(self) -> None:
        self.polls = 0
        self.turnaround: list[float] = []
        #: Seconds each upload took, request to answer.
        self.uploads: list[float] = []


async def drive(
    urls: str | list[str],
    jobs: int,
    users: int,
    concurrency: int,
    poll_s: float,
    script: str = SCRIPT,
    *,
    wait_s: float | None = None,
) -> tuple[float, float, Counts]:
    """Returns (seconds until all downloaded, seconds until all submitted, counters).

    Job i is uploaded on urls[i % n] and collected from the next one (with replicas, every
    job crosses them). Collectors poll /download/{id} every `poll_s`, or, with `wait_s`,
    hold each request with `?wait=` until the job is final. The driver is aiohttp: it is
    the portal's side, and httpx's pool cost this process 5x the CPU per job (12 ms), taken from
    the same two cores as the system measured.
    """
    urls = [urls] if isinstance(urls, str) else urls
    counts = Counts()
    submitters = max(1, concurrency // 2)
    collectors = max(1, concurrency - submitters)
    pending: asyncio.Queue[tuple[int, int, float] | None] = asyncio.Queue()
    numbers = iter(range(jobs))
    params = {"wait": f"{wait_s:g}"} if wait_s else {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def submit() -> None:
            for number in numbers:  # shared iterator: each job is taken once
                started = time.perf_counter()
                on = number % len(urls)
                form = aiohttp.FormData()
                form.add_field("user_id", str(number % users + 1))
                form.add_field("service", SERVICE)
                form.add_field("file", script.encode(), filename="run.sh")
                async with http.post(f"{urls[on]}/upload", data=form) as response:
                    body = await response.read()
                if response.status != 201:
                    raise RuntimeError(f"upload answered {response.status}: {body!r}")
                counts.uploads.append(time.perf_counter() - started)
                pending.put_nowait((int(json.loads(body)["id"]), on, started))

        async def collect() -> None:
            while (item := await pending.get()) is not None:
                job_id, on, started = item
                url = f"{urls[(on + 1) % len(urls)]}/download/{job_id}"
                while True:
                    async with http.get(url, params=params) as answer:
                        body = await answer.read()
                    counts.polls += 1
                    if answer.content_type == "application/zip":
                        check_result_zip(body, job_id)
                        counts.turnaround.append(time.perf_counter() - started)
                        break
                    check_status(answer.status, body, job_id)
                    if not params:
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


@dataclass(frozen=True)
class _Run:
    elapsed_s: float
    submitted_s: float
    counts: Counts
    cpu: str
    #: CPU seconds per job of the server and of the client process (not its job scripts).
    server_cpu_s: float
    client_cpu_s: float
    statuses: str
    #: Server -> client /retrieve calls per job.
    retrieves: float
    #: The server's store units of work and commits per job.
    store_work: str


def _run(running: Cluster, ctx: Context, jobs: int, wait_s: float | None, label: str) -> _Run:
    sizes = ctx.sizes
    procs = processes(running)
    with_driver = {**procs, "bench driver": psutil.Process()}
    before = cpu_snapshot(with_driver)
    retrieves = retrieve_calls(running)
    work_before = store_work(running)
    db_path = Path(running.server.env["DB_PATH"]) if running.server else Path()
    with StatusSampler(db_path) as statuses, Profiler(ctx.profile_dir, label, procs):
        elapsed, submitted, counts = asyncio.run(
            drive(
                running.api.base_url,
                jobs,
                sizes.throughput_users,
                sizes.throughput_concurrency,
                sizes.throughput_poll_s,
                wait_s=wait_s,
            )
        )
    after = cpu_snapshot(with_driver)
    retrieves = retrieve_calls(running) - retrieves
    work = work_per_job(work_before, store_work(running), jobs)
    return _Run(
        elapsed,
        submitted,
        counts,
        cpu_breakdown(before, after, jobs),
        (after.own["server"] - before.own["server"]) / jobs,
        (after.own["client"] - before.own["client"]) / jobs,
        statuses.summary(["queued", "processing", "submitted", "prepared", "running"]),
        retrieves / jobs,
        work,
    )


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
        f"SERVICE_EXAMPLE_RUNS_PER_USER={QUOTA}, one client; asyncio + one aiohttp.ClientSession "
        f"with {concurrency} connections: {concurrency // 2} tasks upload, the others take the "
        f"ids in submission order and poll /download/{{id}} every "
        f"{sizes.throughput_poll_s * 1000:g} ms until the ZIP arrives (output.txt checked); "
        f"then as many jobs again in the same cluster, collected with "
        f"/download/{{id}}?wait={WAIT_S:g} instead of polling",
    )
    env = {"SERVICE_EXAMPLE_MAX_RUNS": QUOTA, "SERVICE_EXAMPLE_RUNS_PER_USER": QUOTA}
    log(f"throughput: {jobs} jobs from {users} users, concurrency {concurrency}")
    with running_cluster(ctx.workdir / "throughput", server_env=env) as running:
        # Warm-up: one job end to end, so imports and connection set-up are not timed.
        asyncio.run(drive(running.api.base_url, 1, 1, 2, sizes.throughput_poll_s))
        polled = _run(running, ctx, jobs, None, "throughput")
        log(f"throughput: {jobs} jobs again, collected with the wait API")
        waited = _run(running, ctx, jobs, WAIT_S, "throughput-wait")
    for prefix, run in (("", polled), ("with the wait API: ", waited)):
        rate = jobs / run.elapsed_s
        result.add(f"{prefix}jobs/s (first upload -> last ZIP downloaded)", f"{rate:.1f}")
        result.add(f"{prefix}wall time", f"{run.elapsed_s:.2f} s")
        result.add(
            f"{prefix}uploads/s (all submitted after)",
            f"{jobs / run.submitted_s:.1f} ({run.submitted_s:.2f} s)",
        )
        result.add(
            f"{prefix}job turnaround (upload start -> ZIP) p50", ms(median(run.counts.turnaround))
        )
        result.add(f"{prefix}job turnaround max", ms(max(run.counts.turnaround)))
        result.add(
            f"{prefix}requests of /download",
            f"{run.counts.polls} ({run.counts.polls / jobs:.1f} per job)",
        )
        result.add(f"{prefix}CPU per job", run.cpu)
        result.add(f"{prefix}server -> client /retrieve calls per job", f"{run.retrieves:.2f}")
        result.add(f"{prefix}server store work per job", run.store_work)
        result.add(
            f"{prefix}server jobs by status, mean over the run (sampled every 250 ms)",
            run.statuses,
        )
    ctx.figures["throughput"] = jobs / polled.elapsed_s
    for how, run in (("polling every 20 ms", polled), ("wait API", waited)):
        rate = jobs / run.elapsed_s
        result.target(
            f"throughput >= {THROUGHPUT_TARGET:g} jobs/s ({how})",
            f"{rate:.1f} jobs/s",
            rate >= THROUGHPUT_TARGET,
        )
        result.target(
            f"server CPU per trivial job <= {SERVER_CPU_TARGET_S * 1000:g} ms ({how})",
            ms(run.server_cpu_s),
            run.server_cpu_s <= SERVER_CPU_TARGET_S,
        )
        result.target(
            f"client CPU per trivial job <= {CLIENT_CPU_TARGET_S * 1000:g} ms ({how})",
            ms(run.client_cpu_s),
            run.client_cpu_s <= CLIENT_CPU_TARGET_S,
        )
    return result
