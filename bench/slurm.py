"""slurm: trivial jobs through our stack on Slurm (EXECUTOR=slurm) against bare sbatch.

Both sides run in the same run, on the same one-node Slurm that `scripts/setup-slurm`
brings up (tuned scheduler settings, one CPU per job, as many jobs at once as the node has
CPUs). The baseline is what a portal would do without us: `sbatch` the script, then poll
`squeue` until the job has ended, then read output.txt.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import (
    EXPECTED_OUTPUT,
    SCRIPT,
    Context,
    SectionResult,
    log,
    median,
    ms,
    percentile,
    running_cluster,
    upload_latencies,
)
from bench.throughput import drive

ROOT = Path(__file__).resolve().parents[1]
#: How often each side looks: squeue for the baseline, /download for ours.
LATENCY_POLL_S = 0.01
THROUGHPUT_POLL_S = 0.05
#: Our client's squeue tick: the default, and a faster one.
TICKS_S = (0.5, 0.1)
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


def _sizes(ctx: Context) -> tuple[int, int]:
    """(latency jobs, throughput jobs)."""
    return (3, 10) if ctx.quick else (20, 100)


def _squeue_states(job_ids: list[int]) -> dict[int, str]:
    done = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", ",".join(map(str, job_ids)), "-o", "%i|%T"],
        capture_output=True,
        text=True,
        check=False,
    )
    states = {}
    for line in done.stdout.split():
        job_id, _, state = line.partition("|")
        if job_id.isdigit():
            states[int(job_id)] = state
    return states


def _bare_submit(workdir: Path) -> tuple[Path, int]:
    directory = Path(tempfile.mkdtemp(dir=workdir))
    (directory / "run.sh").write_text(SCRIPT)
    done = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--chdir={directory}",
            "--job-name=bench-bare",
            f"--output={directory}/slurm.out",
            "--wrap=bash run.sh",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return directory, int(done.stdout.strip().split(";")[0])


def _bare_wait(jobs: dict[int, Path], poll_s: float) -> None:
    """Poll squeue (one call for all) until every job ended; check each output.txt."""
    left = dict(jobs)
    while left:
        for job_id, state in _squeue_states(sorted(left)).items():
            if state in ENDED:
                if state != "COMPLETED":
                    raise RuntimeError(f"bare Slurm job {job_id} ended {state}")
                output = (left.pop(job_id) / "output.txt").read_bytes()
                if output != EXPECTED_OUTPUT:
                    raise RuntimeError(f"bare Slurm job {job_id}: output.txt {output!r}")
        if left:
            time.sleep(poll_s)


def _bare_latency(workdir: Path, jobs: int) -> list[float]:
    durations = []
    for index in range(jobs + 1):
        started = time.perf_counter()
        directory, job_id = _bare_submit(workdir)
        _bare_wait({job_id: directory}, LATENCY_POLL_S)
        if index:  # the first one warms up
            durations.append(time.perf_counter() - started)
    return durations


def _bare_throughput(workdir: Path, jobs: int) -> float:
    started = time.perf_counter()
    submitted = dict(reversed(_bare_submit(workdir)) for _ in range(jobs))
    _bare_wait(submitted, THROUGHPUT_POLL_S)
    return time.perf_counter() - started


def _slurm_calls(client_url: str) -> dict[str, float]:
    """The client's job_orchestrator_client_slurm_calls_total, by command."""
    prefix = 'job_orchestrator_client_slurm_calls_total{command="'
    calls = {}
    for line in httpx.get(f"{client_url}/metrics", timeout=30).text.splitlines():
        if line.startswith(prefix):
            name, _, value = line[len(prefix) :].partition('"} ')
            calls[name] = float(value)
    return calls


