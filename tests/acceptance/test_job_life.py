"""The whole life of a job across real server and client processes."""

from __future__ import annotations

import io
import signal
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from testkit import eventually
from testkit.harness import Cluster, cluster, tagged_processes


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("life")) as running:
        yield running


def test_completed_job_downloads_its_outputs(shared: Cluster) -> None:
    job_id = shared.api.submit(
        "cat input.txt > output.txt\necho done >> output.txt\n", extra={"input.txt": "hello\n"}
    )
    shared.api.wait_for(job_id, "Completed")
    archive = shared.api.download_zip(job_id)
    assert archive.read("output.txt") == b"hello\ndone\n"
    assert sorted(archive.namelist()) == ["input.txt", "output.txt", "run.sh"]


def test_failing_script_ends_failed_with_reason(shared: Cluster) -> None:
    job_id = shared.api.submit("echo partial > partial.txt\nexit 3\n")
    body = shared.api.wait_for(job_id, "Failed")
    assert body["message"] == "run.sh exited with status 3"
    # The files of a failed job stay downloadable from the server itself.
    response = httpx.get(f"{shared.api.base_url}/download_partial/{job_id}", timeout=30)
    assert response.status_code == 200
    assert zipfile.ZipFile(io.BytesIO(response.content)).read("partial.txt") == b"partial\n"


def test_rejected_script_ends_invalid_with_reason(shared: Cluster) -> None:
    job_id = shared.api.submit("curl http://127.0.0.1:1/ > page.html\n")
    body = shared.api.wait_for(job_id, "Invalid")
    assert "network tool: curl" in body["message"]


def test_job_without_run_sh_is_invalid(shared: Cluster) -> None:
    response = shared.api.upload({"data.txt": "x"})
    assert response.status_code == 201
    body = shared.api.wait_for(response.json()["id"], "Invalid")
    assert "run.sh" in body["message"]


def test_partial_download_shows_a_running_jobs_files(shared: Cluster) -> None:
    job_id = shared.api.submit("echo step1 > progress.txt\nsleep 30\n")
    shared.api.wait_for(job_id, "Running")

    def partial_names() -> list[str]:
        response = httpx.get(f"{shared.api.base_url}/download_partial/{job_id}", timeout=30)
        assert response.status_code == 200
        return zipfile.ZipFile(io.BytesIO(response.content)).namelist()

    eventually(lambda: "progress.txt" in partial_names(), "progress.txt in the partial ZIP", 30)
    assert httpx.post(f"{shared.api.base_url}/terminate/{job_id}", timeout=30).status_code == 200


def test_terminate_running_job_kills_grandchildren(shared: Cluster) -> None:
    script = "sleep 300 &\necho $! > background.pid\nsleep 300\n"
    job_id = shared.api.submit(script)
    shared.api.wait_for(job_id, "Running")

    def sleeps() -> list[str]:
        commands = (" ".join(p.cmdline()) for p in tagged_processes(shared.tag))
        return [command for command in commands if "sleep 300" in command]

    eventually(sleeps, "the job to start its sleeps", 30)
    response = httpx.post(f"{shared.api.base_url}/terminate/{job_id}", timeout=30)
    assert response.status_code == 200
    assert response.json()["message"] == "job terminated"
    assert shared.api.wait_for(job_id, "Killed")["status"] == "Killed"
    eventually(lambda: not sleeps(), "no process of the killed job left", 30, detail=sleeps)


def test_terminate_finished_job_is_409_and_keeps_result(shared: Cluster) -> None:
    job_id = shared.api.submit("echo kept > output.txt\n")
    shared.api.wait_for(job_id, "Completed")
    response = httpx.post(f"{shared.api.base_url}/terminate/{job_id}", timeout=30)
    assert response.status_code == 409
    assert response.json()["status"] == "Completed"
    assert shared.api.download_zip(job_id).read("output.txt") == b"kept\n"


def test_terminate_unknown_job_is_404(shared: Cluster) -> None:
    response = httpx.post(f"{shared.api.base_url}/terminate/99999", timeout=30)
    assert response.status_code == 404
    assert response.json()["message"] == "Job 99999 not found in the database"


def test_terminate_queued_job_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with cluster(tmp_path, server_env={"SERVICE_EXAMPLE_MAX_RUNS": "1"}) as running:
        blocker = running.api.submit("sleep 300\n")
        running.api.wait_for(blocker, "Running")
        queued = running.api.submit(f"touch {marker}\n")
        assert running.api.status(queued)["status"] == "Queued"
        response = httpx.post(f"{running.api.base_url}/terminate/{queued}", timeout=30)
        assert response.status_code == 200
        assert running.api.status(queued)["status"] == "Killed"
        httpx.post(f"{running.api.base_url}/terminate/{blocker}", timeout=30)
        running.api.wait_for(blocker, "Killed")
        # The freed slot must not be given to the cancelled job.
        follower = running.api.submit("echo ok > output.txt\n")
        running.api.wait_for(follower, "Completed")
        assert not marker.exists()
        assert running.api.status(queued)["status"] == "Killed"


