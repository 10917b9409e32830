"""scheduler: one dispatch decision over a large queue, pure and through the SQLite store."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from bench.common import Context, SectionResult, log, median, ms
from job_orchestrator.server.scheduler import (
    Occupancy,
    ServiceLimits,
    UserQueue,
    plan_dispatch,
)
from job_orchestrator.server.storage import SqlStore, open_store

SCHEDULER_TARGET_S = 0.020
SERVICE = "example"
# The server's defaults: SERVICE_<NAME>_RUNS_PER_USER=5, SERVICE_<NAME>_MAX_RUNS=10.
LIMITS = {SERVICE: ServiceLimits(runs_per_user=5, max_runs=10)}
IDLE = Occupancy(per_user={}, per_service={})


def _owner(job_id: int, users: int) -> int:
    """Jobs arrive round-robin between users: job 1 is user 1's, job 2 user 2's, ..."""
    return (job_id - 1) % users + 1


def _heads(queued: int, users: int, depth: int) -> list[UserQueue]:
    """What queue_heads returns for that queue: each user's `depth` oldest job ids."""
    return [
        UserQueue(
            SERVICE,
            user,
            tuple(job for job in range(user, queued + 1, users)[:depth]),
        )
        for user in range(1, users + 1)
    ]


def _time_pure(queued: int, users: int, repeats: int) -> tuple[float, int]:
    heads = _heads(queued, users, LIMITS[SERVICE].runs_per_user)
    durations, planned = [], 0
    for _ in range(repeats + 1):
        started = time.perf_counter()
        planned = len(plan_dispatch(heads, IDLE, LIMITS))
        durations.append(time.perf_counter() - started)
    return median(durations[1:]), planned


def _fill(db_path: Path, queued: int, users: int) -> None:
    """Bulk-insert queued jobs straight into the file open_store created (lower-case status)."""
    now = time.time()
    rows = (
        (job, _owner(job, users), SERVICE, "queued", f"/nonexistent/{job}", "", 0, now, now)
        for job in range(1, queued + 1)
    )
    with sqlite3.connect(db_path) as connection:
        connection.executemany(
            "INSERT INTO jobs (id, user_id, service, status, loc, message, attempts, "
            "queued_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        # What create_job adds beside each first job of a user: the fairness row.
        connection.execute(
            "INSERT INTO service_users (service, user_id, first_job_id) "
            "SELECT service, user_id, MIN(id) FROM jobs GROUP BY service, user_id"
        )
    connection.close()


def _serve_everyone(db_path: Path) -> None:
    """Every user served once before, in an order unrelated to user ids or job ids."""
    with sqlite3.connect(db_path) as connection:
        connection.execute("UPDATE service_users SET served_turn = (user_id * 7919) % 1000003")
    connection.close()


async def _time_store(
    db_path: Path, queued: int, users: int, repeats: int
) -> tuple[dict[str, float | int], dict[str, float | int]]:
    """The decision on a fresh queue (nobody served yet), then once every user was served."""
    store = await open_store(str(db_path))
    try:
        await asyncio.to_thread(_fill, db_path, queued, users)
        fresh = await _time_decisions(store, repeats)
        await asyncio.to_thread(_serve_everyone, db_path)
        return fresh, await _time_decisions(store, repeats)
    finally:
        await store.close()


async def _time_decisions(store: SqlStore, repeats: int) -> dict[str, float | int]:
    totals, heads_s, occupancy_s, plan_s, retry_s = [], [], [], [], []
    planned = head_count = 0
    for _ in range(repeats + 1):
        # The dispatcher's own sequence: occupancy, then the candidate queues, then plan.
        started = time.perf_counter()
        occupancy = await store.occupancy()
        after_occupancy = time.perf_counter()
        heads = await store.dispatch_candidates(LIMITS, occupancy, time.time())
        after_heads = time.perf_counter()
        planned = len(plan_dispatch(heads, occupancy, LIMITS))
        done = time.perf_counter()
        # Not part of the decision, but the dispatch loop runs it after every decision.
        await store.next_retry_at()
        retry_s.append(time.perf_counter() - done)
        totals.append(done - started)
        heads_s.append(after_heads - after_occupancy)
        occupancy_s.append(after_occupancy - started)
        plan_s.append(done - after_heads)
        head_count = len(heads)
    return {
        "total": median(totals[1:]),
        "heads": median(heads_s[1:]),
        "occupancy": median(occupancy_s[1:]),
        "plan": median(plan_s[1:]),
        "retry": median(retry_s[1:]),
        "planned": planned,
        "queues": head_count,
    }


def scheduler(ctx: Context) -> SectionResult:
    sizes = ctx.sizes
    repeats = sizes.scheduler_repeats
    limits = LIMITS[SERVICE]
    result = SectionResult(
        "scheduler",
        "Scheduler: one dispatch decision over a large queue",
        f"one service with the default quotas (runs_per_user={limits.runs_per_user}, "
        f"max_runs={limits.max_runs}), nothing running, jobs queued round-robin between users; "
        f"median of {repeats} after one warm-up. (a) plan_dispatch given every user's "
        "UserQueue head; (b) a fresh SQLite file from open_store, bulk-filled with sqlite3, "
        "then store.occupancy + store.dispatch_candidates + plan_dispatch (as the dispatcher "
        "runs them); (c) the same store after giving every user a stored turn (served once "
        "before, in an order unrelated to ids)",
    )
    largest: tuple[int, float, float] | None = None
    for queued, users in sizes.scheduler_sizes:
        log(f"scheduler: {queued} queued jobs from {users} users")
        label = f"{queued:,} queued / {users:,} users"
        pure_s, planned = _time_pure(queued, users, repeats)
        db_path = ctx.workdir / f"scheduler-{queued}" / "server.db"
        timed, served = asyncio.run(_time_store(db_path, queued, users, repeats))
        store_s = float(timed["total"])
        result.add(f"{label}: (a) plan_dispatch", f"{ms(pure_s)} ({planned} jobs chosen)")
        result.add(
            f"{label}: (b) with the store",
            f"{ms(store_s)} = dispatch_candidates {ms(float(timed['heads']))} "
            f"({timed['queues']} queues) + occupancy {ms(float(timed['occupancy']))} "
            f"+ plan_dispatch {ms(float(timed['plan']))}; {timed['planned']} jobs chosen",
        )
        result.add(
            f"{label}: (c) as (b), every user served once before",
            f"{ms(float(served['total']))} = dispatch_candidates {ms(float(served['heads']))} "
            f"({served['queues']} queues); {served['planned']} jobs chosen",
        )
        result.add(f"{label}: next_retry_at (runs after each decision)", ms(float(timed["retry"])))
        if largest is None or queued > largest[0]:
            largest = (queued, pure_s, store_s)
    assert largest is not None
    queued, pure_s, store_s = largest
    at = f"at {queued:,} queued" + (" (--quick; the target is for 100,000)" if ctx.quick else "")
    limit = f"< {SCHEDULER_TARGET_S * 1000:g} ms"
    result.target(f"scheduler decision, pure, {limit} {at}", ms(pure_s), pure_s < 0.020)
    result.target(f"scheduler decision, with the store, {limit} {at}", ms(store_s), store_s < 0.020)
    return result
