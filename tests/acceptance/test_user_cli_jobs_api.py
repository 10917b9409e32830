"""`list`, `logs`, `jobs()`, `logs()`, the details of `status()` and `--callback-url`: the SDK
and the CLI over the issue-13 routes `GET /jobs`, `GET /jobs/{id}`, `GET /jobs/{id}/logs` and
the `callback_url` field of `/upload`.

Each test first checks that the server's OpenAPI document has the routes (or the field) it
needs and skips ("route not on this branch") otherwise, so this module runs as soon as they
are merged.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from job_orchestrator.sdk import AsyncClient, Client, JobNotFound, Status
from testkit.harness import Cluster, cluster
from tests.acceptance import test_user_cli as user_cli
from tests.callback_receiver import CallbackReceiver

FINAL = ("Completed", "Failed", "Invalid", "Killed", "Cleaned")
UNKNOWN_ID = 987654
LINE_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("jobs-api")) as started:
        yield started


def need(cl: Cluster, *routes: str) -> None:
    """Skip unless the server documents every route (parameter names do not matter)."""
    assert cl.server is not None
    document = httpx.get(f"{cl.server.url}/api-docs/openapi.json", timeout=30).json()
    documented = {re.sub(r"\{[^}]*\}", "{}", path) for path in document["paths"]}
    missing = [route for route in routes if re.sub(r"\{[^}]*\}", "{}", route) not in documented]
    if missing:
        pytest.skip(f"route not on this branch: {', '.join(missing)}")


def need_upload_field(cl: Cluster, name: str) -> None:
    assert cl.server is not None
    document = httpx.get(f"{cl.server.url}/api-docs/openapi.json", timeout=30).json()
    body = document["paths"]["/upload"]["post"]["requestBody"]["content"]
    if name not in body["multipart/form-data"]["schema"]["properties"]:
        pytest.skip(f"route not on this branch: /upload field {name}")


def url(cl: Cluster) -> str:
    assert cl.server is not None
    return cl.server.url


def cli(cl: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return user_cli.cli(url(cl), *args)


def cli_process(cl: Cluster, *args: str) -> subprocess.Popen[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("JO_")}
    env["JO_SERVER"] = url(cl)
    return subprocess.Popen(
        [sys.executable, "-m", "job_orchestrator", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(process: subprocess.Popen[str], timeout_s: float = LINE_TIMEOUT_S) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    assert ready, "no output line in time"
    return process.stdout.readline()


def finished_jobs(cl: Cluster, count: int) -> list[int]:
    ids = [cl.api.submit(f"echo {index} > out.txt\n") for index in range(count)]
    for job_id in ids:
        cl.api.wait_for(job_id, *FINAL)
    return ids


def gated(gate: Path) -> str:
    return f"echo line-one\nwhile [ ! -e '{gate}' ]; do sleep 0.1; done\necho line-two >&2\n"


# ---- GET /jobs ------------------------------------------------------------------------------


def test_cli_list_shows_jobs_newest_first(running: Cluster) -> None:
    need(running, "/jobs")
    ids = finished_jobs(running, 3)
    listed = cli(running, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    shown = [job["id"] for job in json.loads(listed.stdout)]
    assert shown == sorted(shown, reverse=True)
    assert set(ids) <= set(shown)
    completed = cli(running, "list", "--status", "Completed", "--service", "example", "--json")
    assert completed.returncode == 0, completed.stderr
    jobs = json.loads(completed.stdout)
    assert jobs
    assert {job["status"] for job in jobs} == {"Completed"}
    limited = cli(running, "list", "--limit", "2", "--json")
    assert len(json.loads(limited.stdout)) == 2
    table = cli(running, "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "SERVICE", "USER", "CREATED", "MESSAGE"]
    assert lines[1].split()[:4] == [str(max(shown)), "Completed", "example", "1"]


def test_jobs_iterates_every_page(running: Cluster) -> None:
    need(running, "/jobs")
    ids = finished_jobs(running, 5)
    with Client(url(running)) as jo:
        paged = [job.id for job in jo.jobs(page_size=2)]
        whole = [job.id for job in jo.jobs(page_size=500)]
        assert paged == whole
        assert set(ids) <= set(paged)
        assert paged == sorted(paged, reverse=True)
        mine = list(jo.jobs(user_id=1, status=Status.COMPLETED, service="example", page_size=2))
        assert {job.status for job in mine} == {Status.COMPLETED}
        assert set(ids) <= {job.id for job in mine}


async def test_async_jobs_iterates_every_page(running: Cluster) -> None:
    need(running, "/jobs")
    ids = finished_jobs(running, 3)
    async with AsyncClient(url(running)) as jo:
        paged = [job.id async for job in jo.jobs(page_size=2)]
    assert set(ids) <= set(paged)
    assert paged == sorted(paged, reverse=True)


# ---- GET /jobs/{id} -------------------------------------------------------------------------


def test_status_has_the_details(running: Cluster) -> None:
    need(running, "/jobs/{id}")
    (job_id,) = finished_jobs(running, 1)
    with Client(url(running)) as jo:
        job = jo.status(job_id)
    assert (job.id, job.status, job.service, job.user_id) == (
        job_id,
        Status.COMPLETED,
        "example",
        1,
    )
    assert job.created_at is not None
    assert job.finished_at is not None
    assert job.created_at <= job.finished_at
    assert job.client is not None
    assert job.queue is None
    shown = cli(running, "status", str(job_id))
    assert "service:   example" in shown.stdout


# ---- GET /jobs/{id}/logs --------------------------------------------------------------------


def test_logs_of_a_finished_job(running: Cluster) -> None:
    need(running, "/jobs/{id}/logs")
    job_id = running.api.submit("echo to-stdout\necho to-stderr >&2\n")
    running.api.wait_for(job_id, *FINAL)
    with Client(url(running)) as jo:
        text = "".join(jo.logs(job_id))
        assert "to-stdout\n" in text
        assert "to-stderr\n" in text
        with pytest.raises(JobNotFound):
            list(jo.logs(UNKNOWN_ID))
    printed = cli(running, "logs", str(job_id))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == text
    unknown = cli(running, "logs", str(UNKNOWN_ID))
    assert unknown.returncode == 4
    assert unknown.stderr.strip() == f"job-orchestrator: job {UNKNOWN_ID} not found"


def test_cli_logs_follow_prints_a_line_before_the_job_ends(
    running: Cluster, tmp_path: Path
) -> None:
    need(running, "/jobs/{id}/logs")
    gate = tmp_path / "go"
    job_id = running.api.submit(gated(gate))
    running.api.wait_for(job_id, "Running")
    process = cli_process(running, "logs", str(job_id), "--follow")
    try:
        assert read_line(process) == "line-one\n"
        assert running.api.status(job_id)["status"] == "Running"
        gate.touch()
        rest, errors = process.communicate(timeout=LINE_TIMEOUT_S)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, errors
    assert "line-two\n" in rest
    assert running.api.status(job_id)["status"] == "Completed"


async def test_async_logs_follow(running: Cluster, tmp_path: Path) -> None:
    need(running, "/jobs/{id}/logs")
    gate = tmp_path / "go"
    job_id = running.api.submit(gated(gate))
    running.api.wait_for(job_id, "Running")
    seen = ""
    async with AsyncClient(url(running)) as jo:
        async for chunk in jo.logs(job_id, follow=True):
            seen += chunk
            if "line-one\n" in seen and not gate.exists():
                assert running.api.status(job_id)["status"] == "Running"
                gate.touch()
    assert "line-two\n" in seen
    assert running.api.wait_for(job_id, *FINAL, timeout_s=10)["status"] == "Completed"


# ---- callback_url ---------------------------------------------------------------------------

CALLBACK_SECRET = f"sdk-callbacks-{secrets.token_hex(16)}"


@pytest.fixture(scope="module")
def with_callbacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env = {"CALLBACK_SECRET": CALLBACK_SECRET, "CALLBACK_ALLOW": "127.0.0.0/8"}
    with cluster(tmp_path_factory.mktemp("callbacks"), server_env=env) as started:
        yield started


def test_submit_with_a_callback_url(with_callbacks: Cluster, tmp_path: Path) -> None:
    need_upload_field(with_callbacks, "callback_url")
    job = tmp_path / "job"
    job.mkdir()
    (job / "run.sh").write_text("echo called > out.txt\n")
    with CallbackReceiver() as receiver:
        callback_url = f"{receiver.url}/done"
        args = ("submit", str(job), "--service", "example", "--callback-url", callback_url)
        done = user_cli.cli(url(with_callbacks), *args, "--wait")
        assert done.returncode == 0, done.stderr
        job_id = user_cli.submitted_id(done.stdout)
        (request,) = receiver.wait_for(1, timeout_s=LINE_TIMEOUT_S)
    assert json.loads(request.body) == {"id": job_id, "status": "Completed", "message": ""}
    assert request.signed_with(CALLBACK_SECRET, url=callback_url)
    refused = user_cli.cli(
        url(with_callbacks),
        "submit",
        str(job),
        "--service",
        "example",
        "--callback-url",
        "ftp://127.0.0.1/x",
    )
    assert refused.returncode == 1
    assert "Invalid callback_url" in refused.stderr
    assert "(HTTP 400)" in refused.stderr
