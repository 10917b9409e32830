"""fairness: how evenly slots go to users who all have work queued."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    Context,
    SectionResult,
    check_status_body,
    http_client,
    is_zip,
    log,
    ms,
    running_cluster,
    upload_form,
)
from testkit import eventually

RUNS_PER_USER = 2
MAX_RUNS = 4
# The flood: one user queues many jobs, then a few users queue a few each.
FLOOD_MAX_RUNS = 2
FLOOD_JOBS, FLOOD_SMALL_USERS, FLOOD_SMALL_JOBS = 200, 3, 5


def _script(user: int, starts: Path, ends: Path) -> str:
    # $EPOCHREALTIME is a bash variable: no process is started to read the clock.
    return (
        f'echo "{user} $EPOCHREALTIME" >> {starts}\n'
        "sleep 0.05\n"
        f'echo "{user} $EPOCHREALTIME" >> {ends}\n'
    )


def _submit_all(base_url: str, user: int, jobs: int, script: str) -> list[int]:
    ids = []
    with http_client(base_url) as http:
        for _ in range(jobs):
            response = http.post(
                "/upload", files=[("file", ("run.sh", script))], data=upload_form(user)
            )
            if response.status_code != 201:
                raise RuntimeError(f"upload answered {response.status_code}: {response.text}")
            ids.append(int(response.json()["id"]))
    return ids


def _wait_all(base_url: str, ids: list[int], timeout_s: float) -> None:
    left = set(ids)

    def all_done() -> bool:
        for job_id in sorted(left):
            answer = http.get(f"/download/{job_id}")
            if not is_zip(answer):
                check_status_body(answer, job_id)
                return False  # jobs finish roughly in id order: wait for this one first
            left.discard(job_id)
        return True

    with http_client(base_url) as http:
        eventually(all_done, f"{len(ids)} jobs to complete", timeout_s, detail=lambda: left)


def _read(path: Path) -> list[tuple[float, int]]:
    events = []
    for line in path.read_text().splitlines():
        user, stamp = line.split()
        events.append((float(stamp), int(user)))
    return sorted(events)


def _max_concurrency(
    starts: list[tuple[float, int]], ends: list[tuple[float, int]]
) -> tuple[int, int]:
    """(most jobs running at once, most jobs of one user running at once)."""
    events = sorted([(t, 1, u) for t, u in starts] + [(t, -1, u) for t, u in ends])
    running: Counter[int] = Counter()
    most_total = most_user = 0
    for _stamp, delta, user in events:
        running[user] += delta
        most_total = max(most_total, sum(running.values()))
        most_user = max(most_user, running[user])
    return most_total, most_user


@dataclass(frozen=True)
class Spread:
    contended: int  # starts while every user still had jobs left to start
    window: int
    window_min: int  # fewest starts of one user in any window
    window_max: int  # most starts of one user in any window
    gap_contended: int  # largest started-count difference between two users, contended part
    gap_all: int  # the same over the whole run


def analyse(order: list[int], users: list[int], jobs_each: int, window: int) -> Spread:
    """Spread of the start order between users, while every user still had jobs waiting."""
    started: Counter[int] = Counter()
    contended = len(order)
    gap_contended = gap_all = 0
    for index, user in enumerate(order):
        started[user] += 1
        gap = max(started[u] for u in users) - min(started[u] for u in users)
        gap_all = max(gap_all, gap)
        if index < contended:
            gap_contended = max(gap_contended, gap)
        if started[user] == jobs_each and contended == len(order):
            contended = index + 1  # from here on this user has nothing left to start
    size = min(window, contended)
    lows, highs = [], []
    for first in range(contended - size + 1):
        counts = Counter(order[first : first + size])
        per_user = [counts[u] for u in users]
        lows.append(min(per_user))
        highs.append(max(per_user))
    return Spread(contended, size, min(lows), max(highs), gap_contended, gap_all)


def _gated(script: str, gate: Path) -> str:
    # The first jobs to start hold their slots until every job is uploaded, so the flood is
    # really queued when the small users arrive, however fast the uploads are.
    start, rest = script.split("\n", 1)
    return f"{start}\nwhile [ ! -e {gate} ]; do sleep 0.01; done\n{rest}"


def worst_wait(order: list[int], ready_at: dict[int, int], users: list[int]) -> int:
    """Most dispatches of other jobs between a user's job becoming the head of its queue and
    its own start, over the jobs of `users`; a head is counted from the moment all the user's
    jobs were queued (`ready_at[user]`: the number of starts before then) or from its
    predecessor's start, whichever is later.
    """
    worst = 0
    for user in users:
        head_since = ready_at[user]
        for index, starter in enumerate(order):
            if starter == user and index >= head_since:
                worst = max(worst, index - head_since)
                head_since = index + 1
    return worst


def _flood_sizes(ctx: Context) -> tuple[int, int]:
    """(jobs of the flooding user, jobs of each small user)."""
    return (20, 2) if ctx.quick else (FLOOD_JOBS, FLOOD_SMALL_JOBS)


def _flood(ctx: Context, result: SectionResult) -> None:
    flood_jobs, small_jobs = _flood_sizes(ctx)
    small_users = list(range(2, 2 + FLOOD_SMALL_USERS))
    root = ctx.workdir / "fairness-flood"
    root.mkdir(parents=True, exist_ok=True)
    starts_path, ends_path, gate = root / "starts.txt", root / "ends.txt", root / "gate"
    env = {
        "SERVICE_EXAMPLE_RUNS_PER_USER": str(FLOOD_MAX_RUNS),
        "SERVICE_EXAMPLE_MAX_RUNS": str(FLOOD_MAX_RUNS),
    }
    log(f"fairness: flood of {flood_jobs} jobs, then {len(small_users)} users x {small_jobs}")
    with running_cluster(root / "cluster", server_env=env) as running:
        base_url = running.api.base_url
        ids = _submit_all(base_url, 1, flood_jobs, _gated(_script(1, starts_path, ends_path), gate))
        uploaded_at: dict[int, float] = {}
        for user in small_users:
            script = _gated(_script(user, starts_path, ends_path), gate)
            ids += _submit_all(base_url, user, small_jobs, script)
            uploaded_at[user] = time.time()
        gate.touch()
        _wait_all(base_url, ids, 60 + len(ids))
    starts = _read(starts_path)
    order = [user for _stamp, user in starts]
    ready_at = {
        user: sum(1 for stamp, _ in starts if stamp < uploaded)
        for user, uploaded in uploaded_at.items()
    }
    last_small = max(index for index, user in enumerate(order) if user != 1)
    result.add(
        f"flood (MAX_RUNS={FLOOD_MAX_RUNS}): worst wait of a small user's job, in dispatches",
        f"{worst_wait(order, ready_at, small_users)} (user 1 queued {flood_jobs} jobs first, "
        f"then users {small_users[0]}-{small_users[-1]} {small_jobs} each; a fair rotation "
        f"between the 4 users: 3)",
    )
    first = min(ready_at.values())
    result.add(
        "flood: starts from the small users' uploads until their last job started",
        f"{last_small + 1 - first} for {len(small_users) * small_jobs} small jobs; "
        f"the first 24 of them: {' '.join(str(u) for u in order[first : first + 24])}",
    )


def fairness(ctx: Context) -> SectionResult:
    users_n, jobs, window = (
        ctx.sizes.fairness_users,
        ctx.sizes.fairness_jobs,
        ctx.sizes.fairness_window,
    )
    users = list(range(1, users_n + 1))
    result = SectionResult(
        "fairness",
        "Fairness: start order between users competing for few slots",
        f"SERVICE_EXAMPLE_RUNS_PER_USER={RUNS_PER_USER}, SERVICE_EXAMPLE_MAX_RUNS={MAX_RUNS}, "
        f"{users_n} users submit {jobs} jobs each at once (one thread per user); each run.sh "
        "appends '<user> <start time>' to a ledger outside the job dir, sleeps 0.05 s, and "
        "appends its end time to a second ledger. Flood: MAX_RUNS=RUNS_PER_USER="
        f"{FLOOD_MAX_RUNS}, user 1 uploads {_flood_sizes(ctx)[0]} such jobs, then "
        f"{FLOOD_SMALL_USERS} users upload {_flood_sizes(ctx)[1]} each, one after the other, while "
        "the first two flood jobs hold the slots (their run.sh waits for a gate file the driver "
        "creates after the last upload); waits are counted in the ledger's start order, where "
        "two dispatches close together may start swapped",
    )
    root = ctx.workdir / "fairness"
    root.mkdir(parents=True, exist_ok=True)
    starts_path, ends_path = root / "starts.txt", root / "ends.txt"
    env = {
        "SERVICE_EXAMPLE_RUNS_PER_USER": str(RUNS_PER_USER),
        "SERVICE_EXAMPLE_MAX_RUNS": str(MAX_RUNS),
    }
    log(f"fairness: {users_n} users x {jobs} jobs")
    with running_cluster(root / "cluster", server_env=env) as running:
        base_url = running.api.base_url
        began = time.perf_counter()
        with ThreadPoolExecutor(users_n) as pool:
            batches = list(
                pool.map(
                    lambda user: _submit_all(
                        base_url, user, jobs, _script(user, starts_path, ends_path)
                    ),
                    users,
                )
            )
        submitted = time.perf_counter() - began
        _wait_all(base_url, [job for batch in batches for job in batch], 60 + jobs * users_n)
        elapsed = time.perf_counter() - began
    starts, ends = _read(starts_path), _read(ends_path)
    if len(starts) != users_n * jobs:
        raise RuntimeError(f"{len(starts)} starts in the ledger, expected {users_n * jobs}")
    order = [user for _stamp, user in starts]
    spread = analyse(order, users, jobs, window)
    most_total, most_user = _max_concurrency(starts, ends)
    result.add("first 24 starts (user of each)", " ".join(str(u) for u in order[:24]))
    result.add(
        f"starts of one user in any {spread.window} consecutive starts",
        f"min {spread.window_min}, max {spread.window_max} (ideal {spread.window // users_n}"
        f" and {-(-spread.window // users_n)}; over the first {spread.contended} starts, "
        "while every user still had jobs to start)",
    )
    result.add(
        "max difference in started count between two users",
        f"{spread.gap_contended} while all had jobs to start, {spread.gap_all} overall",
    )
    result.add(
        "most jobs running at once (total / one user)",
        f"{most_total} / {most_user} (limits {MAX_RUNS} / {RUNS_PER_USER})",
    )
    result.add("all submitted after / all completed after", f"{ms(submitted)} / {elapsed:.2f} s")
    _flood(ctx, result)
    return result
