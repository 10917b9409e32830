"""Chaos: the server and the clients are SIGKILLed and restarted while users submit jobs.

Size and randomness come from the environment: CHAOS_JOBS (default 60), CHAOS_SEED (default 1),
CHAOS_KILLS (default 6). The seed drives the jobs (user, kind, duration, cancel delay) and the
chaos schedule (when, whom, how long down); process timing itself is not reproducible.

Every run.sh appends `start <token> <epoch.ns> <user>` to a shared ledger when it starts and
`end <token> <epoch.ns> <user>` from an EXIT trap (so also when it is terminated with SIGTERM),
and writes its token into output.txt. Afterwards:

* every job reached one final status and keeps it; fast and slow jobs Completed, failing ones
  Failed with their exit status, cancelled ones Killed (or Completed when /terminate came too
  late, answered 409); a Completed job's ZIP holds output.txt == its token;
* no token started twice (ledger);
* quotas held: from the ledger's start/end lines, never more than MAX_RUNS jobs ran at once, nor
  more than RUNS_PER_USER of one user. A job whose process has no `end` line (it was SIGKILLed,
  so its trap could not run) is taken to end when the server recorded its final status
  (`finished_at` in the server's database, read after shutdown);
* no job process is left on the machine.

An upload cut by a server kill is ambiguous (the job may or may not exist): it is retried under
a new token, and the old token may appear in the ledger at most once.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import secrets
import signal
import sqlite3
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import psutil
import pytest

from testkit.harness import Cluster, Node, tagged_processes

CHAOS_JOBS = int(os.environ.get("CHAOS_JOBS", "60"))
CHAOS_SEED = int(os.environ.get("CHAOS_SEED", "1"))
CHAOS_KILLS = int(os.environ.get("CHAOS_KILLS", "6"))
CLIENTS = 2
USERS = 4
MAX_RUNS = 6
RUNS_PER_USER = 3
FINAL = frozenset({"Completed", "Failed", "Invalid", "Killed", "Cleaned"})
KINDS = ("fast", "slow", "failing", "cancelled")
KIND_WEIGHTS = (35, 30, 15, 20)
TOKEN = re.compile(r"\bt[0-9]+-[0-9a-f]{12}\b")

T = TypeVar("T")


@dataclass
class ChaosJob:
    token: str
    user: int
    kind: str
    body: str
    cancel_after_s: float = 0.0
    job_id: int | None = None
    #: (HTTP status, status field) of every /terminate answer; 0 for a cut connection.
    terminate_answers: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Tally:
    kills: int = 0
    restarts: int = 0
    ambiguous_uploads: set[str] = field(default_factory=set)
    victims: Counter[str] = field(default_factory=Counter)
    errors: list[BaseException] = field(default_factory=list)


def new_token(user: int) -> str:
    return f"t{user}-{secrets.token_hex(6)}"


def script_of(job: ChaosJob, ledger: Path) -> str:
    return (
        f"trap 'echo \"end {job.token} $(date +%s.%N) {job.user}\" >> {ledger}' EXIT\n"
        f'echo "start {job.token} $(date +%s.%N) {job.user}" >> {ledger}\n'
        f"echo {job.token} > output.txt\n"
        f"{job.body}\n"
    )


def plan_jobs(rng: random.Random) -> list[ChaosJob]:
    jobs = []
    for _ in range(CHAOS_JOBS):
        user = rng.randint(1, USERS)
        kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
        body = {
            "fast": "true",
            "slow": f"sleep {rng.uniform(0.5, 2.0):.2f}",
            "failing": f"sleep {rng.uniform(0.0, 0.5):.2f}\nexit 3",
            "cancelled": f"sleep {rng.uniform(1.0, 3.0):.2f}",
        }[kind]
        jobs.append(
            ChaosJob(
                token=new_token(user),
                user=user,
                kind=kind,
                body=body,
                cancel_after_s=rng.uniform(0.1, 2.5),
            )
        )
    return jobs


def retrying(call: Callable[[], T], what: str, timeout_s: float = 180.0) -> T:
    """call(), again while the server is down (connection errors, 5xx), up to a deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except (httpx.TransportError, _ServerError):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: the server never answered") from None
            time.sleep(0.2)


class _ServerError(Exception):
    pass


def status_of(base_url: str, job_id: int) -> str:
    def call() -> str:
        response = httpx.get(f"{base_url}/download/{job_id}", timeout=60)
        if response.status_code >= 500:
            raise _ServerError(response.text)
        if response.headers.get("content-type") == "application/zip":
            return "Completed"
        status: str = response.json()["status"]
        return status

    return retrying(call, f"status of job {job_id}")


