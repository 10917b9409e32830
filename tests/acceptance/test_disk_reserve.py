"""A disk one job cannot take from the others (issue 21, item 10).

The client's DATA_PATH is on a small tmpfs of its own (we are root), so filling it is quick
and touches nothing else. Real server and client processes (testkit/harness.py).
"""

from __future__ import annotations

import html
import io
import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit import eventually
from testkit.harness import Cluster, cluster
from tests.acceptance.test_client_token import client_state, details, status_page
from tests.acceptance.test_failure_semantics import FINAL

DISK_MB = 64
RESERVE_MB = 16
CLIENT_ENV = {"DISK_RESERVE_MB": str(RESERVE_MB), "DISK_CHECK_INTERVAL": "0.3", "KILL_GRACE": "1"}
SERVER_ENV = {"NODE_CHECK_INTERVAL": "0.3"}
#: Writes a MB every 50 ms until stopped (it never ends by itself, even once the disk is full).
FILLER = "while true; do head -c 1048576 /dev/zero >> big.dat; sleep 0.05; done\n"
#: Writes nothing until the test says so (a file `go`), then its result. (It used to watch the
#: free space go low and come back, a window it could miss on a loaded machine.)
PATIENT = "until [ -e go ]; do sleep 0.1; done\necho done > out.txt\n"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0755", "tmpfs", str(mount)],
        check=True,
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def free_mb(path: Path) -> float:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize / 1024 / 1024


def work_of(data_path: Path, script: str) -> Path:
    """The work directory of the payload that runs `script`."""
    (work,) = [
        path.parent for path in data_path.glob("[0-9]*/work/run.sh") if path.read_text() == script
    ]
    return work


def health(cl: Cluster) -> httpx.Response:
    return httpx.get(f"{cl.clients[0].url}/health", timeout=30)


def fill(disk: Path, leave_mb: float) -> Path:
    """A file of the test's own (no job's) that leaves `leave_mb` free."""
    filler = disk / "not-a-job.dat"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as out:
        while free_mb(disk) > leave_mb:
            try:
                out.write(chunk)
            except OSError:  # full
                break
    return filler


def test_a_job_that_eats_the_reserve_is_stopped_and_the_others_carry_on(
    tmp_path: Path, small_disk: Path
) -> None:
    env = {**CLIENT_ENV, "DATA_PATH": str(small_disk / "client")}
    with cluster(tmp_path, client_env=env, server_env=SERVER_ENV) as cl:
        patient = cl.api.submit(PATIENT, user_id=2)
        cl.api.wait_for(patient, "Running")
        filler = cl.api.submit(FILLER, user_id=1)

        body = cl.api.wait_for(filler, *FINAL, timeout_s=120)
        assert body["status"] == "Failed", body
        assert body["message"].startswith("disk full: the job wrote while"), body
        # The server kept what the job wrote, though the disk had no room to build a copy.
        with cl.api.download_partial_zip(filler) as kept:
            assert kept.getinfo("big.dat").file_size > 10 * 1024 * 1024
        # Then the client released the job's files: the space is back, by itself.
        payload_dirs = [p for p in (small_disk / "client").iterdir() if p.name.isdigit()]
        eventually(
            lambda: all(not (p / "work" / "big.dat").exists() for p in payload_dirs),
            "the stopped job's files to be released",
        )
        eventually(lambda: free_mb(small_disk) > RESERVE_MB, "the free space to come back")
        # The other user's job was not touched, and finishes now that there is room.
        assert cl.api.status(patient)["status"] == "Running"
        (work_of(small_disk / "client", PATIENT) / "go").touch()
        done = cl.api.wait_for(patient, *FINAL, timeout_s=60)
        assert done["status"] == "Completed", done
        assert cl.api.download_zip(patient).read("out.txt") == b"done\n"
        eventually(lambda: "disk" not in health(cl).json(), "the client to take payloads again")
        again = cl.api.submit("echo again > out.txt\n")
        assert cl.api.wait_for(again, *FINAL)["status"] == "Completed"
        assert "stopped: disk full" in cl.clients[0].log()
        metrics = httpx.get(f"{cl.clients[0].url}/metrics", timeout=30).text
        assert 'job_orchestrator_client_disk_stops_total{cause="reserve"} 1.0' in metrics


def test_a_job_that_fills_the_disk_within_one_check_is_stopped(
    tmp_path: Path, small_disk: Path
) -> None:
    # One check every 3 s: the job fills the disk to the last byte between two of them, so it
    # is never measured writing (and can write no more); it used to run on, the disk full.
    env = {**CLIENT_ENV, "DISK_CHECK_INTERVAL": "3", "DATA_PATH": str(small_disk / "client")}
    with cluster(tmp_path, client_env=env, server_env=SERVER_ENV) as cl:
        small = cl.api.submit("echo small > small.txt\nsleep 300\n", user_id=2)
        cl.api.wait_for(small, "Running")
        hog = cl.api.submit(f"head -c {DISK_MB}M /dev/zero > big.dat\nsleep 300\n")
        body = cl.api.wait_for(hog, *FINAL, timeout_s=120)
        assert body["status"] == "Failed", body
        assert body["message"].startswith("disk full: "), body
        eventually(lambda: free_mb(small_disk) > RESERVE_MB, "the space to come back")
        assert cl.api.status(small)["status"] == "Running"
        httpx.post(f"{cl.api.base_url}/terminate/{small}", timeout=60)


