"""floor: bare `bash run.sh`; latency: one job at a time through the real server and client."""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from bench.common import (
    EXPECTED_OUTPUT,
    SCRIPT,
    Context,
    SectionResult,
    check_result_zip,
    check_status_body,
    cpu_breakdown,
    cpu_snapshot,
    http_client,
    is_zip,
    log,
    median,
    ms,
    percentile,
    processes,
    retrieve_calls,
    running_cluster,
    upload_form,
)
from bench.profiling import Profiler

LATENCY_TARGET_RATIO = 10.0
WAIT_LATENCY_TARGET_RATIO = 5.0
#: The `?wait=` of the wait-API variant: the server's cap, so one request per job.
WAIT_S = 60


def floor(ctx: Context) -> SectionResult:
    runs = ctx.sizes.floor_runs
    result = SectionResult(
        "floor",
        "Floor: bare `bash run.sh` from Python",
        f"subprocess.run(['bash', 'run.sh']) in a fresh temp dir, then output.txt read; "
        f"{runs} runs after 3 warm-ups; the run.sh of every latency figure: `{SCRIPT.strip()}`",
    )
    log(f"floor: {runs} runs of bash run.sh")
    durations = []
    for index in range(runs + 3):
        with tempfile.TemporaryDirectory(dir=ctx.workdir) as scratch:
            directory = Path(scratch)
            (directory / "run.sh").write_text(SCRIPT)
            started = time.perf_counter()
            subprocess.run(["bash", "run.sh"], cwd=directory, check=True)
            output = (directory / "output.txt").read_bytes()
            elapsed = time.perf_counter() - started
        if output != EXPECTED_OUTPUT:
            raise RuntimeError(f"unexpected output.txt {output!r}")
        if index >= 3:
            durations.append(elapsed)
    ctx.floor_p50_s = median(durations)
    result.add("p50", ms(ctx.floor_p50_s))
    result.add("p90", ms(percentile(durations, 90)))
    result.add("max", ms(max(durations)))
    return result


def latency(ctx: Context) -> SectionResult:
    sizes = ctx.sizes
    result = SectionResult(
        "latency",
        "Latency: one job at a time, upload -> ZIP downloaded -> output.txt read",
        f"{sizes.latency_jobs} jobs after {sizes.latency_warmup} warm-ups, default server "
        f"settings, one client; completion detected by polling GET /download/{{id}} every "
        f"{sizes.latency_poll_s * 1000:g} ms with one persistent httpx.Client; then as many "
        f"jobs in the same cluster waiting with GET /download/{{id}}?wait={WAIT_S} instead",
    )
    if ctx.floor_p50_s is None:
        raise RuntimeError("the floor must be measured first")
    log(f"latency: {sizes.latency_jobs} jobs one at a time")
    jobs: list[_Job] = []
    with (
        running_cluster(ctx.workdir / "latency") as running,
        http_client(running.api.base_url) as http,
    ):
        procs = processes(running)
        for _ in range(sizes.latency_warmup):
            _one_job(http, sizes.latency_poll_s)
        before = cpu_snapshot({**procs, "bench driver": psutil.Process()})
        retrieves = retrieve_calls(running)
        with Profiler(ctx.profile_dir, "latency", procs):
            jobs = [_one_job(http, sizes.latency_poll_s) for _ in range(sizes.latency_jobs)]
        after = cpu_snapshot({**procs, "bench driver": psutil.Process()})
        retrieves = retrieve_calls(running) - retrieves
        poll_cost = _poll_cost(http, procs["server"])
        _one_job_waiting(http)
        wait_before = cpu_snapshot({**procs, "bench driver": psutil.Process()})
        waited = [_one_job_waiting(http) for _ in range(sizes.latency_jobs)]
        wait_after = cpu_snapshot({**procs, "bench driver": psutil.Process()})
    totals = [job.total for job in jobs]
    polls = [job.polls for job in jobs]
    p50 = median(totals)
    ratio = p50 / ctx.floor_p50_s
    result.add("p50", ms(p50))
    result.add("p90", ms(percentile(totals, 90)))
    result.add("max", ms(max(totals)))
    result.add("p50 / floor p50", f"{ratio:.1f}x (floor p50 {ms(ctx.floor_p50_s)})")
    result.add("upload (POST /upload -> 201) p50", ms(median([job.upload for job in jobs])))
    result.add("201 -> ZIP received and read p50", ms(median([job.wait for job in jobs])))
    result.add("status first seen after the 201, p50 (jobs where it was seen)", _timeline(jobs))
    result.add(
        "polls of /download per job",
        f"p50 {median(polls):.0f}, max {max(polls)} (one every {sizes.latency_poll_s * 1000:g} ms)",
    )
    result.add("CPU per job", cpu_breakdown(before, after, len(totals)))
    result.add("server -> client /retrieve calls per job", f"{retrieves / len(totals):.2f}")
    result.add("one status poll alone (GET /download of an unknown id, 200 times)", poll_cost)
    wait_totals = [job.total for job in waited]
    wait_p50 = median(wait_totals)
    wait_ratio = wait_p50 / ctx.floor_p50_s
    ctx.figures.update(p50=p50, wait_p50=wait_p50)
    result.add("with the wait API: p50", ms(wait_p50))
    result.add("with the wait API: p90", ms(percentile(wait_totals, 90)))
    result.add("with the wait API: max", ms(max(wait_totals)))
    result.add("with the wait API: p50 / floor p50", f"{wait_ratio:.1f}x")
    result.add(
        "with the wait API: requests of /download per job",
        f"p50 {median([job.polls for job in waited]):.0f}, max {max(job.polls for job in waited)}",
    )
    result.add(
        "with the wait API: CPU per job", cpu_breakdown(wait_before, wait_after, len(waited))
    )
    result.target(
        f"latency p50 <= {LATENCY_TARGET_RATIO:g}x floor p50",
        f"{ms(p50)} = {ratio:.1f}x {ms(ctx.floor_p50_s)}",
        ratio <= LATENCY_TARGET_RATIO,
    )
    result.target(
        f"latency p50 with the wait API <= {WAIT_LATENCY_TARGET_RATIO:g}x floor p50",
        f"{ms(wait_p50)} = {wait_ratio:.1f}x {ms(ctx.floor_p50_s)}",
        wait_ratio <= WAIT_LATENCY_TARGET_RATIO,
    )
    return result


