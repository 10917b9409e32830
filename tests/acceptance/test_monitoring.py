"""/metrics on server and client, and LOG_FORMAT=json, with real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testkit import eventually
from testkit.harness import Cluster, cluster

METRICS_TOKEN = "metrics-secret"
CLIENT_TOKEN = "client-secret"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, int, int]]:
    """A fresh cluster that ran one Completed and one Failed job; their ids."""
    with cluster(
        tmp_path_factory.mktemp("monitoring"),
        server_env={
            "LOG_FORMAT": "json",
            "METRICS_TOKEN": METRICS_TOKEN,
            "CLIENT_TOKEN": CLIENT_TOKEN,
        },
        client_env={"LOG_FORMAT": "json", "CLIENT_TOKEN": CLIENT_TOKEN},
    ) as running:
        completed = running.api.submit("echo ok > out.txt\n")
        failed = running.api.submit("exit 3\n")
        running.api.wait_for(completed, "Completed")
        running.api.wait_for(failed, "Failed")
        yield running, completed, failed


def scrape(url: str, token: str | None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape_until(url: str, token: str, name: str, expected: float, **labels: str) -> Samples:
    """Scrape until a counter shows `expected`: it is stepped just after the status is stored."""

    def shown() -> Samples | None:
        samples = scrape(url, token)
        return samples if value(samples, name, **labels) == expected else None

    return eventually(shown, f"{name}{labels} to show {expected}", 30)


def test_server_metrics_reflect_the_jobs(monitored: tuple[Cluster, int, int]) -> None:
    running, _completed, _failed = monitored
    assert running.server is not None
    url = running.server.url
    name = "job_orchestrator_jobs_finished_total"
    samples = scrape_until(url, METRICS_TOKEN, name, 1, service="example", outcome="Failed")
    assert value(samples, name, service="example", outcome="Completed") == 1
    assert value(samples, name, service="example", outcome="Failed") == 1
    assert value(samples, "job_orchestrator_jobs", service="example", status="Completed") == 1
    assert value(samples, "job_orchestrator_jobs", service="example", status="Failed") == 1
    assert value(samples, "job_orchestrator_queue_depth", service="example") == 0
    assert value(samples, "job_orchestrator_job_queue_wait_seconds_count", service="example") == 2
    for outcome in ("Completed", "Failed"):
        count = "job_orchestrator_job_run_seconds_count"
        assert value(samples, count, service="example", outcome=outcome) == 1
    client = f"{running.clients[0].url}/submit"
    assert value(samples, "job_orchestrator_client_up", service="example", client=client) == 1
    calls = "job_orchestrator_client_call_seconds_count"
    assert value(samples, calls, client=client, call="submit", outcome="ok") == 2
    assert (value(samples, calls, client=client, call="retrieve", outcome="ok") or 0) >= 2
    assert (value(samples, calls, client=client, call="check", outcome="ok") or 0) >= 1
    operations = "job_orchestrator_store_operations_total"
    assert value(samples, operations, verb="create_job") == 2
    assert (value(samples, operations, verb="transition") or 0) >= 2
    assert (value(samples, "job_orchestrator_store_commits_total") or 0) >= 1
    assert value(samples, "job_orchestrator_store_round_trips_total") == 0  # SQLite: in process


def test_server_metrics_need_the_metrics_token(monitored: tuple[Cluster, int, int]) -> None:
    running, _completed, _failed = monitored
    assert running.server is not None
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = httpx.get(f"{running.server.url}/metrics", headers=headers, timeout=30)
        assert response.status_code == 401
        assert "job_orchestrator" not in response.text


def test_metrics_route_is_marked_in_the_openapi_document(
    monitored: tuple[Cluster, int, int],
) -> None:
    running, _completed, _failed = monitored
    assert running.server is not None
    document = httpx.get(f"{running.server.url}/api-docs/openapi.json", timeout=30).json()
    assert "not in the original" in document["paths"]["/metrics"]["get"]["summary"]


def test_client_metrics_reflect_the_payloads(monitored: tuple[Cluster, int, int]) -> None:
    running, _completed, _failed = monitored
    url = running.clients[0].url
    assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401  # behind CLIENT_TOKEN
    samples = scrape(url, CLIENT_TOKEN)
    payloads = "job_orchestrator_client_payloads"
    assert value(samples, payloads, status="Completed") == 1
    assert value(samples, payloads, status="Failed") == 1
    for outcome in ("Completed", "Failed"):
        assert value(samples, "job_orchestrator_client_runs_total", outcome=outcome) == 1
        assert value(samples, "job_orchestrator_client_run_seconds_count", outcome=outcome) == 1
    assert value(samples, "job_orchestrator_client_executor_errors_total") == 0


def test_json_logs_are_one_object_per_line(monitored: tuple[Cluster, int, int]) -> None:
    running, completed, _failed = monitored
    assert running.server is not None
    server_lines = running.server.log().splitlines()
    client_lines = running.clients[0].log().splitlines()
    assert server_lines
    assert client_lines
    entries = {
        "server": [json.loads(line) for line in server_lines],
        "client": [json.loads(line) for line in client_lines],
    }
    for entry in entries["server"] + entries["client"]:
        assert {"time", "level", "logger", "message"} <= set(entry)
    about_job = [entry for entry in entries["server"] if entry.get("job_id") == completed]
    assert about_job, server_lines
    assert all(entry["service"] == "example" for entry in about_job), about_job
    dispatched = [entry for entry in about_job if "client" in entry]
    assert dispatched, about_job
    assert dispatched[0]["client"] == f"{running.clients[0].url}/submit"
    assert any("payload_id" in entry for entry in entries["client"]), client_lines


@pytest.mark.parametrize("command", ["server", "client"])
def test_bad_log_format_exits_2(command: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "job_orchestrator", command],
        env={**os.environ, "LOG_FORMAT": "xml", "DATA_PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "job-orchestrator: invalid setting LOG_FORMAT: expected text or json, got 'xml'"
    ]


def test_job_gauges_come_from_the_store_after_a_restart(tmp_path: Path) -> None:
    with cluster(tmp_path) as running:
        assert running.server is not None
        job_id = running.api.submit("true\n")
        running.api.wait_for(job_id, "Completed")
        running.server.stop()
        running.server.start()
        samples = scrape(running.server.url, None)
    assert value(samples, "job_orchestrator_jobs", service="example", status="Completed") == 1
    # The counter is this process's: the new one has finished nothing yet.
    finished = "job_orchestrator_jobs_finished_total"
    assert value(samples, finished, service="example", outcome="Completed") is None
