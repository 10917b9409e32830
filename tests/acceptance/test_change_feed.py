"""One status channel per client (issue 24, item 1), with real processes.

The server follows the running jobs of one of our clients through that client's change feed
(`GET /changes`): while they run it holds no request per job, so its connections to a client
stay a handful whatever the number of running jobs. The feed's own wire (cursor, snapshot,
held wait, token) is read directly from a client.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from testkit.harness import Cluster, cluster
from testkit.waiting import eventually
from tests.acceptance.test_settle import retrieves

RUNNING_JOBS = 30


def connections_to(cl: Cluster, port: int) -> int:
    """The server's established TCP connections to a port (its client's)."""
    assert cl.server is not None
    assert cl.server.process is not None
    server = psutil.Process(cl.server.process.pid)
    return sum(
        1
        for connection in server.net_connections(kind="tcp")
        if connection.raddr
        and connection.raddr.port == port
        and connection.status == psutil.CONN_ESTABLISHED
    )


def test_running_jobs_hold_no_connection_of_their_own(tmp_path: Path) -> None:
    quota = str(RUNNING_JOBS)
    server_env = {
        "SERVICE_EXAMPLE_RUNS_PER_USER": quota,
        "SERVICE_EXAMPLE_MAX_RUNS": quota,
        # Per-job following would ask each job's client every 2 s: it shows at once.
        "LONG_POLL": "2",
    }
    with cluster(tmp_path, server_env=server_env) as cl:
        job_ids = [cl.api.submit("sleep 120\n") for _ in range(RUNNING_JOBS)]
        for job_id in job_ids:
            cl.api.wait_for(job_id, "Running")
        port = cl.clients[0].port
        before = retrieves(cl)
        # Longer than LONG_POLL and than the pool's keep-alive of idle connections (4 s).
        time.sleep(6)
        assert retrieves(cl) == before, "the server asked per job while the jobs ran"
        # The feed's held request, and maybe a health check's: not one per job.
        assert connections_to(cl, port) <= 3
        for job_id in job_ids:
            assert cl.api.status(job_id)["status"] == "Running"


def changes(url: str, query: str = "", **headers: str) -> httpx.Response:
    return httpx.get(f"{url}/changes{query}", headers=headers, timeout=60)


def body(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    parsed: dict[str, Any] = response.json()
    return parsed


def submit(url: str, script: str) -> int:
    response = httpx.post(
        f"{url}/submit", files={"run.sh": ("run.sh", script.encode())}, timeout=30
    )
    assert response.status_code == 200, response.text
    payload_id: int = response.json()["id"]
    return payload_id


def test_the_feed_answers_changes_after_a_cursor_held_until_one_comes(tmp_path: Path) -> None:
    cl = Cluster(tmp_path)
    try:
        url = cl.add_client().url
        first = body(changes(url))
        assert first["snapshot"] is True
        assert first["changes"] == []
        payload_id = submit(url, "sleep 2\n")

        def running() -> dict[str, Any] | None:
            page = body(changes(url, f"?after={first['cursor']}"))
            [entry] = page["changes"]
            return page if entry["status"] == "Running" else None

        page = eventually(running, "the payload to be listed Running", 30)
        [entry] = page["changes"]
        assert entry["id"] == payload_id
        assert entry["started_age"] >= 0
        # Nothing new: held until the payload ends, then it is listed once, final.
        started = time.monotonic()
        ended = body(changes(url, f"?after={page['cursor']}&wait=20"))
        assert time.monotonic() - started > 0.5
        assert [(e["id"], e["status"]) for e in ended["changes"]] == [(payload_id, "Completed")]
        # Held for nothing at most `wait` seconds, with no changes.
        started = time.monotonic()
        idle = body(changes(url, f"?after={ended['cursor']}&wait=1"))
        assert idle["changes"] == []
        assert idle["cursor"] == ended["cursor"]
        assert time.monotonic() - started >= 0.9
        # A cursor of another run of the client (or none at all): a snapshot of everything.
        for stale in ("0123456789ab.1", "garbage"):
            snapshot = body(changes(url, f"?after={stale}"))
            assert snapshot["snapshot"] is True
            assert [e["id"] for e in snapshot["changes"]] == [payload_id]
    finally:
        cl.shutdown()


def test_the_feed_needs_the_client_token(tmp_path: Path) -> None:
    cl = Cluster(tmp_path)
    try:
        url = cl.add_client({"CLIENT_TOKEN": "s3cret"}).url
        assert changes(url).status_code == 401
        assert body(changes(url, Authorization="Bearer s3cret"))["snapshot"] is True
    finally:
        cl.shutdown()


def test_a_restarted_client_answers_a_snapshot_and_its_running_job_is_collected(
    tmp_path: Path,
) -> None:
    with cluster(tmp_path) as cl:
        job_id = cl.api.submit("sleep 4\necho done > out.txt\n")
        cl.api.wait_for(job_id, "Running")
        client = cl.clients[0]
        old = body(changes(client.url))["cursor"]
        client.stop()
        client.start()
        # Its cursors are of its former run: the server's next request gets a snapshot.
        assert body(changes(client.url, f"?after={old}"))["snapshot"] is True
        cl.api.wait_for(job_id, "Completed", timeout_s=60)
        assert cl.api.download_zip(job_id).read("out.txt") == b"done\n"