def _slurm_ready() -> str | None:
    if os.geteuid() != 0:
        return "scripts/setup-slurm needs root"
    done = subprocess.run(
        [str(ROOT / "scripts" / "setup-slurm")], capture_output=True, text=True, check=False
    )
    if done.returncode == 0:
        return None
    said = (done.stderr.strip() + "\n" + done.stdout.strip()).strip() or "nothing printed"
    return f"scripts/setup-slurm failed (exit {done.returncode}): {said}"


def slurm(ctx: Context) -> SectionResult:
    latency_jobs, throughput_jobs = _sizes(ctx)
    result = SectionResult(
        "slurm",
        "Slurm: trivial jobs through our stack (EXECUTOR=slurm) against bare sbatch + squeue",
        f"one-node Slurm from scripts/setup-slurm (tuned scheduler, 1 CPU per job); latency: "
        f"{latency_jobs} jobs one at a time after a warm-up, completion polled every "
        f"{LATENCY_POLL_S * 1000:g} ms (bare: squeue; ours: GET /download until the ZIP); "
        f"throughput: {throughput_jobs} jobs submitted at once, polled every "
        f"{THROUGHPUT_POLL_S * 1000:g} ms (bare: one squeue for all; ours: the throughput "
        f"case's driver); the run.sh: `{SCRIPT.strip()}`",
    )
    reason = _slurm_ready()
    if reason is not None:
        result.error = f"Slurm is not available: {reason}"
        return result
    workdir = ctx.workdir / "slurm"
    bare_dir = workdir / "bare"
    bare_dir.mkdir(parents=True, exist_ok=True)

    log(f"slurm: bare sbatch latency, {latency_jobs} jobs")
    bare = _bare_latency(bare_dir, latency_jobs)
    log(f"slurm: bare sbatch throughput, {throughput_jobs} jobs")
    bare_wall = _bare_throughput(bare_dir, throughput_jobs)
    result.add(
        "latency p50 / p90 / max, bare sbatch",
        f"{ms(median(bare))} / {ms(percentile(bare, 90))} / {ms(max(bare))}",
    )
    result.add(
        "throughput, bare sbatch", f"{throughput_jobs / bare_wall:.2f} jobs/s ({bare_wall:.1f} s)"
    )
    env = {"SERVICE_EXAMPLE_MAX_RUNS": "64", "SERVICE_EXAMPLE_RUNS_PER_USER": "64"}
    for tick in TICKS_S:
        client_env = {"EXECUTOR": "slurm", "SLURM_POLL_INTERVAL": str(tick)}
        label = f"ours, SLURM_POLL_INTERVAL={tick:g}"
        root = workdir / f"ours-{tick:g}"
        with running_cluster(root, server_env=env, client_env=client_env) as cl:
            log(f"slurm: {label}: latency, {latency_jobs} jobs")
            ours = upload_latencies(cl.api.base_url, latency_jobs, LATENCY_POLL_S)
            log(f"slurm: {label}: throughput, {throughput_jobs} jobs")
            ours_wall, _submitted, _counts = asyncio.run(
                drive(cl.api.base_url, throughput_jobs, 4, 8, THROUGHPUT_POLL_S)
            )
            calls = _slurm_calls(cl.clients[0].url)
        result.add(
            f"latency p50 / p90 / max, {label}",
            f"{ms(median(ours))} / {ms(percentile(ours, 90))} / {ms(max(ours))} "
            f"({median(ours) / median(bare):.2f}x bare p50)",
        )
        result.add(
            f"throughput, {label}",
            f"{throughput_jobs / ours_wall:.2f} jobs/s ({ours_wall:.1f} s; "
            f"{bare_wall / ours_wall:.2f}x bare)",
        )
        result.add(
            f"Slurm calls by our client for {latency_jobs + 1 + throughput_jobs} jobs, {label}",
            ", ".join(f"{name} {count:g}" for name, count in sorted(calls.items())),
        )
    result.notes.append(
        "Our path adds the upload, the dispatch, the server's poll of the client, the client's "
        "squeue tick (one call for all its jobs) and the result ZIP to Slurm's own "
        "scheduling delay."
    )
    return result
