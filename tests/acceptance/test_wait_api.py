"""`GET /download/{id}?wait=S`: held until the job is final or S seconds pass, then the
answer is the one without the parameter; out-of-range values are refused with 400."""

from __future__ import annotations

import concurrent.futures
import io
import signal
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit import eventually
from testkit.harness import Cluster, cluster

FINAL = ("Completed", "Failed", "Invalid", "Killed", "Cleaned")
WAIT_CAP_S = 60
#: Headers that differ between two answers of the same content.
VOLATILE = {"date"}
DISCONNECTED = "wait on job {} ended: the caller disconnected"


def gated_script(gate: Path) -> str:
    """A run.sh that runs until the test creates `gate`."""
    return f"while [ ! -e '{gate}' ]; do sleep 0.05; done\necho released > out.txt\n"


def stable_headers(response: httpx.Response) -> list[tuple[str, str]]:
    return [(k, v) for k, v in response.headers.multi_items() if k not in VOLATILE]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("wait")) as started:
        yield started


def download(cl: Cluster, job_id: int, query: str = "", timeout_s: float = 90) -> httpx.Response:
    return httpx.get(f"{cl.api.base_url}/download/{job_id}{query}", timeout=timeout_s)


def test_wait_returns_the_zip_when_the_running_job_completes(
    running: Cluster, tmp_path: Path
) -> None:
    gate = tmp_path / "go"
    job_id = running.api.submit(gated_script(gate))
    running.api.wait_for(job_id, "Running")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(download, running, job_id, f"?wait={WAIT_CAP_S}")
        # Without a wait the answer would be the Running status, the gate not being there yet.
        time.sleep(1)
        gate.touch()
        response = held.result(timeout=90)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip", response.text
    assert zipfile.ZipFile(io.BytesIO(response.content)).read("out.txt") == b"released\n"
    assert response.content == download(running, job_id).content


def test_wait_that_expires_answers_as_without_it(running: Cluster, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    job_id = running.api.submit(gated_script(gate))
    running.api.wait_for(job_id, "Running")
    try:
        waited = download(running, job_id, "?wait=1")
        plain = download(running, job_id)
        assert waited.status_code == plain.status_code == 200
        assert waited.json() == {"id": job_id, "status": "Running", "message": ""}
        assert waited.content == plain.content
        assert stable_headers(waited) == stable_headers(plain)
    finally:
        gate.touch()
    assert running.api.wait_for(job_id, *FINAL)["status"] == "Completed"


@pytest.mark.parametrize(
    ("script", "final"), [("echo ok > out.txt\n", "Completed"), ("exit 3\n", "Failed")]
)
def test_wait_on_a_final_job_answers_at_once(running: Cluster, script: str, final: str) -> None:
    job_id = running.api.submit(script)
    assert running.api.wait_for(job_id, *FINAL)["status"] == final
    # A held request would outlast this deadline: the wait asked for is the cap.
    waited = download(running, job_id, f"?wait={WAIT_CAP_S}", timeout_s=WAIT_CAP_S / 4)
    plain = download(running, job_id)
    assert waited.status_code == plain.status_code == 200
    assert waited.content == plain.content
    assert stable_headers(waited) == stable_headers(plain)


def test_wait_zero_and_unknown_ids_answer_as_without_it(running: Cluster) -> None:
    job_id = running.api.submit("echo ok > out.txt\n")
    running.api.wait_for(job_id, *FINAL)
    for query in ("?wait=0", "?wait=0.5", f"?wait={WAIT_CAP_S}", "?other=1"):
        assert download(running, job_id, query).content == download(running, job_id).content
    missing = download(running, 4_000_000_000, "?wait=5", timeout_s=WAIT_CAP_S / 4)
    assert missing.status_code == 404
    assert missing.content == download(running, 4_000_000_000).content


@pytest.mark.parametrize(
    "value",
    [
        "-1",
        "-0.5",
        "abc",
        "",
        "nan",
        "inf",
        "-inf",
        "61",
        "60.001",
        "1e1",
        " 5",
        "5 ",
        "1_0",
        "0x10",
        "+5",
        "５",
    ],
)
def test_wait_out_of_range_is_refused(running: Cluster, value: str) -> None:
    job_id = running.api.submit("echo ok > out.txt\n")
    response = httpx.get(
        f"{running.api.base_url}/download/{job_id}", params={"wait": value}, timeout=30
    )
    assert response.status_code == 400, response.text
    assert response.json() == {
        "id": 0,
        "status": "Unknown",
        "message": f"Invalid wait {value!r}: expected a number of seconds from 0 to {WAIT_CAP_S}",
    }


def test_openapi_documents_the_wait_parameter(running: Cluster) -> None:
    document = httpx.get(f"{running.api.base_url}/api-docs/openapi.json", timeout=30).json()
    parameters = document["paths"]["/download/{id}"]["get"]["parameters"]
    by_name = {parameter["name"]: parameter for parameter in parameters}
    assert by_name["id"]["in"] == "path"
    wait = by_name["wait"]
    assert wait["in"] == "query"
    assert wait["required"] is False
    assert wait["schema"] == {"type": "number", "minimum": 0, "maximum": WAIT_CAP_S}
    # The other routes are untouched.
    for path in ("/download_partial/{id}", "/terminate/{id}"):
        operation = next(iter(document["paths"][path].values()))
        assert [parameter["name"] for parameter in operation["parameters"]] == ["id"]


def test_a_held_request_ends_on_disconnect_and_on_stop(tmp_path: Path) -> None:
    with cluster(tmp_path, server_env={"LOG_LEVEL": "DEBUG"}) as cl:
        job_id = cl.api.submit(gated_script(tmp_path / "never"))
        cl.api.wait_for(job_id, "Running")
        assert cl.server is not None
        # The caller gives up: the server stops waiting for it.
        with pytest.raises(httpx.ReadTimeout):
            download(cl, job_id, f"?wait={WAIT_CAP_S}", timeout_s=1)
        server = cl.server
        eventually(
            lambda: DISCONNECTED.format(job_id) in server.log(),
            "the server to log the caller's disconnection",
            30,
            detail=server.log,
        )
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(download, cl, job_id, f"?wait={WAIT_CAP_S}")
            time.sleep(1)
            assert cl.server.stop(signal.SIGTERM) == 0, cl.server.log()
            # Without the drain, uvicorn would cut the connection after its grace period.
            response = held.result(timeout=30)
        assert response.status_code == 200, response.text
        assert response.json() == {"id": job_id, "status": "Running", "message": ""}
