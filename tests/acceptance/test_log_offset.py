"""A log offset past the end answers 416, never a traceback (issue 21, finding 10).

On the server, whether the log is its own copy (a final job) or relayed from the client (a
running one), with and without `follow`, and on the client's own /logs route. Real server and
client processes (testkit/harness.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from testkit import eventually
from testkit.harness import cluster
from tests.acceptance.test_failure_semantics import FINAL

HUGE = str(2**63 - 1)  # the largest offset the routes accept: seeking there raised OSError


def log(base: str, job_id: int, query: str) -> httpx.Response:
    return httpx.get(f"{base}/jobs/{job_id}/logs?{query}", timeout=60)


def assert_past_the_end(answer: httpx.Response, job: dict[str, Any], size: int) -> None:
    assert answer.status_code == 416, answer.text
    assert answer.headers["content-range"] == f"bytes */{size}"
    body = answer.json()
    assert body["id"] == job["id"]
    assert body["status"] == job["status"]
    assert "past the end of the log" in body["message"], body


def test_an_offset_past_the_end_of_a_kept_log_is_416(tmp_path: Path) -> None:
    with cluster(tmp_path) as cl:
        job_id = cl.api.submit("echo hello\n")
        job = cl.api.wait_for(job_id, *FINAL)
        assert job["status"] == "Completed"
        eventually(lambda: list((tmp_path / "server-data").glob("*/output.log")), "the kept log")
        base = cl.api.base_url
        assert log(base, job_id, "offset=6").content == b""  # the end itself: nothing more
        assert log(base, job_id, "offset=4").content == b"o\n"
        for query in ("offset=7", f"offset={HUGE}", f"offset={HUGE}&follow=1", "offset=7&follow=1"):
            assert_past_the_end(log(base, job_id, query), job, 6)
        assert cl.server is not None
        assert "Traceback" not in cl.server.log()


def test_an_offset_past_the_end_of_a_running_jobs_log_is_416(tmp_path: Path) -> None:
    with cluster(tmp_path) as cl:
        job_id = cl.api.submit("echo started\nsleep 300\n")
        cl.api.wait_for(job_id, "Running")
        base = cl.api.base_url
        eventually(lambda: log(base, job_id, "").content == b"started\n", "the first line")
        job = cl.api.status(job_id)
        for query in ("offset=9", f"offset={HUGE}", f"offset={HUGE}&follow=1", "offset=9&follow=1"):
            assert_past_the_end(log(base, job_id, query), job, 8)
        assert log(base, job_id, "offset=8").content == b""

        # The client's own route, as the server asks it.
        client = cl.clients[0].url
        answer = httpx.get(f"{client}/logs/1?offset={HUGE}", timeout=30)
        assert answer.status_code == 416
        assert answer.headers["content-range"] == "bytes */8"
        assert httpx.get(f"{client}/logs/1?offset=8", timeout=30).content == b""
        assert httpx.get(f"{client}/logs/1?offset=7", timeout=30).content == b"\n"

        assert httpx.post(f"{base}/terminate/{job_id}", timeout=60).status_code == 200
        assert cl.server is not None
        assert "Traceback" not in cl.server.log()
        assert "Traceback" not in cl.clients[0].log()


def test_an_offset_into_a_log_not_written_yet_is_416(tmp_path: Path) -> None:
    with cluster(tmp_path, server_env={"SERVICE_EXAMPLE_MAX_RUNS": "1"}) as cl:
        blocker = cl.api.submit("sleep 300\n")
        cl.api.wait_for(blocker, "Running")
        queued = cl.api.submit("echo later\n")
        job = cl.api.status(queued)
        assert job["status"] == "Queued"
        assert_past_the_end(log(cl.api.base_url, queued, "offset=1&follow=1"), job, 0)
        assert log(cl.api.base_url, queued, "offset=0").content == b""
        httpx.post(f"{cl.api.base_url}/terminate/{blocker}", timeout=60)
