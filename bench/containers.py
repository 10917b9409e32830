"""containers: trivial jobs with EXECUTOR=docker and podman beside EXECUTOR=local.

All three in the same run, each in a cluster of its own (one server, one client), with the
same workload: latency (one job at a time, upload to ZIP read), throughput (jobs from 4
users, 8 at once) and the client's own container start time (its
`job_orchestrator_client_container_start_seconds` histogram: create, Podman's init, start).
The container overhead per job is the latency p50 of an engine minus local's. The payload
image is the tests' (scripts/build-payload-test-image); Podman runs with `--runtime runc`
(this machine's kind has no CAP_SYS_RESOURCE, see docs/containers.md).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import httpx

from bench.common import (
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
IMAGE = "job-orchestrator-payload-test"
LATENCY_POLL_S = 0.005
THROUGHPUT_POLL_S = 0.02


def _sizes(ctx: Context) -> tuple[int, int]:
    """(latency jobs, throughput jobs)."""
    return (3, 10) if ctx.quick else (30, 100)


def _start_time(client_url: str) -> tuple[float, float]:
    """(count, sum) of the client's container start histogram."""
    values = {}
    for line in httpx.get(f"{client_url}/metrics", timeout=30).text.splitlines():
        for suffix in ("count", "sum"):
            name = f"job_orchestrator_client_container_start_seconds_{suffix}"
            if line.startswith(name + " "):
                values[suffix] = float(line.split()[1])
    return values.get("count", 0.0), values.get("sum", 0.0)


def _engines() -> dict[str, dict[str, str]]:
    """The engines that answer here, with their client settings."""
    found: dict[str, dict[str, str]] = {}
    for engine in ("docker", "podman"):
        if shutil.which(engine) is None:
            continue
        if subprocess.run([engine, "info"], capture_output=True, check=False).returncode:
            continue
        env = {"EXECUTOR": engine, "CONTAINER_IMAGE": IMAGE}
        if engine == "podman":
            env["CONTAINER_OPTIONS"] = "--runtime runc"
        found[engine] = env
    return found


def containers(ctx: Context) -> SectionResult:
    latency_jobs, throughput_jobs = _sizes(ctx)
    result = SectionResult(
        "containers",
        "Containers: trivial jobs with EXECUTOR=docker and podman beside EXECUTOR=local",
        f"one server and one client per executor, in this run; latency: {latency_jobs} jobs "
        f"one at a time after a warm-up, GET /download every {LATENCY_POLL_S * 1000:g} ms "
        f"until the ZIP; throughput: {throughput_jobs} jobs from 4 users, 8 at once, quotas "
        f"64/64; image {IMAGE} (Debian bookworm), no limits set; the run.sh: "
        f"`{SCRIPT.strip()}`",
    )
    engines = _engines()
    if not engines:
        result.error = "neither docker nor podman answers"
        return result
    build = subprocess.run(
        [str(ROOT / "scripts" / "build-payload-test-image")], capture_output=True, text=True
    )
    if build.returncode != 0:
        result.error = f"could not build the payload image: {build.stderr.strip()}"
        return result
    server_env = {"SERVICE_EXAMPLE_MAX_RUNS": "64", "SERVICE_EXAMPLE_RUNS_PER_USER": "64"}
    local_p50 = 0.0
    for name, client_env in {"local": {"EXECUTOR": "local"}, **engines}.items():
        with running_cluster(
            ctx.workdir / f"containers-{name}", server_env=server_env, client_env=client_env
        ) as cluster:
            log(f"containers: {name}: latency, {latency_jobs} jobs")
            durations = upload_latencies(cluster.api.base_url, latency_jobs, LATENCY_POLL_S)
            alone = _start_time(cluster.clients[0].url)
            log(f"containers: {name}: throughput, {throughput_jobs} jobs")
            wall, _submitted, _counts = asyncio.run(
                drive(cluster.api.base_url, throughput_jobs, 4, 8, THROUGHPUT_POLL_S)
            )
            total = _start_time(cluster.clients[0].url)
        p50 = median(durations)
        if name == "local":
            local_p50 = p50
        result.add(
            f"latency p50 / p90 / max, {name}",
            f"{ms(p50)} / {ms(percentile(durations, 90))} / {ms(max(durations))}",
        )
        result.add(f"throughput, {name}", f"{throughput_jobs / wall:.2f} jobs/s ({wall:.1f} s)")
        if name != "local":
            result.add(f"container overhead per job (p50 - local p50), {name}", ms(p50 - local_p50))
            together = (total[0] - alone[0], total[1] - alone[1])
            for how, (starts, start_s) in (("one at a time", alone), ("8 at once", together)):
                if starts:
                    result.add(
                        f"container create + start, mean of {starts:g} {how}, {name}",
                        ms(start_s / starts),
                    )
    result.notes.append(
        "A container's cost is the engine's: create, start (runc, the mounts, the cgroup), "
        "the end seen by the events stream, one inspect, and the removal; our client runs "
        "each as a CLI call. The local executor's job starts with one fork+exec."
    )
    return result
