"""replicas: throughput of 1 SQLite server, 1 PostgreSQL server and N PostgreSQL replicas.

The same trivial jobs as `throughput`, uploaded round-robin over the replicas and collected
from the next one, so every job crosses replicas; each PostgreSQL variant gets a fresh
database on 127.0.0.1:5432 (user postgres, trust auth), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil
import sqlalchemy as sa

from bench.common import (
    Context,
    SectionResult,
    StatusCounts,
    StatusSampler,
    log,
    median,
    ms,
    store_round_trips,
    store_work,
)
from bench.throughput import QUOTA, drive, work_per_job
from testkit.harness import Cluster, Node

PG_ADMIN = {"user": "postgres", "host": "127.0.0.1", "port": 5432, "database": "postgres"}


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(**PG_ADMIN, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def _database() -> Iterator[str]:
    name = f"jo_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}?ssl=disable"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass(frozen=True)
class Run:
    rate: float
    p50_s: float
    upload_p50_s: float
    #: The servers' store work per job, summed over the replicas (throughput.work_per_job).
    store_work: str
    #: PostgreSQL's own view of the timed part: commits per job, and how often a sampled
    #: active backend of the database was waiting, and on what.
    database: str | None
    #: CPU per job of the servers, the client, the bench driver and PostgreSQL's processes.
    cpu: str
    #: How many jobs were in each status, on average over the timed part: where they wait.
    waiting: str


WAITING = ["queued", "processing", "submitted", "prepared", "running"]


def _work(running: Cluster) -> tuple[tuple[dict[str, float], float], float]:
    """Every replica's store work so far, summed, and its round trips to the database."""
    per_verb: dict[str, float] = {}
    commits = round_trips = 0.0
    for server in running.servers:
        verbs, server_commits = store_work(running, server.url)
        for verb, count in verbs.items():
            per_verb[verb] = per_verb.get(verb, 0.0) + count
        commits += server_commits
        round_trips += store_round_trips(running, server.url)
    return (per_verb, commits), round_trips


def _measure(ctx: Context, root: Path, db_path: str | None, replicas: int) -> Run:
    """Throughput, p50 turnaround and the profile of `replicas` servers on db_path (None: a
    SQLite file)."""
    sizes = ctx.sizes
    env = {"SERVICE_EXAMPLE_MAX_RUNS": QUOTA, "SERVICE_EXAMPLE_RUNS_PER_USER": QUOTA}
    if db_path is not None:
        env["DB_PATH"] = db_path
    root.mkdir(parents=True, exist_ok=True)
    running = Cluster(root)
    try:
        running.add_client()
        for _ in range(replicas):
            running.add_server(env)
        urls = [server.url for server in running.servers]
        poll_s = sizes.throughput_poll_s
        asyncio.run(drive(urls, len(urls), 1, 2, poll_s))  # warm-up, not timed
        work_before = _work(running)
        with contextlib.ExitStack() as measuring:
            sampler = measuring.enter_context(_PgSampler(db_path))
            cpu = measuring.enter_context(_CpuMeter(running, with_database=db_path is not None))
            # Where jobs wait: PostgreSQL's sampler counts them too; SQLite's file is read.
            statuses: StatusSampler | _PgSampler = sampler
            if db_path is None:
                sqlite_file = Path(running.servers[0].env["DB_PATH"])
                statuses = measuring.enter_context(StatusSampler(sqlite_file))
            elapsed, _submitted, counts = asyncio.run(
                drive(
                    urls,
                    sizes.throughput_jobs,
                    sizes.throughput_users,
                    sizes.throughput_concurrency,
                    poll_s,
                )
            )
        work_after = _work(running)
        work = work_per_job(work_before[0], work_after[0], sizes.throughput_jobs)
        if db_path is not None:
            round_trips = (work_after[1] - work_before[1]) / sizes.throughput_jobs
            work += f"; {round_trips:.1f} round trips to PostgreSQL per job"
    finally:
        running.shutdown()
    return Run(
        sizes.throughput_jobs / elapsed,
        median(counts.turnaround),
        median(counts.uploads),
        work,
        sampler.describe(sizes.throughput_jobs),
        cpu.describe(sizes.throughput_jobs),
        statuses.summary(WAITING),
    )


class _CpuMeter:
    """CPU seconds per job of each group of processes over a `with` block; PostgreSQL's are
    the cluster's processes (the other variants' databases are idle meanwhile)."""

    def __init__(self, running: Cluster, *, with_database: bool) -> None:
        self._groups: dict[str, list[psutil.Process]] = {
            "servers": [psutil.Process(_pid(server)) for server in running.servers],
            "client": [psutil.Process(_pid(client)) for client in running.clients],
            "bench driver": [psutil.Process()],
        }
        self._with_database = with_database
        self._used: dict[str, float] = {}

    def _snapshot(self) -> dict[str, dict[int, float]]:
        groups = dict(self._groups)
        if self._with_database:
            groups["PostgreSQL"] = [
                process
                for process in psutil.process_iter(["username"])
                if process.info["username"] == "postgres"
            ]
        seen: dict[str, dict[int, float]] = {}
        for name, members in groups.items():
            seen[name] = {}
            for process in members:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    seen[name][process.pid] = times.user + times.system
        return seen

    def __enter__(self) -> _CpuMeter:
        self._before = self._snapshot()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        after = self._snapshot()
        self._wall = time.perf_counter() - self._started
        for name, now in after.items():
            # A process that started meanwhile counts whole; one that ended is not seen.
            self._used[name] = sum(
                used - self._before[name].get(pid, 0.0) for pid, used in now.items()
            )

    def describe(self, jobs: int) -> str:
        parts = ", ".join(f"{name} {ms(used / jobs)}" for name, used in self._used.items())
        busy = 100 * sum(self._used.values()) / (self._wall * (os.cpu_count() or 1))
        return f"{parts} per job ({busy:.0f}% of the machine's cores busy)"


