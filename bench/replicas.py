"""replicas: throughput of 1 SQLite server, 1 PostgreSQL server and N PostgreSQL replicas.

The same trivial jobs as `throughput`, uploaded round-robin over the replicas and collected
from the next one, so every job crosses replicas; each PostgreSQL variant gets a fresh
database on 127.0.0.1:5432 (user postgres, trust auth), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
from tests.harness import Cluster

from bench.common import (
    SCRIPT,
    Context,
    SectionResult,
    check_result_zip,
    check_status_body,
    is_zip,
    log,
    median,
    ms,
    upload_form,
)

QUOTA = "64"
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


async def _drive(
    urls: list[str], jobs: int, users: int, concurrency: int, poll_s: float
) -> tuple[float, list[float]]:
    """Upload on replica i % n, collect on the next; return (seconds, turnarounds)."""
    turnaround: list[float] = []
    pending: asyncio.Queue[tuple[int, int, float] | None] = asyncio.Queue()
    numbers = iter(range(jobs))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120, trust_env=False) as http:

        async def submit() -> None:
            for number in numbers:
                started = time.perf_counter()
                on = number % len(urls)
                response = await http.post(
                    f"{urls[on]}/upload",
                    files=[("file", ("run.sh", SCRIPT))],
                    data=upload_form(number % users + 1),
                )
                if response.status_code != 201:
                    raise RuntimeError(f"upload answered {response.status_code}: {response.text}")
                pending.put_nowait((int(response.json()["id"]), on, started))

        async def collect() -> None:
            while (item := await pending.get()) is not None:
                job_id, on, started = item
                url = urls[(on + 1) % len(urls)]
                while True:
                    answer = await http.get(f"{url}/download/{job_id}")
                    if is_zip(answer):
                        check_result_zip(answer.content, job_id)
                        turnaround.append(time.perf_counter() - started)
                        break
                    check_status_body(answer, job_id)
                    await asyncio.sleep(poll_s)

        started = time.perf_counter()
        half = max(1, concurrency // 2)
        collecting = [asyncio.create_task(collect()) for _ in range(concurrency - half)]
        try:
            await asyncio.gather(*(submit() for _ in range(half)))
            for _ in collecting:
                pending.put_nowait(None)
            await asyncio.gather(*collecting)
        finally:
            for task in collecting:
                task.cancel()
            await asyncio.gather(*collecting, return_exceptions=True)
        return time.perf_counter() - started, turnaround


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
        asyncio.run(_drive(urls, len(urls), 1, 2, poll_s))  # warm-up, not timed
        elapsed, turnaround = asyncio.run(
            _drive(
                urls,
                sizes.throughput_jobs,
                sizes.throughput_users,
                sizes.throughput_concurrency,
                poll_s,
            )
        )
    finally:
        running.shutdown()
    return sizes.throughput_jobs / elapsed, median(turnaround)


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
