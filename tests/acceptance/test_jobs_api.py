"""GET /jobs/{id} and GET /jobs with real server and client processes (issue 13 item 3).

Details of finished and running jobs (times, client, exit code from our client's header), why
a queued job waits (user quota, service limit, no healthy client), keyset pages and filters,
400s for bad query values, and the API_TOKENS_FILE ownership rules.
"""

from __future__ import annotations

import datetime
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit import eventually
from testkit.harness import Api, Cluster, cluster

SLEEP = "sleep 60\n"
FINAL = ("Completed", "Failed", "Invalid", "Killed", "Cleaned")
RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def details(api: Api, job_id: int | str) -> httpx.Response:
    return httpx.get(f"{api.base_url}/jobs/{job_id}", headers=api.headers, timeout=30)


def job(api: Api, job_id: int) -> dict[str, Any]:
    response = details(api, job_id)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def listing(api: Api, **params: str | int) -> httpx.Response:
    return httpx.get(f"{api.base_url}/jobs", params=params, headers=api.headers, timeout=30)


def pages(api: Api, **params: str | int) -> list[list[int]]:
    """Every page of GET /jobs, following next_cursor."""
    walked: list[list[int]] = []
    cursor: str | None = None
    while True:
        response = listing(api, **params, **({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.text
        body = response.json()
        walked.append([item["id"] for item in body["jobs"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return walked


def parse_time(text: str) -> float:
    assert RFC3339_MS.fullmatch(text), text
    return datetime.datetime.fromisoformat(text).timestamp()


def terminate(api: Api, *job_ids: int) -> None:
    for job_id in job_ids:
        httpx.post(f"{api.base_url}/terminate/{job_id}", headers=api.headers, timeout=30)


@pytest.fixture(scope="module")
def quotas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """RUNS_PER_USER=1 and MAX_RUNS=3, so two sleeping jobs show each wait reason."""
    env = {"SERVICE_EXAMPLE_RUNS_PER_USER": "1", "SERVICE_EXAMPLE_MAX_RUNS": "3"}
    with cluster(tmp_path_factory.mktemp("jobs-api"), server_env=env) as running:
        yield running


def test_a_completed_job_shows_its_times_client_and_exit_code(quotas: Cluster) -> None:
    api = quotas.api
    before = time.time()
    job_id = api.submit("echo done > out.txt\n", user_id=10)
    api.wait_for(job_id, *FINAL)
    body = job(api, job_id)
    assert body["id"] == job_id
    assert body["status"] == "Completed"
    assert body["service"] == "example"
    assert body["user_id"] == 10
    assert body["client"] == quotas.clients[0].url
    assert body["exit_code"] == 0
    assert body["queue"] is None
    assert body["callback_url"] is None
    created, finished = parse_time(body["created_at"]), parse_time(body["finished_at"])
    assert before - 1 <= created <= finished
    if body["started_at"] is not None:  # null when the server never saw it Running
        assert created <= parse_time(body["started_at"]) <= finished


def test_a_failed_job_shows_run_sh_exit_status(quotas: Cluster) -> None:
    api = quotas.api
    job_id = api.submit("echo oops >&2\nexit 3\n", user_id=10)
    assert api.wait_for(job_id, *FINAL)["status"] == "Failed"
    body = job(api, job_id)
    assert body["status"] == "Failed"
    assert body["exit_code"] == 3
    # The status, then the last line the script printed (the logs feature adds it).
    assert body["message"] == "run.sh exited with status 3: oops"


def test_a_job_waiting_on_its_users_quota_says_so(quotas: Cluster) -> None:
    api = quotas.api
    running = api.submit(SLEEP, user_id=12)
    try:
        api.wait_for(running, "Running")
        body = job(api, running)
        assert body["status"] == "Running"
        assert parse_time(body["started_at"]) >= parse_time(body["created_at"])
        assert body["finished_at"] is None
        assert body["exit_code"] is None
        assert body["client"] == quotas.clients[0].url

        waiting = api.submit("true\n", user_id=12)
        body = job(api, waiting)
        assert body["status"] == "Queued"
        assert body["client"] is None
        assert body["queue"] == {
            "position": 1,
            "reason": "user_quota",
            "detail": "user 12 has 1 of RUNS_PER_USER=1 running",
        }
        # The original's route keeps its answer, empty message included.
        assert api.status(waiting) == {"id": waiting, "status": "Queued", "message": ""}
    finally:
        terminate(api, running)
    assert api.wait_for(waiting, *FINAL)["status"] == "Completed"
    assert job(api, waiting)["queue"] is None
    killed = job(api, running)
    assert killed["status"] == "Killed"
    assert killed["finished_at"] is not None


def test_a_job_waiting_on_the_service_limit_says_so(quotas: Cluster) -> None:
    api = quotas.api
    sleepers = [api.submit(SLEEP, user_id=user) for user in (13, 14, 15)]
    try:
        for job_id in sleepers:
            api.wait_for(job_id, "Running")
        waiting = api.submit("true\n", user_id=16)
        second = api.submit("true\n", user_id=16)
        assert job(api, waiting)["queue"] == {
            "position": 1,
            "reason": "service_limit",
            "detail": "service example has 3 of MAX_RUNS=3 running",
        }
        assert job(api, second)["queue"]["position"] == 2
    finally:
        terminate(api, *sleepers)
    assert api.wait_for(second, *FINAL)["status"] == "Completed"


def test_listing_pages_newest_first_and_filters(quotas: Cluster) -> None:
    api = quotas.api
    ours = [api.submit("true\n", user_id=20) for _ in range(5)]
    failing = api.submit("exit 1\n", user_id=21)
    for job_id in [*ours, failing]:
        api.wait_for(job_id, *FINAL)

    newest_first = ours[::-1]
    assert pages(api, user_id=20, limit=2) == [
        newest_first[:2],
        newest_first[2:4],
        newest_first[4:],
    ]
    assert pages(api, user_id=20) == [newest_first]
    assert pages(api, user_id=20, limit=5) == [newest_first]
    assert pages(api, user_id=20, status="Completed", service="example") == [newest_first]
    assert pages(api, user_id=20, status="Failed") == [[]]
    assert pages(api, user_id=21, status="Failed") == [[failing]]
    assert pages(api, user_id=20, service="nope") == [[]]

    everything = [job_id for page in pages(api, limit=3) for job_id in page]
    assert everything == sorted(everything, reverse=True)
    assert set(ours) | {failing} <= set(everything)
    item = listing(api, user_id=21).json()["jobs"][0]
    assert item == {**job(api, failing), "queue": None}
    assert item["exit_code"] == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("limit", "0"),
        ("limit", "501"),
        ("limit", "-1"),
        ("limit", "ten"),
        ("limit", ""),
        ("status", "queued"),
        ("status", "Bogus"),
        ("cursor", "abc"),
        ("cursor", "0"),
        ("cursor", "-5"),
        ("user_id", "x"),
        ("user_id", "99999999999"),
    ],
)
def test_bad_list_parameters_get_400(quotas: Cluster, name: str, value: str) -> None:
    response = listing(quotas.api, **{name: value})
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"id", "status", "message"}
    assert body["status"] == "Unknown"
    assert name in body["message"]


def test_unknown_job_is_404_like_download(quotas: Cluster) -> None:
    api = quotas.api
    response = details(api, 4_000_000_000)
    original = httpx.get(f"{api.base_url}/download/4000000000", timeout=30)
    assert response.status_code == original.status_code == 404
    assert response.json() == original.json()
    bad = details(api, "abc")
    assert bad.status_code == 400
    assert bad.text == httpx.get(f"{api.base_url}/download/abc", timeout=30).text


def test_routes_are_in_the_openapi_document(quotas: Cluster) -> None:
    assert quotas.server is not None
    spec = httpx.get(f"{quotas.server.url}/api-docs/openapi.json", timeout=30).json()
    assert spec["paths"]["/jobs/{id}"]["get"]["tags"] == ["jobs"]
    assert spec["paths"]["/jobs"]["get"]["tags"] == ["jobs"]
    names = [p["name"] for p in spec["paths"]["/jobs"]["get"]["parameters"]]
    assert names == ["user_id", "status", "service", "limit", "cursor"]
    schemas = spec["components"]["schemas"]
    assert {"JobDetails", "JobQueue", "JobList"} <= set(schemas)
    assert [tag["name"] for tag in spec["tags"]] == ["files", "health"]


def test_no_healthy_client_is_the_reason_when_the_client_is_down(tmp_path: Path) -> None:
    with cluster(tmp_path, server_env={"NODE_CHECK_INTERVAL": "0.2"}) as running:
        api = running.api
        running.clients[0].stop()
        job_id = api.submit("true\n", user_id=30)
        queue = eventually(
            lambda: (
                (body := job(api, job_id))["queue"]
                and body["queue"]["reason"] == "no_healthy_client"
                and body["queue"]
            ),
            "reported no_healthy_client",
        )
        assert queue["position"] == 1
        assert queue["detail"].startswith("no client of service example answers its health checks")


TOKEN_A, TOKEN_B = f"a-{secrets.token_hex(16)}", f"b-{secrets.token_hex(16)}"


def test_with_tokens_users_see_only_their_own_jobs(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"{TOKEN_A} 1\n{TOKEN_B} 2\n")
    with cluster(tmp_path, server_env={"API_TOKENS_FILE": str(tokens)}) as running:
        assert running.server is not None
        as_a = Api(running.server.url, token=TOKEN_A)
        as_b = Api(running.server.url, token=TOKEN_B)
        anonymous = Api(running.server.url)
        mine = as_a.submit("true\n", user_id=None)
        theirs = as_b.submit("true\n", user_id=None)
        for who, job_id in ((as_a, mine), (as_b, theirs)):
            who.wait_for(job_id, *FINAL)

        assert job(as_a, mine)["user_id"] == 1
        hidden = details(as_b, mine)
        assert hidden.status_code == 404
        # Exactly what an id nobody has gets.
        assert hidden.json() == {
            "id": 0,
            "status": "Unknown",
            "message": f"Job {mine} not found in the database",
        }
        for route in (f"/jobs/{mine}", "/jobs"):
            refused = httpx.get(f"{running.server.url}{route}", timeout=30)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
        assert listing(anonymous).status_code == 401

        assert pages(as_a) == [[mine]]
        assert pages(as_b) == [[theirs]]
        assert pages(as_a, user_id=2) == [[]]
        assert pages(as_a, user_id=1) == [[mine]]
