"""soak: many trivial jobs through one client that cleans at once; memory must stay flat.

The client's registry size is read from its retention log line ("... N left in the
registry"), which every cleaning pass that removed something writes: a signal any operator
has too, with no debug route.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from pathlib import Path

import httpx
import psutil

from bench.common import (
    SCRIPT,
    Context,
    SectionResult,
    check_result_zip,
    is_zip,
    log,
    mb,
    processes,
    running_cluster,
    upload_form,
)
from testkit import eventually

RSS_GROWTH_TARGET_MB = 20.0
LANES = 8
QUOTA = "16"
CLEANER_INTERVAL_S = 1.0
POLL_S = 0.02
SETTLE_S = 30.0
_REGISTRY_LINE = re.compile(r"retention: removed \d+ payload\(s\); (\d+) left in the registry")


def soak_jobs(default: int) -> int:
    """SOAK_JOBS overrides the size (20,000 in a full run) without editing the bench."""
    raw = os.environ.get("SOAK_JOBS")
    return int(raw) if raw else default


def registry_rows(client_log: str) -> int | None:
    found = _REGISTRY_LINE.findall(client_log)
    return int(found[-1]) if found else None


class _Progress:
    def __init__(self, jobs: int, milestone: int, procs: dict[str, psutil.Process]) -> None:
        self.jobs = jobs
        self.milestone = milestone
        self.procs = procs
        self.completed = 0
        self.not_completed: list[str] = []
        self.rss_at_milestone: dict[str, int] = {}
        self.started = time.perf_counter()

    def done(self, outcome: str | None) -> None:
        self.completed += 1
        if outcome is not None:
            self.not_completed.append(outcome)
        if self.completed == self.milestone:
            self.rss_at_milestone = rss(self.procs)
        if self.completed % 1000 == 0:
            rate = self.completed / (time.perf_counter() - self.started)
            log(f"soak: {self.completed}/{self.jobs} jobs ({rate:.1f}/s)")


def rss(procs: dict[str, psutil.Process]) -> dict[str, int]:
    return {name: process.memory_info().rss for name, process in procs.items()}


async def _drive(base_url: str, progress: _Progress) -> None:
    numbers = iter(range(progress.jobs))
    limits = httpx.Limits(max_connections=LANES, max_keepalive_connections=LANES)
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=120, trust_env=False
    ) as http:

        async def lane() -> None:
            for number in numbers:  # shared iterator: each job is taken once
                response = await http.post(
                    "/upload",
                    files=[("file", ("run.sh", SCRIPT))],
                    data=upload_form(number % 4 + 1),
                )
                if response.status_code != 201:
                    raise RuntimeError(f"upload answered {response.status_code}: {response.text}")
                job_id = int(response.json()["id"])
                while True:
                    answer = await http.get(f"/download/{job_id}")
                    if is_zip(answer):
                        check_result_zip(answer.content, job_id)
                        progress.done(None)
                        break
                    body = answer.json()
                    if body.get("status") in {"Failed", "Invalid", "Killed", "Cleaned", "Unknown"}:
                        progress.done(f"{job_id} {body.get('status')}: {body.get('message')}")
                        break
                    await asyncio.sleep(POLL_S)

        await asyncio.gather(*(lane() for _ in range(LANES)))


def soak(ctx: Context) -> SectionResult:
    jobs = soak_jobs(ctx.sizes.soak_jobs)
    milestone = min(1000, max(1, jobs // 5))
    result = SectionResult(
        "soak",
        "Soak: memory of a long-running client that cleans every finished payload at once",
        f"{jobs} trivial jobs (SOAK_JOBS) from 4 users through one client with MAX_AGE=0 and "
        f"CLEANER_INTERVAL={CLEANER_INTERVAL_S:g}, quotas {QUOTA}/{QUOTA}, {LANES} lanes that "
        f"each upload a job and poll /download every {POLL_S * 1000:g} ms until its ZIP "
        f"(output.txt checked); RSS of server and client after {milestone} and after all "
        f"jobs; then the registry size from the client's log once it is 0, or {SETTLE_S:g} s "
        "after the last job",
    )
    client_env = {"MAX_AGE": "0", "CLEANER_INTERVAL": f"{CLEANER_INTERVAL_S:g}"}
    server_env = {"SERVICE_EXAMPLE_MAX_RUNS": QUOTA, "SERVICE_EXAMPLE_RUNS_PER_USER": QUOTA}
    log(f"soak: {jobs} jobs, RSS measured at {milestone} and at {jobs}")
    with running_cluster(
        ctx.workdir / "soak", server_env=server_env, client_env=client_env
    ) as running:
        procs = processes(running)
        progress = _Progress(jobs, milestone, procs)
        asyncio.run(_drive(running.api.base_url, progress))
        elapsed = time.perf_counter() - progress.started
        at_end = rss(procs)
        # The last results leave at the first passes after they were collected.
        # Not a failure when some are left: the figure reports how many.
        with contextlib.suppress(AssertionError):
            eventually(
                lambda: registry_rows(running.clients[0].log()) == 0,
                "the registry to empty",
                SETTLE_S,
                poll_s=CLEANER_INTERVAL_S,
            )
        rows = registry_rows(running.clients[0].log())
        data_path = Path(running.clients[0].env["DATA_PATH"])
        payload_dirs = sum(1 for entry in data_path.iterdir() if entry.name.isdigit())
    result.add("jobs/s", f"{jobs / elapsed:.1f} ({elapsed:.0f} s)")
    result.add("jobs not Completed", str(len(progress.not_completed)))
    for outcome in progress.not_completed[:3]:
        result.notes.append(f"Not completed: {outcome}")
    for name in ("client", "server"):
        before, after = progress.rss_at_milestone[name], at_end[name]
        growth_mb = (after - before) / 1_000_000
        result.add(
            f"{name} RSS after {milestone} / {jobs} jobs",
            f"{mb(before)} / {mb(after)} (growth {growth_mb:+.1f} MB)",
        )
        result.target(
            f"{name} RSS growth from {milestone} to {jobs} soak jobs < {RSS_GROWTH_TARGET_MB:g} MB",
            f"{growth_mb:+.1f} MB",
            growth_mb < RSS_GROWTH_TARGET_MB,
        )
    result.add(
        "client registry rows at the end (its last retention log line)",
        "no retention line" if rows is None else str(rows),
    )
    result.add("payload directories left in the client's DATA_PATH", str(payload_dirs))
    result.target(
        "every soak job Completed",
        f"{jobs - len(progress.not_completed)} of {jobs}",
        not progress.not_completed,
    )
    return result
