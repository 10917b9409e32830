"""A job is only ever spoken about with the client it was dispatched to (issue 21, item 5).

Job J runs on client A as its payload 1; client B runs another job's payload, also id 1,
which prints a secret and writes a secret file. The server is then restarted with A gone:
removed from the service, or A's address now served by B. Whatever the user asks about J
(its log, partial files, result, termination), B's payload is never read or killed.
Real server and client processes (testkit/harness.py).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import httpx

from testkit import eventually
from testkit.harness import Cluster, Node
from tests.acceptance.test_failure_semantics import FINAL, processes_running

JOB_SCRIPT = "echo job-j-output\necho mine > j.txt\nsleep 300\n"
OTHER_SCRIPT = "echo B-SECRET-OUTPUT\necho secret > b-secret.txt\nsleep 301\n"


def submit_directly(client: Node, script: str) -> int:
    """A payload of another job on `client`, as another server would have sent it."""
    answer = httpx.post(
        f"{client.url}/submit", files=[("file", ("run.sh", script.encode()))], timeout=60
    )
    assert answer.status_code == 200, answer.text
    payload_id = answer.json()["id"]
    assert isinstance(payload_id, int)
    return payload_id


def payload_status(client: Node, payload_id: int) -> str:
    answer = httpx.get(f"{client.url}/retrieve/{payload_id}", timeout=30)
    status: str = answer.json()["status"]
    return status


def start_job_on_a(cl: Cluster) -> tuple[Node, int]:
    client_a = cl.add_client()
    cl.start_server()
    job_id = cl.api.submit(JOB_SCRIPT)
    cl.api.wait_for(job_id, "Running")
    assert payload_status(client_a, 1) == "Running"  # J is A's payload 1
    return client_a, job_id


def assert_no_read_reaches_b(cl: Cluster, job_id: int) -> None:
    """J's log and partial files: none of B's payload's."""
    base = cl.api.base_url
    log = httpx.get(f"{base}/jobs/{job_id}/logs", timeout=60)
    assert b"B-SECRET" not in log.content, log.content
    partial = httpx.get(f"{base}/download_partial/{job_id}", timeout=60)
    if partial.headers.get("content-type") == "application/zip":
        names = zipfile.ZipFile(io.BytesIO(partial.content)).namelist()
        assert "b-secret.txt" not in names, names


def assert_nothing_of_b_reaches_the_job(cl: Cluster, job_id: int) -> None:
    """Log (plain and followed), partial files, result and terminate of J: none is B's."""
    base = cl.api.base_url
    assert_no_read_reaches_b(cl, job_id)
    terminated = httpx.post(f"{base}/terminate/{job_id}", timeout=60)
    assert terminated.status_code in (200, 409), terminated.text
    final = cl.api.wait_for(job_id, *FINAL, timeout_s=90)
    download = httpx.get(f"{base}/download/{job_id}", timeout=60)
    if download.headers.get("content-type") == "application/zip":
        names = zipfile.ZipFile(io.BytesIO(download.content)).namelist()
        assert "b-secret.txt" not in names, names
    followed = httpx.get(f"{base}/jobs/{job_id}/logs?follow=1", timeout=90)
    assert b"B-SECRET" not in followed.content, followed.content
    assert final["status"] in ("Failed", "Killed"), final


def test_a_job_whose_client_left_the_service_never_reaches_another_client(
    tmp_path: Path,
) -> None:
    cl = Cluster(tmp_path)
    try:
        client_a, job_id = start_job_on_a(cl)
        client_b = cl.add_client()
        assert submit_directly(client_b, OTHER_SCRIPT) == 1
        eventually(lambda: processes_running(cl, "sleep 301"), "B's payload to run")
        assert cl.server is not None
        assert cl.server.stop() == 0
        cl.server.env["SERVICE_EXAMPLE_CLIENTS"] = client_b.url  # A removed from the service
        cl.server.start()
        assert_no_read_reaches_b(cl, job_id)

        body = cl.api.wait_for(job_id, *FINAL, timeout_s=60)
        assert body["status"] == "Failed", body
        assert "no longer configured" in body["message"], body
        assert f"127.0.0.1:{client_a.port}" in body["message"], body  # which client left
        assert_nothing_of_b_reaches_the_job(cl, job_id)

        assert payload_status(client_b, 1) == "Running"
        assert processes_running(cl, "sleep 301"), "B's payload was killed"
    finally:
        cl.shutdown()