def upload(base_url: str, job: ChaosJob, ledger: Path, tally: Tally) -> None:
    """Upload job; an upload the server may have received is never repeated under its token."""
    deadline = time.monotonic() + 180
    while True:
        assert time.monotonic() < deadline, "the server never accepted an upload"
        files = [("file", ("run.sh", script_of(job, ledger).encode()))]
        data = {"user_id": str(job.user), "service": "example"}
        try:
            response = httpx.post(f"{base_url}/upload", files=files, data=data, timeout=60)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            time.sleep(0.2)  # nothing was sent: safe to try again as is
            continue
        except httpx.TransportError:
            tally.ambiguous_uploads.add(job.token)
            job.token = new_token(job.user)
            time.sleep(0.2)
            continue
        if response.status_code >= 500:
            tally.ambiguous_uploads.add(job.token)
            job.token = new_token(job.user)
            time.sleep(0.2)
            continue
        assert response.status_code == 201, response.text
        job.job_id = response.json()["id"]
        return


def cancel(base_url: str, job: ChaosJob) -> None:
    time.sleep(job.cancel_after_s)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            response = httpx.post(f"{base_url}/terminate/{job.job_id}", timeout=60)
        except httpx.TransportError:
            job.terminate_answers.append((0, "cut"))
            time.sleep(0.3)
            continue
        job.terminate_answers.append((response.status_code, response.json().get("status", "")))
        if response.status_code in (200, 409):
            return
        time.sleep(0.5)  # 500: the client could not be reached; the job runs on, try again
    raise AssertionError(f"job {job.job_id} could never be terminated")


def chaos(nodes: list[Node], rng: random.Random, tally: Tally) -> None:
    try:
        for _ in range(CHAOS_KILLS):
            # Every planned kill happens, even once the uploads are over (jobs still run).
            time.sleep(rng.uniform(0.5, 3.0))
            victim = rng.choice(nodes)
            victim.stop(signal.SIGKILL)
            tally.kills += 1
            tally.victims[victim.log_path.stem] += 1
            time.sleep(rng.uniform(0.5, 2.0))
            victim.start()
            tally.restarts += 1
    except BaseException as error:  # reported by the main thread
        tally.errors.append(error)


def read_ledger(
    ledger: Path,
) -> tuple[Counter[str], dict[str, float], dict[str, float], dict[str, int]]:
    starts: Counter[str] = Counter()
    started_at: dict[str, float] = {}
    ended_at: dict[str, float] = {}
    user_of: dict[str, int] = {}
    for line in ledger.read_text().splitlines() if ledger.exists() else []:
        kind, token, stamp, user = line.split()
        user_of[token] = int(user)
        if kind == "start":
            starts[token] += 1
            started_at[token] = float(stamp)
        else:
            ended_at[token] = float(stamp)
    return starts, started_at, ended_at, user_of


def finish_times(root: Path) -> dict[str, float]:
    """token -> finished_at of its job, from the server's database and its copy of run.sh."""
    found: dict[str, float] = {}
    database = sqlite3.connect(f"file:{root / 'server.db'}?mode=ro", uri=True)
    try:
        rows = database.execute("SELECT loc, finished_at FROM jobs").fetchall()
    finally:
        database.close()
    for loc, finished_at in rows:
        script = Path(loc) / "input" / "run.sh"
        if finished_at is None or not script.is_file():
            continue
        token = TOKEN.search(script.read_text())
        if token is not None:
            found.setdefault(token.group(), float(finished_at))
    return found


def job_processes(tag: str) -> list[str]:
    """Command lines of tagged processes that are not an orchestrator server or client."""
    found = []
    for process in tagged_processes(tag):
        with contextlib.suppress(psutil.Error):
            command = " ".join(process.cmdline())
            if "job_orchestrator" not in command:
                found.append(command)
    return found


def peak_concurrency(intervals: list[tuple[float, float, int]]) -> tuple[int, int]:
    events = []
    for start, end, user in intervals:
        events.append((start, 1, user))
        events.append((end, 0, user))
    running: Counter[int] = Counter()
    peak_total = peak_user = 0
    for _stamp, starting, user in sorted(events):  # at a tie, an end comes before a start
        running[user] += 1 if starting else -1
        peak_total = max(peak_total, sum(running.values()))
        peak_user = max(peak_user, running[user])
    return peak_total, peak_user


@pytest.mark.timeout(max(900, CHAOS_JOBS * 15))
def test_chaos_never_loses_repeats_or_overruns_a_job(tmp_path: Path) -> None:
    began = time.monotonic()
    ledger = tmp_path / "ledger"
    jobs = plan_jobs(random.Random(CHAOS_SEED))
    tally = Tally()
    cl = Cluster(tmp_path)
    try:
        for _ in range(CLIENTS):
            cl.add_client({"MAX_CONCURRENT": "3"})
        server = cl.start_server(
            {
                "SERVICE_EXAMPLE_MAX_RUNS": str(MAX_RUNS),
                "SERVICE_EXAMPLE_RUNS_PER_USER": str(RUNS_PER_USER),
                "NODE_CHECK_INTERVAL": "0.5",
                "FAILOVER_AFTER": "2",
                "RETRY_DEADLINE": "900",
            }
        )
        base_url = server.url
        chaos_thread = threading.Thread(
            target=chaos,
            args=([server, *cl.clients], random.Random(CHAOS_SEED + 1), tally),
            daemon=True,
        )
        chaos_thread.start()
        pacing = random.Random(CHAOS_SEED + 2)
        with ThreadPoolExecutor(max_workers=8) as cancels:
            pending = []
            for job in jobs:
                upload(base_url, job, ledger, tally)
                if job.kind == "cancelled":
                    pending.append(cancels.submit(cancel, base_url, job))
                # Bursts of uploads (to fill the quotas) between pauses.
                time.sleep(pacing.uniform(1.0, 3.0) if pacing.random() < 0.15 else 0.0)
            for future in pending:
                future.result()
        chaos_thread.join(timeout=300)
        assert not chaos_thread.is_alive(), "the chaos thread hung"
        assert not tally.errors, f"a restart failed: {tally.errors!r}"

        # Every job reaches a final status, and keeps it.
        finals: dict[int, str] = {}
        deadline = time.monotonic() + 300 + 2 * CHAOS_JOBS
        for job in jobs:
            assert job.job_id is not None
            while (status := status_of(base_url, job.job_id)) not in FINAL:
                assert time.monotonic() < deadline, f"job {job.job_id} stuck in {status}"
                time.sleep(0.1)
            finals[job.job_id] = status
        time.sleep(0.5)
        assert {job_id: status_of(base_url, job_id) for job_id in finals} == finals

        lost = []
        for job in jobs:
            assert job.job_id is not None
            final = finals[job.job_id]
            body = httpx.get(f"{base_url}/download/{job.job_id}", timeout=60)
            if job.kind in ("fast", "slow"):
                expected = final == "Completed"
            elif job.kind == "failing":
                expected = (
                    final == "Failed" and body.json()["message"] == "run.sh exited with status 3"
                )
            else:
                answers = job.terminate_answers
                expected = final in {"Killed", "Completed"} and (
                    final == "Killed" or all(code != 200 for code, _ in answers)
                )
                expected = expected and all(
                    status == final for code, status in answers if code == 409
                )
            if final == "Completed":
                assert body.headers["content-type"] == "application/zip", body.text
                archive = zipfile.ZipFile(io.BytesIO(body.content))
                expected = expected and archive.read("output.txt") == f"{job.token}\n".encode()
            if not expected:
                lost.append((job.job_id, job.kind, final, body.text[:200], job.terminate_answers))

        # No job process outlives its job.
        wait_deadline = time.monotonic() + 30
        while job_processes(cl.tag) and time.monotonic() < wait_deadline:
            time.sleep(0.1)
    finally:
        orphans = cl.shutdown()

    starts, started_at, ended_at, user_of = read_ledger(ledger)
    known = {job.token for job in jobs}
    duplicates = sorted(token for token, count in starts.items() if count > 1)
    strangers = sorted(set(starts) - known - tally.ambiguous_uploads)
    never_started = sorted(
        job.token
        for job in jobs
        if job.job_id is not None
        and finals.get(job.job_id) in {"Completed", "Failed"}
        and job.token not in starts
    )
    finished = finish_times(tmp_path)
    intervals = []
    for token, start in started_at.items():
        end = ended_at.get(token, finished.get(token))
        assert end is not None, f"job with token {token} has no end and no final status"
        intervals.append((start, end, user_of[token]))
    peak_total, peak_user = peak_concurrency(intervals)
    server_log = (tmp_path / "server.log").read_text(errors="replace")
    retries = sum("retrying" in line for line in server_log.splitlines())
    outcomes = Counter(f"{job.kind}->{finals.get(job.job_id or 0)}" for job in jobs)
    print(
        f"\nchaos seed={CHAOS_SEED}: jobs={len(jobs)} kills={tally.kills} "
        f"restarts={tally.restarts} ({dict(tally.victims)}) retries={retries} "
        f"ambiguous_uploads={len(tally.ambiguous_uploads)} "
        f"lost={len(lost)} duplicates={len(duplicates)} orphans={len(orphans)} "
        f"peak_runs={peak_total}/{MAX_RUNS} peak_user={peak_user}/{RUNS_PER_USER} "
        f"without_end_line={len(started_at) - len(set(started_at) & set(ended_at))} "
        f"took={time.monotonic() - began:.0f}s\noutcomes: {dict(sorted(outcomes.items()))}"
    )
    assert lost == [], f"jobs that did not end as they should: {lost}"
    assert duplicates == [], f"tokens started more than once: {duplicates}"
    assert strangers == [], f"tokens nobody submitted: {strangers}"
    assert never_started == [], f"jobs that finished without ever starting: {never_started}"
    assert orphans == [], f"job processes left running: {orphans}"
    assert peak_total <= MAX_RUNS, f"{peak_total} jobs ran at once (MAX_RUNS={MAX_RUNS})"
    assert peak_user <= RUNS_PER_USER, f"{peak_user} jobs of one user ran at once"
