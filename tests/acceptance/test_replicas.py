"""Several server replicas on one PostgreSQL database (issue 11).

Real `job-orchestrator server` processes share one database (a fresh one per test on the
cluster at 127.0.0.1:5432) and one DATA_PATH; real clients run the jobs. Every run.sh
appends `start <token> <epoch.ns> <user>` and `end <token> <epoch.ns> <user>` to a ledger
outside its job directory, so quotas and "ran once" are read from what really ran.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from testkit import eventually
from testkit.harness import TRAP, Api, Cluster
from testkit.pg import fresh_database

pytestmark = pytest.mark.postgres

USERS = 10
MAX_RUNS = 4
RUNS_PER_USER = 2
FINAL = frozenset({"Completed", "Failed", "Killed", "Cleaned"})


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def replica_env(pg_url: str, **extra: str) -> dict[str, str]:
    return {
        "DB_PATH": pg_url,
        "LEASE_S": "2",
        "SERVICE_EXAMPLE_MAX_RUNS": str(MAX_RUNS),
        "SERVICE_EXAMPLE_RUNS_PER_USER": str(RUNS_PER_USER),
        **extra,
    }


def ledger_script(ledger: Path, token: int, user: int, sleep_s: float = 0.1) -> str:
    return (
        f"{TRAP}"
        f'echo "start {token} $(date +%s.%N) {user}" >> {ledger}\n'
        f"sleep {sleep_s}\n"
        f'echo "end {token} $(date +%s.%N) {user}" >> {ledger}\n'
        f"echo {token} > output.txt\n"
    )


def read_ledger(ledger: Path) -> list[tuple[str, int, float, int]]:
    entries = []
    for line in ledger.read_text().splitlines():
        kind, token, at, user = line.split()
        entries.append((kind, int(token), float(at), int(user)))
    return entries


def peak_concurrency(entries: list[tuple[str, int, float, int]]) -> tuple[int, dict[int, int]]:
    """The most jobs that ran at once, in total and per user (an end before a start at a tie)."""
    events = sorted(entries, key=lambda entry: (entry[2], entry[0] == "start"))
    running, peak = 0, 0
    per_user: Counter[int] = Counter()
    peak_user: dict[int, int] = {}
    for kind, _token, _at, user in events:
        step = 1 if kind == "start" else -1
        running += step
        per_user[user] += step
        peak = max(peak, running)
        peak_user[user] = max(peak_user.get(user, 0), per_user[user])
    return peak, peak_user


def _query(pg_url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://")

    async def run() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(dsn, timeout=5)
        try:
            return list(await connection.fetch(sql, *args))
        finally:
            await connection.close()

    return asyncio.run(run())


def owned_in_flight(pg_url: str, replica_id: str) -> list[int]:
    """Ids of the jobs in flight the replica owns now."""
    rows = _query(
        pg_url,
        "SELECT id FROM jobs WHERE owner = $1 AND lower(status) IN "
        "('processing', 'submitted', 'prepared', 'running')",
        replica_id,
    )
    return [row["id"] for row in rows]


def owners(pg_url: str, job_ids: list[int]) -> set[str | None]:
    rows = _query(pg_url, "SELECT owner FROM jobs WHERE id = ANY($1::int[])", job_ids)
    return {row["owner"] for row in rows}


def wait_final(api: Api, job_id: int, timeout_s: float = 120.0) -> dict[str, object]:

    def final() -> dict[str, object] | None:
        response = httpx.get(f"{api.base_url}/download/{job_id}", params={"wait": 30}, timeout=60)
        if response.headers["content-type"] == "application/zip":
            return {"status": "Completed", "zip": response.content}
        body: dict[str, object] = response.json()
        return body if body["status"] in FINAL else None

    # No pause between calls: each one is a long poll of up to 30 s.
    return eventually(final, f"job {job_id} to become final", timeout_s, poll_s=0)


@pytest.mark.timeout(900)
def test_three_replicas_hold_quotas_and_survive_a_kill(tmp_path: Path, pg_url: str) -> None:
    ledger = tmp_path / "ledger"
    ledger.touch()
    started = time.monotonic()
    running = Cluster(tmp_path)
    try:
        for _ in range(2):
            running.add_client()
        for _ in range(3):
            running.add_server(replica_env(pg_url))
        replicas = running.servers
        total = 300
        jobs: dict[int, tuple[int, int]] = {}  # job id -> (token, uploaded on)

        def upload(token: int, alive: list[int]) -> None:
            on = alive[token % len(alive)]
            user = token % USERS + 1
            job_id = Api(replicas[on].url).submit(ledger_script(ledger, token, user), user_id=user)
            jobs[job_id] = (token, on)

        ids = [f"{socket.gethostname()}:{replica.port}" for replica in replicas]  # REPLICA_ID

        def in_flight() -> tuple[int, list[int]]:
            """A replica that owns jobs in flight, and those jobs ((0, []): none does)."""
            for index, replica_id in enumerate(ids):
                if owned := owned_in_flight(pg_url, replica_id):
                    return index, owned
            return 0, []

        token, orphans, victim = 0, [], 0
        # From the 100th job on, kill a replica as soon as it owns work in flight: mostly
        # the one that leads dispatch (the others claim only on their safety tick).
        while not orphans:
            assert token < 200, "no replica ever owned a job in flight"
            upload(token, [0, 1, 2])
            token += 1
            if token >= 100:
                victim, orphans = in_flight()
        replicas[victim].stop(signal.SIGKILL)
        survivors = [index for index in range(3) if index != victim]
        killed_at = token
        for token in range(killed_at, killed_at + 100):
            upload(token, survivors)
        # The survivors take the dead replica's work over once its lease ran out.
        eventually(
            lambda: ids[victim] not in owners(pg_url, orphans),
            "the survivors to take the dead replica's jobs over",
            poll_s=0.2,
        )
        replicas[victim].start()
        for token in range(killed_at + 100, total):
            upload(token, [0, 1, 2])

        for job_id, (token, on) in jobs.items():
            # Asked of another replica than the one that took the upload.
            result = wait_final(Api(replicas[(on + 1) % 3].url), job_id)
            assert result["status"] == "Completed", (job_id, result)
            assert isinstance(result["zip"], bytes)
            archive = Api(replicas[(on + 2) % 3].url).download_zip(job_id)
            assert archive.read("output.txt").decode().strip() == str(token)
        elapsed = time.monotonic() - started

        entries = read_ledger(ledger)
        starts = Counter(token for kind, token, _, _ in entries if kind == "start")
        ends = Counter(token for kind, token, _, _ in entries if kind == "end")
        assert starts == ends == Counter(range(total))  # each ran once, to its end
        peak, peak_user = peak_concurrency(entries)
        assert peak <= MAX_RUNS, peak
        assert max(peak_user.values()) <= RUNS_PER_USER, peak_user
        # Some jobs did run side by side, or the check above would prove nothing.
        assert peak >= 2
        print(f"\n300 jobs on 3 replicas with a kill -9: {elapsed:.1f} s, peak {peak}")
        for job_id in jobs:  # final means final: nothing moved afterwards
            assert Api(replicas[0].url).status(job_id)["status"] == "Completed"
    finally:
        leftover = running.shutdown()
    assert leftover == []


def leads(server_url: str) -> bool:
    metrics = httpx.get(f"{server_url}/metrics", timeout=30).text
    [value] = [
        line.split()[1]
        for line in metrics.splitlines()
        if line.startswith("job_orchestrator_dispatch_leader ")
    ]
    return float(value) == 1.0


def test_another_replica_leads_dispatch_once_the_leader_is_killed(
    tmp_path: Path, pg_url: str
) -> None:
    """One replica decides on wake-ups (its lock goes with its database session); killed,
    another takes the lead, and a job uploaded on it runs without waiting for its tick."""
    ledger = tmp_path / "ledger"
    running = Cluster(tmp_path)
    try:
        running.add_client()
        servers = [running.add_server(replica_env(pg_url)) for _ in range(2)]
        eventually(lambda: sum(leads(server.url) for server in servers) == 1, "one leader")
        leader, follower = sorted(servers, key=lambda server: not leads(server.url))
        first = Api(follower.url).submit(ledger_script(ledger, 1, 1), user_id=1)
        assert wait_final(Api(follower.url), first)["status"] == "Completed"
        leader.stop(signal.SIGKILL)
        eventually(lambda: leads(follower.url), "the survivor to lead", timeout_s=30)
        second = Api(follower.url).submit(ledger_script(ledger, 2, 2), user_id=2)
        assert wait_final(Api(follower.url), second)["status"] == "Completed"
        starts = Counter(token for kind, token, _, _ in read_ledger(ledger) if kind == "start")
        assert starts == Counter([1, 2])
    finally:
        leftover = running.shutdown()
    assert leftover == []


def test_any_replica_answers_any_request(tmp_path: Path, pg_url: str) -> None:
    ledger = tmp_path / "ledger"
    running = Cluster(tmp_path)
    try:
        running.add_client()
        a, b, c = (running.add_server(replica_env(pg_url)) for _ in range(3))
        long_job = Api(a.url).submit(ledger_script(ledger, 1, 1, sleep_s=60), user_id=1)
        Api(b.url).wait_for(long_job, "Running")
        response = httpx.post(f"{c.url}/terminate/{long_job}", timeout=60)
        assert response.status_code == 200, response.text
        assert Api(a.url).wait_for(long_job, "Killed")["status"] == "Killed"
        assert Api(b.url).download_partial_zip(long_job).namelist()

        done = Api(b.url).submit(ledger_script(ledger, 2, 2), user_id=2)
        assert wait_final(Api(c.url), done)["status"] == "Completed"
        assert Api(a.url).download_zip(done).read("output.txt") == b"2\n"
        again = httpx.post(f"{a.url}/terminate/{done}", timeout=30)
        assert again.status_code == 409
    finally:
        leftover = running.shutdown()
    assert leftover == []


def test_replicas_starting_together_on_an_empty_database(tmp_path: Path, pg_url: str) -> None:
    running = Cluster(tmp_path)
    try:
        running.add_client()
        servers = [running.add_server(replica_env(pg_url), start=False) for _ in range(3)]
        for server in servers:
            server.start(wait=False)
        for server in servers:
            server.wait_healthy(timeout_s=60)
        job_id = Api(servers[2].url).submit("echo hi > output.txt\n")
        assert wait_final(Api(servers[0].url), job_id)["status"] == "Completed"
    finally:
        running.shutdown()


def test_migrate_command_then_a_server(tmp_path: Path, pg_url: str) -> None:
    env = {**Cluster(tmp_path).base_env(), "DB_PATH": pg_url}
    migrated = subprocess.run(
        [sys.executable, "-m", "job_orchestrator", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "schema revision" in migrated.stdout
    again = subprocess.run(
        [sys.executable, "-m", "job_orchestrator", "migrate"], env=env, capture_output=True
    )
    assert again.returncode == 0


def test_migrate_reports_an_unreachable_database(tmp_path: Path) -> None:
    env = {
        **Cluster(tmp_path).base_env(),
        "DB_PATH": "postgresql+asyncpg://postgres@127.0.0.1:1/none",
    }
    migrated = subprocess.run(
        [sys.executable, "-m", "job_orchestrator", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrated.returncode == 1
    assert "the database cannot be reached" in migrated.stderr
    assert "Traceback" not in migrated.stderr


def test_a_replica_with_other_service_limits_refuses_to_start(tmp_path: Path, pg_url: str) -> None:
    running = Cluster(tmp_path)
    try:
        running.add_client()
        running.add_server(replica_env(pg_url))
        other = running.add_server(
            replica_env(pg_url, SERVICE_EXAMPLE_MAX_RUNS=str(MAX_RUNS + 1)), start=False
        )
        other.start(wait=False)
        assert other.process is not None
        assert other.process.wait(60) != 0
        assert "SERVICE_*" in other.log()
        assert "differs from the running replica" in other.log()
    finally:
        running.shutdown()


def test_two_servers_under_one_replica_id_are_reported(tmp_path: Path, pg_url: str) -> None:
    running = Cluster(tmp_path)
    try:
        running.add_client()
        first = running.add_server(replica_env(pg_url, REPLICA_ID="twin"))
        second = running.add_server(replica_env(pg_url, REPLICA_ID="twin"))
        message = "another server process runs with REPLICA_ID twin"
        eventually(
            lambda: any(message in server.log() for server in (first, second)),
            f"{message!r} logged",
            poll_s=0.2,
        )
    finally:
        running.shutdown()


def test_a_final_jobs_log_is_copied_once_by_the_replica_that_ended_it(
    tmp_path: Path, pg_url: str
) -> None:
    """Every replica hears of a final job; each used to copy its log from the client at once
    (three replicas: three copies of every log). The one that moved it copies; the others
    stand by (2 x LONG_POLL + 5 s, here 9 s) in case it died first."""
    running = Cluster(tmp_path)
    try:
        running.add_client()
        servers = [running.add_server(replica_env(pg_url, LONG_POLL="2")) for _ in range(3)]
        api = Api(servers[0].url)
        job_id = api.submit("echo to keep\n", user_id=1)
        assert wait_final(Api(servers[1].url), job_id)["status"] == "Completed"
        kept = f"kept the log of job {job_id} "
        eventually(lambda: any(kept in server.log() for server in servers), "the log kept")
        time.sleep(3)  # the others heard at once: a copy of theirs would be logged by now
        assert sum(server.log().count(kept) for server in servers) == 1
        logs = httpx.get(f"{servers[2].url}/jobs/{job_id}/logs", timeout=30)
        assert logs.content == b"to keep\n"
        # As if its maker had died before copying: the replicas standing by copy it.
        (copy,) = (tmp_path / "server-data").glob("*/output.log")
        copy.unlink()
        eventually(copy.exists, "a replica standing by to copy the log", 30)
        assert copy.read_bytes() == b"to keep\n"
    finally:
        leftover = running.shutdown()
    assert leftover == []
