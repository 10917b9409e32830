"""Live logs: `GET /jobs/{id}/logs` on the server, `GET /logs/{id}` on the client.

Real server and client processes. run.sh's stdout and stderr are one stream, interleaved as
written; a follower sees a line while the job still runs (the job waits for a file the test
creates only after reading that line), and the stream ends when the job ends. A failure's
message carries the last line the script printed. The client-side tests also run with
SANDBOX=bwrap, where the script writes its log through a descriptor from outside the sandbox.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit import eventually
from testkit.harness import Api, Cluster, cluster
from tests.acceptance.test_sandbox import bwrap_problem

FINAL = ("Completed", "Failed", "Invalid", "Killed", "Cleaned")
CLIENT_TOKEN = f"client-{secrets.token_hex(16)}"
TOKEN_A = f"user-a-{secrets.token_hex(12)}"
TOKEN_B = f"user-b-{secrets.token_hex(12)}"

SANDBOXES = ["none", "bwrap"]


@pytest.fixture(scope="module", params=SANDBOXES)
def logs_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    sandbox = str(request.param)
    if sandbox == "bwrap" and (problem := bwrap_problem()) is not None:
        pytest.skip(problem)
    with cluster(
        tmp_path_factory.mktemp(f"logs-{sandbox}"),
        client_env={"SANDBOX": sandbox, "CLIENT_TOKEN": CLIENT_TOKEN},
        server_env={"CLIENT_TOKEN": CLIENT_TOKEN},
    ) as running:
        yield running


def logs(api: Api, job_id: int, query: str = "") -> httpx.Response:
    return httpx.get(f"{api.base_url}/jobs/{job_id}/logs{query}", headers=api.headers, timeout=60)


def work_dir_of(cl: Cluster, marker: str) -> Path:
    """The work directory on the client of the job whose run.sh contains `marker`."""

    def found() -> Path | None:
        for script in (cl.root / "client0").glob("*/work/run.sh"):
            if marker in script.read_text(errors="replace"):
                return script.parent
        return None

    return eventually(found, f"a payload with {marker!r} on the client")


def test_logs_of_a_finished_job_interleave_stdout_and_stderr(logs_cluster: Cluster) -> None:
    api = logs_cluster.api
    job_id = api.submit("echo one\necho two >&2\necho three\nprintf 'no newline' >&2\n")
    assert api.wait_for(job_id, *FINAL)["status"] == "Completed"
    response = logs(api, job_id)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "one\ntwo\nthree\nno newline"
    assert logs(api, job_id, "?offset=4").text == "two\nthree\nno newline"
    # Past the end: 416 (tests/acceptance/test_log_offset.py); at the end: nothing more.
    assert logs(api, job_id, "?offset=1000").status_code == 416
    assert logs(api, job_id, "?offset=24").text == ""
    # Without follow, a finished job's log ends at once too.
    assert logs(api, job_id, "?follow=1&offset=8").text == "three\nno newline"
    # The result ZIP is as before: the log is kept beside the work directory, not in it.
    assert api.download_zip(job_id).namelist() == ["run.sh"]


def test_follow_receives_a_line_before_the_job_ends(logs_cluster: Cluster) -> None:
    api = logs_cluster.api
    marker = secrets.token_hex(8)
    script = (
        f"echo 'started {marker}'\n"
        "while [ ! -e go ]; do sleep 0.05; done\n"
        "echo 'got go' >&2\n"
        "echo finished\n"
    )
    job_id = api.submit(script)
    received = b""
    with httpx.stream("GET", f"{api.base_url}/jobs/{job_id}/logs?follow=1", timeout=60) as response:
        assert response.status_code == 200
        chunks = response.iter_bytes()
        while b"\n" not in received:
            received += next(chunks)
        assert received.startswith(f"started {marker}\n".encode())
        # The job cannot end before the file exists: this line came from a running job
        # (which the server shows Running at most STATUS_SETTLE after it started).
        assert api.wait_for(job_id, *FINAL, "Running")["status"] == "Running"
        (work_dir_of(logs_cluster, marker) / "go").touch()
        for chunk in chunks:  # ends when the job ends
            received += chunk
    assert received == f"started {marker}\ngot go\nfinished\n".encode()
    assert api.wait_for(job_id, *FINAL)["status"] == "Completed"


def test_follow_of_a_queued_job_waits_for_it(tmp_path: Path) -> None:
    """Before dispatch the log is empty; a follower waits and gets all of it."""
    with cluster(tmp_path, server_env={"SERVICE_EXAMPLE_MAX_RUNS": "1"}) as cl:
        marker = secrets.token_hex(8)
        blocker = cl.api.submit(f"# {marker}\nwhile [ ! -e go ]; do sleep 0.05; done\n")
        queued = cl.api.submit("echo after the blocker\n")
        cl.api.wait_for(blocker, "Running")
        assert cl.api.status(queued)["status"] == "Queued"
        assert logs(cl.api, queued).text == ""
        with httpx.stream(
            "GET", f"{cl.api.base_url}/jobs/{queued}/logs?follow=1", timeout=60
        ) as response:
            (work_dir_of(cl, marker) / "go").touch()
            body = response.read()
        assert body == b"after the blocker\n"
        assert cl.api.wait_for(queued, *FINAL)["status"] == "Completed"


def test_failure_message_names_the_cause(logs_cluster: Cluster) -> None:
    api = logs_cluster.api
    job_id = api.submit("echo 'counting atoms'\ngrep -c ATOM input.pdb > atoms.txt\n")
    body = api.wait_for(job_id, *FINAL)
    assert body == {
        "id": job_id,
        "status": "Failed",
        "message": "run.sh exited with status 2: grep: input.pdb: No such file or directory",
    }
    assert logs(api, job_id).text == "counting atoms\ngrep: input.pdb: No such file or directory\n"


def test_failure_message_without_output_is_unchanged(logs_cluster: Cluster) -> None:
    api = logs_cluster.api
    job_id = api.submit("exit 3\n")
    assert api.wait_for(job_id, *FINAL)["message"] == "run.sh exited with status 3"


def test_failure_message_is_bounded_and_printable(logs_cluster: Cluster) -> None:
    api = logs_cluster.api
    script = (
        "head -c 5000 /dev/zero | tr '\\0' x >&2\n"
        "printf '\\n\\tbad\\033[31m red\\n\\n' >&2\n"
        "exit 4\n"
    )
    job_id = api.submit(script)
    message = api.wait_for(job_id, *FINAL)["message"]
    assert message == "run.sh exited with status 4: bad [31m red"
    job_id = api.submit("head -c 5000 /dev/zero | tr '\\0' y >&2\nexit 4\n")
    message = api.wait_for(job_id, *FINAL)["message"]
    assert message == f"run.sh exited with status 4: {'y' * 500}"


def test_unknown_job_and_bad_parameters(logs_cluster: Cluster) -> None:
    api = logs_cluster.api
    response = logs(api, 99999)
    assert response.status_code == 404
    assert response.json() == {
        "id": 0,
        "status": "Unknown",
        "message": "Job 99999 not found in the database",
    }
    for query, message in [
        ("?follow=2", "Invalid follow '2': expected 1 or 0"),
        ("?offset=-1", "Invalid offset '-1': expected a byte offset (0 or more)"),
        ("?offset=1.5", "Invalid offset '1.5': expected a byte offset (0 or more)"),
    ]:
        response = logs(api, 1, query)
        assert response.status_code == 400, query
        assert response.json() == {"id": 0, "status": "Unknown", "message": message}
    assert logs(api, 1, "x").status_code == 404  # /jobs/1/logsx is no route


def test_client_route_is_guarded_and_documented(logs_cluster: Cluster) -> None:
    client = logs_cluster.clients[0].url
    auth = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
    submitted = httpx.post(
        f"{client}/submit",
        files=[("file", ("run.sh", b"echo from the client\nexit 5\n"))],
        headers=auth,
        timeout=60,
    )
    assert submitted.status_code == 200, submitted.text
    payload_id = submitted.json()["id"]
    assert httpx.get(f"{client}/logs/{payload_id}", timeout=30).status_code == 401
    # `wait` streams until the payload is final.
    response = httpx.get(f"{client}/logs/{payload_id}?wait=30", headers=auth, timeout=60)
    assert response.status_code == 200
    assert response.content == b"from the client\n"
    assert response.headers["x-orchestrator-status"] == "Failed"
    response = httpx.get(f"{client}/logs/{payload_id}?offset=5", headers=auth, timeout=30)
    assert response.content == b"the client\n"
    assert httpx.get(f"{client}/logs/999999", headers=auth, timeout=30).status_code == 404
    for query in ("?offset=x", "?wait=61", "?wait=-1"):
        answer = httpx.get(f"{client}/logs/{payload_id}{query}", headers=auth, timeout=30)
        assert answer.status_code == 400, query
    document = httpx.get(f"{client}/api-docs/openapi.json", headers=auth, timeout=30).json()
    parameters = document["paths"]["/logs/{id}"]["get"]["parameters"]
    assert [parameter["name"] for parameter in parameters] == ["id", "offset", "wait"]


def test_server_route_is_documented(logs_cluster: Cluster) -> None:
    assert logs_cluster.server is not None
    document = httpx.get(f"{logs_cluster.server.url}/api-docs/openapi.json", timeout=30).json()
    operation = document["paths"]["/jobs/{id}/logs"]["get"]
    assert operation["tags"] == ["jobs"]
    assert [parameter["name"] for parameter in operation["parameters"]] == [
        "id",
        "follow",
        "offset",
    ]


def test_logs_outlive_the_clients_clean_up(tmp_path: Path) -> None:
    with cluster(tmp_path, client_env={"MAX_AGE": "0", "CLEANER_INTERVAL": "1"}) as cl:
        job_id = cl.api.submit("echo kept by the server\nexit 1\n")
        assert cl.api.wait_for(job_id, *FINAL)["status"] == "Failed"
        eventually(
            lambda: not any((cl.root / "client0").glob("*/work")), "the client to clean the payload"
        )
        assert logs(cl.api, job_id).text == "kept by the server\n"
        assert logs(cl.api, job_id, "?offset=5&follow=1").text == "by the server\n"


def test_someone_elses_job_is_404(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"{TOKEN_A} 1\n{TOKEN_B} 2\n")
    with cluster(tmp_path, server_env={"API_TOKENS_FILE": str(tokens)}) as cl:
        as_a = Api(cl.api.base_url, token=TOKEN_A)
        as_b = Api(cl.api.base_url, token=TOKEN_B)
        job_id = as_a.submit("echo private\n", user_id=None)
        assert as_a.wait_for(job_id, *FINAL)["status"] == "Completed"
        assert logs(as_a, job_id).text == "private\n"
        theirs = logs(as_b, job_id, "?follow=1")
        assert theirs.status_code == 404
        assert theirs.json()["message"] == f"Job {job_id} not found in the database"
        assert logs(Api(cl.api.base_url), job_id).status_code == 401


def test_a_killed_jobs_log_holds_what_its_trap_printed(logs_cluster: Cluster) -> None:
    api = logs_cluster.api
    marker = secrets.token_hex(8)
    job_id = api.submit(
        f"trap 'echo trapped {marker}; exit 0' TERM\necho started\nsleep 300 &\nwait\n"
    )
    with httpx.stream("GET", f"{api.base_url}/jobs/{job_id}/logs?follow=1", timeout=60) as response:
        chunks = response.iter_bytes()
        received = next(chunks)
        while b"\n" not in received:
            received += next(chunks)
        terminated = httpx.post(f"{api.base_url}/terminate/{job_id}", timeout=60)
        assert terminated.status_code == 200, terminated.text
        for chunk in chunks:
            received += chunk
    assert received == f"started\ntrapped {marker}\n".encode()
    assert api.wait_for(job_id, *FINAL)["status"] == "Killed"
    # Asked again once the job is final: the same log (from the client or the server's copy).
    assert logs(api, job_id, "?follow=1").content == received


def test_follow_resumes_across_a_client_restart(tmp_path: Path) -> None:
    with cluster(tmp_path) as cl:
        marker = secrets.token_hex(8)
        job_id = cl.api.submit(
            f"echo 'before {marker}'\nwhile [ ! -e go ]; do sleep 0.05; done\necho after\n"
        )
        url = f"{cl.api.base_url}/jobs/{job_id}/logs?follow=1"
        with httpx.stream("GET", url, timeout=60) as response:
            chunks = response.iter_bytes()
            received = next(chunks)
            while b"\n" not in received:
                received += next(chunks)
            client = cl.clients[0]
            assert client.stop() == 0  # the script keeps running, and is re-adopted
            client.start()
            (work_dir_of(cl, marker) / "go").touch()
            for chunk in chunks:
                received += chunk
        assert received == f"before {marker}\nafter\n".encode()
        assert cl.api.wait_for(job_id, *FINAL)["status"] == "Completed"


def test_a_large_log_arrives_whole(logs_cluster: Cluster) -> None:
    api = logs_cluster.api
    marker = secrets.token_hex(8)
    job_id = api.submit(f"# {marker}\nhead -c 3000000 /dev/urandom | base64 | tee copy.txt\n")
    assert api.wait_for(job_id, *FINAL)["status"] == "Completed"
    copy = api.download_zip(job_id).read("copy.txt")
    assert len(copy) > 4_000_000
    # The client's own answer (several rounds of reading), then the server's copy.
    payload_id = work_dir_of(logs_cluster, marker).parent.name
    direct = httpx.get(
        f"{logs_cluster.clients[0].url}/logs/{payload_id}",
        headers={"Authorization": f"Bearer {CLIENT_TOKEN}"},
        timeout=60,
    )
    assert direct.content == copy
    assert logs(api, job_id).content == copy
    assert (
        logs(api, job_id, f"?offset={len(copy) - 1_500_000}&follow=1").content == copy[-1_500_000:]
    )


def test_an_empty_log_is_kept_without_asking_the_client(tmp_path: Path) -> None:
    """Our client says how long a finished local log is; at 0 the server asks it nothing."""
    with cluster(tmp_path, client_env={"LOG_LEVEL": "debug"}) as cl:
        quiet = cl.api.submit("echo quiet > output.txt\n")
        chatty = cl.api.submit("echo chatty\n")
        for job_id in (quiet, chatty):
            assert cl.api.wait_for(job_id, *FINAL)["status"] == "Completed"
        assert logs(cl.api, quiet).text == ""
        assert logs(cl.api, chatty).text == "chatty\n"
        asked = cl.clients[0].log()
        payload_ids = {
            int(line.split("log of payload ")[1].split()[0])
            for line in asked.splitlines()
            if "log of payload " in line
        }
        # The chatty job's log was fetched (so the line is logged at all); the quiet one's not.
        assert len(payload_ids) == 1, asked
