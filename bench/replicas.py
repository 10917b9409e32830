"""replicas: throughput of 1 SQLite server, 1 PostgreSQL server and N PostgreSQL replicas.

The same trivial jobs as `throughput`, uploaded round-robin over the replicas and collected
from the next one, so every job crosses replicas; each PostgreSQL variant gets a fresh
database on 127.0.0.1:5432 (user postgres, trust auth), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from bench.common import Context, SectionResult, log, median, ms
from bench.throughput import QUOTA, drive
from testkit.harness import Cluster

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
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _measure(ctx: Context, root: Path, db_path: str | None, replicas: int) -> tuple[float, float]:
    """(jobs/s, p50 turnaround s) of `replicas` servers on db_path (None: a SQLite file)."""
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
        elapsed, _submitted, counts = asyncio.run(
            drive(
                urls,
                sizes.throughput_jobs,
                sizes.throughput_users,
                sizes.throughput_concurrency,
                poll_s,
            )
        )
    finally:
        running.shutdown()
    return sizes.throughput_jobs / elapsed, median(counts.turnaround)


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
            rate, p50 = _measure(ctx, root, db_path, n)
        result.add(f"{backend}, {n} replica(s): jobs/s", f"{rate:.1f}")
        result.add(f"{backend}, {n} replica(s): turnaround p50", ms(p50))
    result.notes.append(
        "All processes share the machine's cores: more replicas add parallel HTTP and "
        "dispatch work but no CPU, so this shows the cost of coordination, not a scale-out."
    )
    return result
