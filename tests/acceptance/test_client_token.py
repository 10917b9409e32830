"""A client that refuses the server's token is visible, gets no jobs, and recovers by itself.

Issue 21, item 11: with different CLIENT_TOKENs on server and client, every job used to fail
at once with "client answered 401" while /status showed the client "up". Real server and
client processes (testkit/harness.py).
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import httpx

from testkit import eventually
from testkit.harness import Cluster
from tests.acceptance.test_failure_semantics import FINAL

REFUSED = "client refused the server's token (check CLIENT_TOKEN)"
WARNING = "refuses the server's token"


def details(cl: Cluster, job_id: int) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{cl.api.base_url}/jobs/{job_id}", timeout=30).json()
    return body


def status_page(cl: Cluster) -> str:
    return html.unescape(httpx.get(f"{cl.api.base_url}/status", timeout=30).text)


def metrics(cl: Cluster) -> str:
    return httpx.get(f"{cl.api.base_url}/metrics", timeout=30).text


def client_state(cl: Cluster, state: str) -> float | None:
    """The client's job_orchestrator_client_state sample for `state` (None: absent)."""
    pattern = rf'job_orchestrator_client_state\{{[^}}]*state="{state}"[^}}]*\}} ([0-9.]+)'
    found = re.search(pattern, metrics(cl))
    return float(found.group(1)) if found else None


def checks_made(cl: Cluster) -> float:
    pattern = r'job_orchestrator_client_call_seconds_count\{[^}]*call="check"[^}]*\} ([0-9.]+)'
    return sum(float(value) for value in re.findall(pattern, metrics(cl)))


def health_cell(cl: Cluster) -> str:
    found = re.search(r'<td class="health">\s*(.*?)\s*</td>', status_page(cl), re.S)
    assert found is not None
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()


def test_a_token_mismatch_shows_holds_jobs_and_heals(tmp_path: Path) -> None:
    cl = Cluster(tmp_path)
    try:
        client = cl.add_client({"CLIENT_TOKEN": "the-clients-token"})
        cl.start_server({"CLIENT_TOKEN": "the-servers-token", "NODE_CHECK_INTERVAL": "0.3"})
        assert cl.server is not None
        eventually(lambda: health_cell(cl) == "unauthorized", "/status to say unauthorized")
        assert REFUSED in status_page(cl)  # as its last error
        assert client_state(cl, "unauthorized") == 1
        assert client_state(cl, "up") == 0

        job_id = cl.api.submit("echo hello > out.txt\n")
        queue = eventually(
            lambda: (
                (details(cl, job_id).get("queue") or {}).get("reason") == "client_unauthorized"
                and details(cl, job_id)["queue"]
            ),
            "the job to wait with the reason",
        )
        assert "check CLIENT_TOKEN" in queue["detail"], queue
        # Several more checks later the job still waits, and the log warned once.
        seen = checks_made(cl)
        eventually(lambda: checks_made(cl) >= seen + 3, "three more checks")
        assert cl.api.status(job_id)["status"] == "Queued"
        assert cl.server.log().count(WARNING) == 1, cl.server.log()

        client.stop()
        client.env["CLIENT_TOKEN"] = "the-servers-token"
        client.start()
        body = cl.api.wait_for(job_id, *FINAL, timeout_s=60)
        assert body["status"] == "Completed", body
        assert cl.api.download_zip(job_id).read("out.txt") == b"hello\n"
        assert health_cell(cl) == "up"
        assert client_state(cl, "up") == 1
        assert "accepts the server's token again" in cl.server.log()
    finally:
        cl.shutdown()


def test_a_dispatch_refused_for_the_token_waits_queued_and_says_why(tmp_path: Path) -> None:
    cl = Cluster(tmp_path)
    try:
        client = cl.add_client({"CLIENT_TOKEN": "shared"})
        # One check at start (the tokens agree then), none after: the dispatch meets the 401.
        cl.start_server({"CLIENT_TOKEN": "shared", "NODE_CHECK_INTERVAL": "3600"})
        eventually(lambda: checks_made(cl) >= 1, "the first check")
        client.stop()
        client.env["CLIENT_TOKEN"] = "changed"
        client.start()

        job_id = cl.api.submit("true\n")
        eventually(lambda: details(cl, job_id)["message"] == REFUSED, "the job to say why")
        body = details(cl, job_id)
        assert body["status"] == "Queued", body
        assert body["queue"]["reason"] == "client_unauthorized", body
        assert health_cell(cl) == "unauthorized"
    finally:
        cl.shutdown()


def test_a_job_on_a_client_that_stops_accepting_the_token_says_so(tmp_path: Path) -> None:
    cl = Cluster(tmp_path)
    try:
        client = cl.add_client({"CLIENT_TOKEN": "shared"})
        cl.start_server(
            {"CLIENT_TOKEN": "shared", "RETRY_DEADLINE": "2", "NODE_CHECK_INTERVAL": "0.3"}
        )
        job_id = cl.api.submit("sleep 300\n")
        cl.api.wait_for(job_id, "Running")
        assert cl.server is not None
        # The server is stopped meanwhile, so it never finds the client merely unreachable.
        assert cl.server.stop() == 0
        client.stop()
        client.env["CLIENT_TOKEN"] = "changed"
        client.start()
        cl.server.start()

        body = cl.api.wait_for(job_id, *FINAL, timeout_s=60)
        assert body["status"] == "Failed", body
        assert body["message"] == REFUSED, body
    finally:
        cl.shutdown()