def test_a_client_now_at_the_job_clients_address_is_never_taken_for_it(tmp_path: Path) -> None:
    cl = Cluster(tmp_path)
    try:
        client_a, job_id = start_job_on_a(cl)
        assert cl.server is not None
        assert cl.server.stop() == 0
        assert client_a.stop() == 0  # J's script goes on running, nobody asks about it
        # Client B now answers at A's address, with another job's payload 1 running.
        client_b = cl.add_client(start=False)
        client_b.port = client_a.port
        client_b.env["PORT"] = str(client_a.port)
        client_b.start()
        assert submit_directly(client_b, OTHER_SCRIPT) == 1
        eventually(lambda: processes_running(cl, "sleep 301"), "B's payload to run")
        cl.server.start()
        assert_no_read_reaches_b(cl, job_id)

        # B refuses to answer for J (another dispatch key): J is dispatched again, to B.
        eventually(
            lambda: "payload 1: it was dispatched with another key" in client_b.log(), "B's refusal"
        )
        assert cl.server is not None
        server = cl.server
        eventually(
            lambda: payload_status(client_b, 2) == "Running",
            "J to run again on B",
            # Failed once in CI, not reproduced (15 runs, 4 at once): what to look at next time.
            detail=lambda: f"server:\n{server.log()[-4000:]}\nclient B:\n{client_b.log()[-3000:]}",
        )
        log = httpx.get(f"{cl.api.base_url}/jobs/{job_id}/logs", timeout=60)
        assert log.content == b"job-j-output\n"
        names = cl.api.download_partial_zip(job_id).namelist()
        assert "j.txt" in names, names
        assert "b-secret.txt" not in names, names
        assert_nothing_of_b_reaches_the_job(cl, job_id)
        assert cl.api.status(job_id)["status"] == "Killed"

        assert payload_status(client_b, 1) == "Running"
        assert processes_running(cl, "sleep 301"), "B's payload was killed"
    finally:
        cl.shutdown()


def test_a_revoked_payload_is_killed_only_if_it_is_still_the_jobs(tmp_path: Path) -> None:
    """The server gave J up (its client unreachable): the kill it owes A spares B's payload."""
    cl = Cluster(tmp_path)
    try:
        client_a = cl.add_client()
        cl.start_server({"RETRY_DEADLINE": "2", "NODE_CHECK_INTERVAL": "0.3"})
        job_id = cl.api.submit(JOB_SCRIPT)
        cl.api.wait_for(job_id, "Running")
        assert client_a.stop() == 0
        body = cl.api.wait_for(job_id, *FINAL, timeout_s=60)
        assert body["message"].startswith("lost contact with the client"), body
        assert cl.server is not None
        assert cl.server.stop() == 0  # the kill of A's payload 1 is still owed (revoked)
        client_b = cl.add_client(start=False)
        client_b.port = client_a.port
        client_b.env["PORT"] = str(client_a.port)
        client_b.start()
        assert submit_directly(client_b, OTHER_SCRIPT) == 1
        eventually(lambda: processes_running(cl, "sleep 301"), "B's payload to run")
        cl.server.start()

        eventually(
            lambda: (
                "payload 1: it was dispatched with another key" in client_b.log()
                or payload_status(client_b, 1) != "Running"
            ),
            "the owed kill to reach B",
        )
        assert payload_status(client_b, 1) == "Running"
        assert processes_running(cl, "sleep 301"), "B's payload was killed"
    finally:
        cl.shutdown()