def test_below_the_reserve_new_jobs_wait_queued_and_start_when_space_returns(
    tmp_path: Path, small_disk: Path
) -> None:
    env = {**CLIENT_ENV, "DATA_PATH": str(small_disk / "client")}
    with cluster(tmp_path, client_env=env, server_env=SERVER_ENV) as cl:
        filler = fill(small_disk, leave_mb=RESERVE_MB / 2)
        eventually(lambda: "disk" in health(cl).json(), "/health to say the disk is low")
        answer = health(cl)
        assert answer.status_code == 200  # alive: its running jobs are fine
        assert answer.headers["X-Orchestrator-Refusing"] == "disk_full"
        assert answer.json()["disk"].startswith("disk full: "), answer.json()
        assert "below DISK_RESERVE_MB (16 MB)" in answer.json()["disk"]

        # Asked directly, the client refuses a payload with 507 and keeps nothing of it.
        before = sorted(p.name for p in (small_disk / "client").iterdir())
        refused = httpx.post(
            f"{cl.clients[0].url}/submit",
            files=[("file", ("run.sh", b"true\n"))],
            timeout=30,
        )
        assert refused.status_code == 507, refused.text
        assert sorted(p.name for p in (small_disk / "client").iterdir()) == before

        # Through the server, the job waits Queued and says why; /status and /metrics agree.
        job_id = cl.api.submit("echo later > out.txt\n")
        queue = eventually(
            lambda: (
                (details(cl, job_id).get("queue") or {}).get("reason") == "client_disk_full"
                and details(cl, job_id)["queue"]
            ),
            "the job to wait with the reason",
        )
        assert "DISK_RESERVE_MB" in queue["detail"], queue
        assert cl.api.status(job_id)["status"] == "Queued"
        assert "disk full" in html.unescape(status_page(cl))
        assert client_state(cl, "disk_full") == 1
        assert client_state(cl, "up") == 0

        filler.unlink()
        body = cl.api.wait_for(job_id, *FINAL, timeout_s=60)
        assert body["status"] == "Completed", body
        assert cl.api.download_zip(job_id).read("out.txt") == b"later\n"
        assert client_state(cl, "up") == 1
        assert cl.server is not None
        assert "has disk space again" in cl.server.log()


def test_a_partial_copy_needs_no_free_space(tmp_path: Path, small_disk: Path) -> None:
    # No reserve: the disk is simply full, as a job that outran every check would leave it.
    env = {**CLIENT_ENV, "DISK_RESERVE_MB": "0", "DATA_PATH": str(small_disk / "client")}
    with cluster(tmp_path, client_env=env, server_env=SERVER_ENV) as cl:
        job_id = cl.api.submit("seq 100000 > numbers.txt\ntouch ready\nsleep 300\n")
        eventually(
            lambda: any((small_disk / "client").glob("*/work/ready")), "the job to write its file"
        )
        fill(small_disk, leave_mb=0)
        with pytest.raises(OSError, match="No space left"):  # really full
            (small_disk / "one-more").write_bytes(b"\0" * 1024 * 1024)
        payload_id = next((small_disk / "client").glob("*/work/ready")).parent.parent.name
        response = httpx.get(f"{cl.clients[0].url}/retrieve_partial/{payload_id}", timeout=60)
        assert response.status_code == 200, response.text
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
            assert archive.testzip() is None
            numbers = archive.read("numbers.txt").decode().split()
        assert numbers[0] == "1"
        assert numbers[-1] == "100000"
        httpx.post(f"{cl.api.base_url}/terminate/{job_id}", timeout=60)


def test_a_job_past_its_disk_limit_is_stopped(tmp_path: Path) -> None:
    env = {"JOB_MAX_DISK_MB": "8", "DISK_CHECK_INTERVAL": "0.3", "KILL_GRACE": "1"}
    with cluster(tmp_path, client_env=env, server_env=SERVER_ENV) as cl:
        small = cl.api.submit("head -c 1048576 /dev/urandom > small.dat\nsleep 2\n", user_id=2)
        big = cl.api.submit(FILLER, user_id=1)
        body = cl.api.wait_for(big, *FINAL, timeout_s=120)
        assert body["status"] == "Failed", body
        assert body["message"].startswith("disk limit exceeded: the job's files took "), body
        assert body["message"].endswith("more than JOB_MAX_DISK_MB (8 MB)"), body
        metrics = httpx.get(f"{cl.clients[0].url}/metrics", timeout=30).text
        assert 'job_orchestrator_client_disk_stops_total{cause="limit"} 1.0' in metrics
        assert cl.api.wait_for(small, *FINAL)["status"] == "Completed"