def test_quotas_hold_for_three_users_with_five_jobs_each(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    env = {"SERVICE_EXAMPLE_MAX_RUNS": "3", "SERVICE_EXAMPLE_RUNS_PER_USER": "2"}
    with cluster(tmp_path, server_env=env) as running:
        jobs = []
        for job in range(5):
            for user in (1, 2, 3):
                script = (
                    f'echo "start $(date +%s.%N) {user} {job}" >> {ledger}\n'
                    # Long enough that three jobs overlap even on a busy machine.
                    "sleep 1.5\n"
                    f'echo "end $(date +%s.%N) {user} {job}" >> {ledger}\n'
                )
                jobs.append(running.api.submit(script, user_id=user))
        for job_id in jobs:
            running.api.wait_for(job_id, "Completed", timeout_s=120)
    events = []
    for line in ledger.read_text().splitlines():
        kind, stamp, user, _job = line.split()
        events.append((float(stamp), 0 if kind == "end" else 1, int(user)))
    events.sort()
    active: dict[int, int] = {1: 0, 2: 0, 3: 0}
    peak_total = peak_user = 0
    for _stamp, starting, user in events:
        active[user] += 1 if starting else -1
        peak_total = max(peak_total, sum(active.values()))
        peak_user = max(peak_user, active[user])
    assert len(events) == 30
    assert peak_total <= 3
    assert peak_user <= 2
    assert peak_total == 3, "the service limit was never reached: quotas too strict?"


def test_client_restart_keeps_completed_payload(tmp_path: Path) -> None:
    running = Cluster(tmp_path)
    try:
        client = running.add_client()
        response = httpx.post(
            f"{client.url}/submit",
            files=[("run.sh", ("run.sh", b"echo persisted > output.txt\n"))],
            timeout=30,
        )
        assert response.status_code == 200
        payload_id = response.json()["id"]
        eventually(
            lambda: (
                httpx.get(f"{client.url}/retrieve/{payload_id}").headers["content-type"]
                == "application/zip"
            ),
            f"payload {payload_id} to finish",
            30,
        )
        assert client.stop() == 0
        client.start()
        response = httpx.get(f"{client.url}/retrieve/{payload_id}", timeout=30)
        assert response.headers["content-type"] == "application/zip"
        assert zipfile.ZipFile(io.BytesIO(response.content)).read("output.txt") == b"persisted\n"
        # Ids are never reused after a restart.
        again = httpx.post(
            f"{client.url}/submit", files=[("run.sh", ("run.sh", b"true\n"))], timeout=30
        )
        assert again.json()["id"] > payload_id
    finally:
        assert running.shutdown() == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_client_restart_readopts_running_payload(tmp_path: Path, signum: int) -> None:
    running = Cluster(tmp_path)
    try:
        client = running.add_client()
        # The script waits for a file the test creates once the client is back, so a slow
        # machine cannot let it finish while the client is down.
        go = tmp_path / "go"
        script = (
            f"while [ ! -e {go} ]; do sleep 0.05; done\necho survived > output.txt\nexit 4\n"
        ).encode()
        response = httpx.post(
            f"{client.url}/submit", files=[("run.sh", ("run.sh", script))], timeout=30
        )
        payload_id = response.json()["id"]
        eventually(
            lambda: httpx.get(f"{client.url}/retrieve/{payload_id}").json()["status"] == "Running",
            f"payload {payload_id} to run",
            30,
        )
        client.stop(signum)
        assert any("run.sh" in " ".join(p.cmdline()) for p in tagged_processes(running.tag))
        client.start()
        go.touch()

        def ended() -> dict[str, Any] | None:
            body: dict[str, Any] = httpx.get(f"{client.url}/retrieve/{payload_id}").json()
            return body if body["status"] != "Running" else None

        assert eventually(ended, f"payload {payload_id} to end", 30)["status"] == "Failed"
        assert (
            tmp_path / "client0" / str(payload_id) / "work" / "output.txt"
        ).read_text() == "survived\n"
    finally:
        assert running.shutdown() == []


def test_server_restart_keeps_queued_and_running_jobs(tmp_path: Path) -> None:
    with cluster(tmp_path, server_env={"SERVICE_EXAMPLE_MAX_RUNS": "1"}) as running:
        first = running.api.submit("sleep 1\necho first > output.txt\n")
        running.api.wait_for(first, "Running")
        second = running.api.submit("echo second > output.txt\n")
        assert running.server is not None
        running.server.stop(signal.SIGKILL)
        running.server.start()
        running.api.wait_for(first, "Completed")
        running.api.wait_for(second, "Completed")
        assert running.api.download_zip(second).read("output.txt") == b"second\n"


def test_sigterm_stops_server_and_client_cleanly(tmp_path: Path) -> None:
    running = Cluster(tmp_path)
    try:
        client = running.add_client()
        server = running.start_server()
        assert server.stop(signal.SIGTERM) == 0
        assert client.stop(signal.SIGINT) == 0
    finally:
        running.shutdown()


def test_no_zombies_after_many_jobs(shared: Cluster) -> None:
    jobs = [shared.api.submit("true\n") for _ in range(10)]
    for job_id in jobs:
        shared.api.wait_for(job_id, "Completed")
    client = psutil.Process(shared.clients[0].process.pid)  # type: ignore[union-attr]
    zombies = [c for c in client.children(recursive=True) if c.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []
