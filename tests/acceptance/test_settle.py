"""`?settle=` on our client's long-poll: short-lived statuses are not reported, with real processes.

The server asks its clients to report a status only once it has held for STATUS_SETTLE, so
a trivial job costs one held /retrieve; a job longer than that is still seen Running, and a
payload held as Prepared for a MAX_CONCURRENT slot still renews its SERVER_LEASE and starts.
"""

from __future__ import annotations

import datetime
import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testkit.harness import Api, Cluster, cluster

STARTED_AGE = "x-orchestrator-started-age"
FINAL = ("Completed", "Failed", "Invalid", "Killed", "Cleaned")


def retrieves(cl: Cluster) -> float:
    """How many /retrieve calls the server has made to its (one) client so far."""
    assert cl.server is not None
    response = httpx.get(f"{cl.server.url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    client = f"{cl.clients[0].url}/submit"
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "job_orchestrator_client_call_seconds_count"
        and sample.labels.get("call") == "retrieve"
        and sample.labels.get("client") == client
    )


def details(api: Api, job_id: int) -> dict[str, Any]:
    response = httpx.get(f"{api.base_url}/jobs/{job_id}", timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def seconds(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def assert_times_in_order(body: dict[str, Any]) -> None:
    assert body["started_at"] is not None, body
    created, started = seconds(body["created_at"]), seconds(body["started_at"])
    # RFC 3339 with milliseconds: allow the rounding.
    assert created - 0.001 <= started <= seconds(body["finished_at"]) + 0.001, body


@pytest.fixture(scope="module")
def slow_settle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A settle far longer than a trivial job, even on a loaded machine."""
    with cluster(tmp_path_factory.mktemp("settle"), server_env={"STATUS_SETTLE": "2"}) as running:
        yield running


def test_a_trivial_job_completes_with_one_held_retrieve(slow_settle: Cluster) -> None:
    api = slow_settle.api
    before = retrieves(slow_settle)
    job_id = api.submit("echo done > out.txt\n")
    assert api.wait_for(job_id, *FINAL)["status"] == "Completed"
    assert retrieves(slow_settle) - before == 1
    assert api.download_zip(job_id).read("out.txt") == b"done\n"
    # The server never saw it Running; the client's age header dates its start.
    assert_times_in_order(details(api, job_id))


def client_started_at(cl: Cluster, marker: str) -> float:
    """run.sh's start as the client recorded it (its state file), for the run.sh with marker."""
    for script in (cl.root / "client0").glob("*/work/run.sh"):
        if marker in script.read_text():
            state = json.loads((script.parent.parent / "state.json").read_text())
            return float(state["started_at"])
    raise AssertionError(f"no payload with {marker!r} on the client")


def test_a_job_longer_than_settle_is_seen_running_first(tmp_path: Path) -> None:
    settle_s = 1.0
    with cluster(tmp_path, server_env={"STATUS_SETTLE": f"{settle_s:g}"}) as cl:
        before = retrieves(cl)
        marker = f"settle-{time.time_ns()}"
        job_id = cl.api.submit(f"# {marker}\nsleep 3\necho done > out.txt\n")
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = details(cl.api, job_id)["status"]
            if not seen or seen[-1] != status:
                seen.append(status)
            if status in FINAL:
                break
            time.sleep(0.05)
        assert "Running" in seen, seen
        assert seen[-1] == "Completed", seen
        order = ["Queued", "Processing", "Submitted", "Prepared", "Running", "Completed"]
        assert seen == sorted(seen, key=order.index), seen
        body = details(cl.api, job_id)
        assert_times_in_order(body)
        # Reported Running `settle` after it started, but dated back to the client's start
        # (the age header), not to when the server heard of it: that would be `settle` later.
        late_by = seconds(body["started_at"]) - client_started_at(cl, marker)
        assert late_by < settle_s / 2, (late_by, body)
        # Submitted -> Running (held `settle`), Running -> Completed; Prepared only if slow.
        assert retrieves(cl) - before <= 3


def submit(client_url: str, script: str) -> int:
    response = httpx.post(
        f"{client_url}/submit", files={"run.sh": ("run.sh", script.encode())}, timeout=30
    )
    assert response.status_code == 200, response.text
    payload_id = response.json()["id"]
    assert isinstance(payload_id, int)
    return payload_id


def test_without_settle_the_client_answers_the_first_change(slow_settle: Cluster) -> None:
    url = slow_settle.clients[0].url
    payload_id = submit(url, "sleep 30\n")
    try:
        started = time.monotonic()
        response = httpx.get(f"{url}/retrieve/{payload_id}?wait=10&known=Prepared", timeout=30)
        assert response.json()["status"] == "Running"
        assert time.monotonic() - started < 1.0
        assert float(response.headers[STARTED_AGE]) < 1.0
        # With settle, a Running that has not held for 1.5 s yet is held back.
        response = httpx.get(
            f"{url}/retrieve/{payload_id}?wait=10&known=Prepared&settle=1.5", timeout=30
        )
        assert response.json()["status"] == "Running"
        assert response.headers["x-orchestrator-long-poll"] == "1"
        assert float(response.headers[STARTED_AGE]) >= 1.5
    finally:
        assert httpx.post(f"{url}/kill/{payload_id}", timeout=30).status_code == 200


def test_with_settle_a_trivial_payload_is_answered_final(slow_settle: Cluster) -> None:
    url = slow_settle.clients[0].url
    payload_id = submit(url, "echo hi > out.txt\n")
    started = time.monotonic()
    response = httpx.get(
        f"{url}/retrieve/{payload_id}?wait=20&known=Prepared&settle=10", timeout=30
    )
    assert time.monotonic() - started < 10
    assert response.headers["content-type"] == "application/zip"
    assert zipfile.ZipFile(io.BytesIO(response.content)).read("out.txt") == b"hi\n"
    assert 0 <= float(response.headers[STARTED_AGE]) < 10


def test_a_payload_held_for_a_slot_past_its_lease_still_starts(tmp_path: Path) -> None:
    """MAX_CONCURRENT=1 and a short SERVER_LEASE: the held long-polls must keep renewing it."""
    gate = tmp_path / "go"
    with cluster(
        tmp_path,
        server_env={"STATUS_SETTLE": "0.2"},
        client_env={"MAX_CONCURRENT": "1", "SERVER_LEASE": "0.6"},
    ) as cl:
        first = cl.api.submit(f"while [ ! -e '{gate}' ]; do sleep 0.05; done\n")
        cl.api.wait_for(first, "Running")
        second = cl.api.submit("echo second > out.txt\n")
        cl.api.wait_for(second, "Prepared")
        time.sleep(3)  # five leases
        assert cl.api.status(second)["status"] == "Prepared"
        gate.touch()
        assert cl.api.wait_for(first, *FINAL)["status"] == "Completed"
        assert cl.api.wait_for(second, *FINAL)["status"] == "Completed"
        assert cl.api.download_zip(second).read("out.txt") == b"second\n"
        assert_times_in_order(details(cl.api, second))
        assert cl.shutdown() == []
