"""original: the original Rust 2.2.3 server + client beside ours, same workload, same run.

The original is built by scripts/build-original. Its server and client each poll every
500 ms (sender, client runner, client updater, server getter: UPSTREAM §6), so a trivial job
is expected to take about a second there; this measures it instead of assuming it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

from bench.common import (
    SCRIPT,
    Context,
    SectionResult,
    http_client,
    log,
    median,
    ms,
    percentile,
)
from bench.latency import _one_job
from bench.throughput import QUOTA, drive
from testkit.harness import cluster
from testkit.original import ORIGINAL_BINARY, SERVICE, TRAP, Fleet

#: The original's client requires the exit trap; both sides run the same script.
TRAPPED = TRAP + SCRIPT
LIMITS = {
    f"SERVICE_{SERVICE.upper()}_MAX_RUNS": QUOTA,
    f"SERVICE_{SERVICE.upper()}_RUNS_PER_USER": QUOTA,
}


@contextlib.contextmanager
def _original(root: Path) -> Iterator[str]:
    fleet = Fleet(root)
    try:
        fleet.original_client()
        fleet.original_server(LIMITS)
        yield fleet.api.base_url
    finally:
        fleet.shutdown()


@contextlib.contextmanager
def _ours(root: Path) -> Iterator[str]:
    with cluster(root, server_env=LIMITS) as running:
        yield running.api.base_url


def original(ctx: Context) -> SectionResult:
    latency_jobs, throughput_jobs = (3, 10) if ctx.quick else (30, 300)
    sizes = ctx.sizes
    users, concurrency = sizes.throughput_users, sizes.throughput_concurrency
    result = SectionResult(
        "original",
        "Side by side: the original Rust job-orchestrator 2.2.3 and ours",
        f"each: its own server and one client of its own kind, default settings but "
        f"SERVICE_EXAMPLE_MAX_RUNS=RUNS_PER_USER={QUOTA}, run.sh = the trap + `{SCRIPT.strip()}`; "
        f"latency: {latency_jobs} jobs one at a time after 2 warm-ups, /download polled every "
        f"{sizes.latency_poll_s * 1000:g} ms; throughput: {throughput_jobs} jobs from {users} "
        f"users with {concurrency} connections, polled every "
        f"{sizes.throughput_poll_s * 1000:g} ms (as in the latency and throughput cases)",
    )
    if not ORIGINAL_BINARY.is_file():
        raise RuntimeError(f"{ORIGINAL_BINARY} is missing: run ./scripts/build-original")
    for label, deployment in (("original", _original), ("ours", _ours)):
        root = ctx.workdir / f"original-{label}"
        root.mkdir(parents=True)
        log(f"original: {label}, {latency_jobs} jobs one at a time, then {throughput_jobs} jobs")
        with deployment(root) as base_url:
            with http_client(base_url) as http:
                for _ in range(2):
                    _one_job(http, sizes.latency_poll_s, TRAPPED)
                jobs = [_one_job(http, sizes.latency_poll_s, TRAPPED) for _ in range(latency_jobs)]
            elapsed, _submitted, counts = asyncio.run(
                drive(
                    base_url, throughput_jobs, users, concurrency, sizes.throughput_poll_s, TRAPPED
                )
            )
        totals = [job.total for job in jobs]
        result.add(f"{label}: latency p50", ms(median(totals)))
        result.add(f"{label}: latency p90", ms(percentile(totals, 90)))
        result.add(f"{label}: throughput", f"{throughput_jobs / elapsed:.1f} jobs/s")
        result.add(f"{label}: throughput turnaround p50", ms(median(counts.turnaround)))
    return result