@dataclass
class _Job:
    total: float
    upload: float
    wait: float
    polls: int
    #: When each status was first seen by a poll, in seconds after the 201.
    seen: dict[str, float] = field(default_factory=dict)


def _one_job(http: httpx.Client, poll_s: float, script: str = SCRIPT) -> _Job:
    started = time.perf_counter()
    response = http.post("/upload", files=[("file", ("run.sh", script))], data=upload_form(1))
    if response.status_code != 201:
        raise RuntimeError(f"upload answered {response.status_code}: {response.text}")
    job_id = int(response.json()["id"])
    uploaded = time.perf_counter()
    polls = 0
    seen: dict[str, float] = {}
    while True:
        answer = http.get(f"/download/{job_id}")
        polls += 1
        if is_zip(answer):
            check_result_zip(answer.content, job_id)
            break
        seen.setdefault(check_status_body(answer, job_id), time.perf_counter() - uploaded)
        time.sleep(poll_s)
    done = time.perf_counter()
    seen["Completed (ZIP read)"] = done - uploaded
    return _Job(done - started, uploaded - started, done - uploaded, polls, seen)


def _one_job_waiting(http: httpx.Client) -> _Job:
    """One job whose completion is awaited with `?wait=` instead of polling."""
    started = time.perf_counter()
    response = http.post("/upload", files=[("file", ("run.sh", SCRIPT))], data=upload_form(1))
    if response.status_code != 201:
        raise RuntimeError(f"upload answered {response.status_code}: {response.text}")
    job_id = int(response.json()["id"])
    uploaded = time.perf_counter()
    requests = 0
    while True:
        answer = http.get(f"/download/{job_id}", params={"wait": WAIT_S})
        requests += 1
        if is_zip(answer):
            check_result_zip(answer.content, job_id)
            break
        check_status_body(answer, job_id)  # the cap passed (or the job can never complete)
    done = time.perf_counter()
    return _Job(done - started, uploaded - started, done - uploaded, requests)


def _poll_cost(http: httpx.Client, server: psutil.Process, count: int = 200) -> str:
    """What one poll costs the server: the price of the polling method itself."""
    times = server.cpu_times()
    cpu_before = times.user + times.system
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        http.get("/download/4000000000")
        durations.append(time.perf_counter() - started)
    times = server.cpu_times()
    cpu = (times.user + times.system - cpu_before) / count
    return f"p50 {ms(median(durations))} round trip, {ms(cpu)} server CPU each"


def _timeline(jobs: list[_Job]) -> str:
    """Median time after the 201 at which each status was first seen (when it was seen)."""
    order = ["Queued", "Processing", "Submitted", "Prepared", "Running", "Completed (ZIP read)"]
    parts = []
    for status in order:
        stamps = [job.seen[status] for job in jobs if status in job.seen]
        if stamps:
            parts.append(f"{status} +{ms(median(stamps))} ({len(stamps)}/{len(jobs)})")
    return ", ".join(parts)
