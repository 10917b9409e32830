"""The original's known bugs (UPSTREAM §12), each run against its deployment and ours.

Each test states the correct behaviour. On the original it carries a strict expected-failure
marker naming the original's behaviour: if the original ever passes, the marker is stale.
Ours must pass: it does not copy the bug.
"""

from __future__ import annotations

import httpx
import pytest

from testkit.original import SERVICE, TRAP, Fleet

ORIGINAL = "original"
OURS = "ours"


def _bug(behaviour: str) -> list[pytest.MarkDecorator]:
    return [pytest.mark.xfail(strict=True, reason=f"the original {behaviour}")]


def _deployment(fleet: Fleet, kind: str, env: dict[str, str] | None = None) -> Fleet:
    if kind == ORIGINAL:
        fleet.original_client()
        fleet.original_server(env)
    else:
        fleet.our_client()
        fleet.our_server(env)
    return fleet


def _kinds(behaviour: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("kind", [pytest.param(ORIGINAL, marks=_bug(behaviour)), OURS])


@_kinds("marks a Completed job Killed on /terminate, hiding its result (UPSTREAM §12.1.6)")
def test_terminating_a_completed_job_keeps_its_result(fleet: Fleet, kind: str) -> None:
    api = _deployment(fleet, kind).api
    job_id = api.submit(f"{TRAP}echo kept > output.txt\n")
    api.wait_for(job_id, "Completed")
    assert fleet.server is not None
    httpx.post(f"{fleet.server.url}/terminate/{job_id}", timeout=30)
    assert api.status(job_id)["status"] == "Completed"
    assert api.download_zip(job_id).read("output.txt") == b"kept\n"


@_kinds("answers 500 to /terminate of a Queued job and keeps it Queued (UPSTREAM §3.5)")
def test_terminating_a_queued_job_cancels_it(fleet: Fleet, kind: str) -> None:
    # MAX_RUNS=0: both accept the job and keep it Queued (UPSTREAM §1.3).
    api = _deployment(fleet, kind, {f"SERVICE_{SERVICE.upper()}_MAX_RUNS": "0"}).api
    job_id = api.submit(f"{TRAP}true\n")
    assert fleet.server is not None
    response = httpx.post(f"{fleet.server.url}/terminate/{job_id}", timeout=30)
    assert response.status_code == 200, response.text
    assert api.status(job_id)["status"] == "Killed"


@_kinds("leaves the directory and files of a rejected upload on disk (UPSTREAM §12.1.12)")
def test_a_rejected_upload_leaves_nothing_on_disk(fleet: Fleet, kind: str) -> None:
    api = _deployment(fleet, kind).api
    response = api.upload({"run.sh": f"{TRAP}true\n"}, user_id="not a number")
    assert response.status_code == 400
    data = fleet.root / "server-data"
    assert not data.exists() or not any(data.rglob("run.sh"))


@_kinds("client zips output.zip into itself, a partial copy (UPSTREAM §8.2, §12.1.10)")
def test_the_result_zip_does_not_contain_itself(fleet: Fleet, kind: str) -> None:
    api = _deployment(fleet, kind).api
    job_id = api.submit(f"{TRAP}echo x > output.txt\n")
    api.wait_for(job_id, "Completed")
    assert "output.zip" not in api.download_zip(job_id).namelist()


@_kinds("client cannot zip a result with `..` in a file name, e.g. data..csv (UPSTREAM §12.1.11)")
def test_a_result_named_data_dot_dot_csv_is_delivered(fleet: Fleet, kind: str) -> None:
    api = _deployment(fleet, kind).api
    job_id = api.submit(f"{TRAP}echo 1,2 > data..csv\n")
    api.wait_for(job_id, "Completed", timeout_s=15)
    assert api.download_zip(job_id).read("data..csv") == b"1,2\n"


@_kinds("never tells the user why run.sh was rejected: message is empty (UPSTREAM §12.1.23)")
def test_the_reason_for_invalid_reaches_the_user(fleet: Fleet, kind: str) -> None:
    api = _deployment(fleet, kind).api
    job_id = api.submit(f"{TRAP}wget http://example.invalid/x\n")
    body = api.wait_for(job_id, "Invalid", "Failed", "Completed")
    assert body["status"] == "Invalid"
    assert "wget" in body["message"]
