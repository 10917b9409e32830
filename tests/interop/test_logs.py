"""Live logs with the original Rust client and server (docs/api.md, "Live logs").

The original client has no `/logs` route and sends run.sh's output to its own log stream:
our server answers an empty log for its jobs, and a follower's stream ends when the job
ends. The original server knows nothing of logs, but our client's `/logs` works under it.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from testkit import eventually
from testkit.original import TRAP, Fleet, get


def test_our_server_with_the_original_client_has_an_empty_log(fleet: Fleet, tmp_path: Path) -> None:
    fleet.original_client()
    fleet.our_server()
    gate = tmp_path / "go"
    job_id = fleet.api.submit(
        f"{TRAP}echo printed\nwhile [ ! -e {gate} ]; do sleep 0.1; done\necho done > out.txt\n"
    )
    fleet.api.wait_for(job_id, "Running")
    assert fleet.server is not None
    url = f"{fleet.server.url}/jobs/{job_id}/logs"
    running = httpx.get(url, timeout=30)
    assert running.status_code == 200
    assert running.text == ""
    with httpx.stream("GET", f"{url}?follow=1", timeout=60) as follow:
        assert follow.status_code == 200
        gate.touch()
        assert follow.read() == b""  # ends once the job is final
    assert fleet.api.wait_for(job_id, "Completed", "Failed")["status"] == "Completed"
    # The output went where the original puts it: its own log.
    eventually(lambda: "printed" in fleet.clients[0].log(), what="the client's log")
    assert httpx.get(url, timeout=30).text == ""


def test_our_clients_log_under_the_original_server(fleet: Fleet) -> None:
    fleet.our_client()
    fleet.original_server()
    job_id = fleet.api.submit(f"{TRAP}echo to stdout\necho to stderr >&2\nexit 3\n")
    assert fleet.api.wait_for(job_id, "Failed", "Completed")["status"] == "Failed"
    # A fresh client numbers its payloads from 1.
    response = get(f"{fleet.clients[0].url}/logs/1")
    assert response.status_code == 200
    assert response.content == b"to stdout\nto stderr\n"
    assert response.headers["x-orchestrator-status"] == "Failed"