class _PgSampler:
    """PostgreSQL's commits (pg_stat_database) over a `with` block, and what the database's
    active backends wait on (pg_stat_activity, sampled every SAMPLE_S in a thread)."""

    SAMPLE_S = 0.02
    #: The jobs' statuses are counted every this many samples (250 ms).
    STATUS_EVERY = 12

    def __init__(self, db_path: str | None) -> None:
        self._name = sa.make_url(db_path).database if db_path else None
        self._commits = 0
        self._samples: Counter[str] = Counter()
        self._active = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._statuses = StatusCounts()

    def __enter__(self) -> _PgSampler:
        if self._name is not None:
            self._commits = -asyncio.run(self._query_commits())
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._name is not None:
            self._stop.set()
            self._thread.join()
            self._commits += asyncio.run(self._query_commits())

    async def _query_commits(self) -> int:
        connection = await asyncpg.connect(**PG_ADMIN, timeout=5)
        try:
            value = await connection.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", self._name
            )
            return int(value or 0)
        finally:
            await connection.close()

    def _sample(self) -> None:
        asyncio.run(self._sample_loop())

    async def _sample_loop(self) -> None:
        assert self._name is not None
        connection = await asyncpg.connect(**{**PG_ADMIN, "database": self._name}, timeout=5)
        rounds = 0
        try:
            while not self._stop.is_set():
                rows = await connection.fetch(
                    "SELECT wait_event_type, wait_event FROM pg_stat_activity"
                    " WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid()",
                    self._name,
                )
                for row in rows:
                    self._active += 1
                    waiting = row["wait_event_type"]
                    if waiting is not None:
                        self._samples[f"{waiting}:{row['wait_event']}"] += 1
                rounds += 1
                if rounds % self.STATUS_EVERY == 0:
                    counts = await connection.fetch(
                        "SELECT status, count(*) FROM jobs GROUP BY status"
                    )
                    self._statuses.add({row[0]: int(row[1]) for row in counts})
                await asyncio.sleep(self.SAMPLE_S)
        finally:
            await connection.close()

    def summary(self, statuses: list[str]) -> str:
        return self._statuses.summary(statuses)

    def describe(self, jobs: int) -> str | None:
        if self._name is None:
            return None
        # The PostgreSQL-side commits also count the replicas' leases and the sampler's reads.
        waits = ", ".join(
            f"{event} {100 * count / max(1, self._active):.0f}%"
            for event, count in self._samples.most_common(4)
        )
        return (
            f"{self._commits / jobs:.1f} commits per job; of {self._active} active-backend "
            f"samples, waiting on: {waits or 'nothing'}"
        )


def replicas(ctx: Context) -> SectionResult:
    sizes = ctx.sizes
    count = ctx.replicas
    result = SectionResult(
        "replicas",
        "Replicas: throughput of one SQLite server, one and several PostgreSQL replicas",
        f"{sizes.throughput_jobs} trivial jobs from {sizes.throughput_users} users, quotas "
        f"{QUOTA}, one client, {sizes.throughput_concurrency} connections as in `throughput`; "
        f"with several replicas each job is uploaded on replica i % n and polled on the next "
        f"(every {sizes.throughput_poll_s * 1000:g} ms). PostgreSQL: the shared local cluster, "
        "a fresh database per variant",
    )
    variants: list[tuple[str, int]] = [("sqlite", 1), ("postgresql", 1)]
    if count > 1:
        variants.append(("postgresql", count))
    for backend, n in variants:
        log(f"replicas: {n} server(s) on {backend}")
        root = ctx.workdir / f"replicas-{backend}-{n}"
        with contextlib.ExitStack() as stack:
            db_path = stack.enter_context(_database()) if backend == "postgresql" else None
            run = _measure(ctx, root, db_path, n)
        result.add(f"{backend}, {n} replica(s): jobs/s", f"{run.rate:.1f}")
        result.add(f"{backend}, {n} replica(s): turnaround p50", ms(run.p50_s))
        result.add(f"{backend}, {n} replica(s): upload p50", ms(run.upload_p50_s))
        result.add(f"{backend}, {n} replica(s): store work per job", run.store_work)
        result.add(f"{backend}, {n} replica(s): CPU per job", run.cpu)
        result.add(f"{backend}, {n} replica(s): jobs in each status (mean)", run.waiting)
        if run.database is not None:
            result.add(f"{backend}, {n} replica(s): PostgreSQL", run.database)
    result.notes.append(
        "All processes share the machine's cores: more replicas add parallel HTTP and "
        "dispatch work but no CPU, so this shows the cost of coordination, not a scale-out."
    )
    return result


def _pid(member: Node) -> int:
    assert member.process is not None
    return int(member.process.pid)
