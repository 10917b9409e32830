"""What a job can do to the archives the client builds of it (issue 15, items 1, 2, 3, 7).

Real server and client processes. The probes are uploaded Python files run from run.sh (the
validator reads only run.sh). Timings are not asserted here; bench/ measures them.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from job_orchestrator.archive import MANIFEST_NAME, MAX_DEPTH
from testkit import eventually
from testkit.harness import Cluster, cluster
from tests.acceptance.test_sandbox import bwrap_problem

# A system interpreter, not the venv's: the checkout (and so .venv) may live under /tmp,
# which the bwrap sandbox replaces with a private one, and the validator refuses paths
# under /root. The probes need only the standard library.
PYTHON = shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin") or sys.executable
FINAL = ("Completed", "Failed", "Invalid", "Killed")
SECRET = b"SECRET-OF-USER-TWO"
#: A backstop so that no job here can run forever.
SERVER_ENV = {"SERVICE_EXAMPLE_TIMEOUT": "300"}

OTHER_USER = f"""\
import time
open("secret.txt", "wb").write({SECRET!r})
time.sleep(300)
"""

# Swaps a real directory and a symlink to another job's work directory, as fast as it can,
# so that a walk by path sees the directory and then reads through the symlink.
SWAPPER = """\
import ctypes, os, random, time
target = open("target.txt").read().strip()
os.makedirs("d", exist_ok=True)
rng = random.Random(1)
with open("d/a", "w") as big:  # text: slow to deflate, so the window stays open
    for _ in range(40000):
        big.write("".join(rng.choices("abcdefghij0123456789", k=200)) + "\\n")
open("d/secret.txt", "w").write("mine")
os.symlink(target, "x")
libc = ctypes.CDLL(None, use_errno=True)
open("ready", "w").close()
end = time.monotonic() + 240
while time.monotonic() < end:
    if libc.renameat2(-100, b"d", -100, b"x", 2) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")
    time.sleep(0.001)
"""


def sandboxes() -> list[object]:
    problem = bwrap_problem()
    skip = pytest.mark.skipif(problem is not None, reason=problem or "")
    return ["none", pytest.param("bwrap", marks=skip)]


def leftovers(cl: Cluster) -> list[str]:
    """Temporary or unsent archives anywhere in the client's data directory."""
    return sorted(
        str(path)
        for path in (cl.root / "client0").glob("*/.*")
        if path.name.endswith(".tmp") or path.name.startswith(".partial-")
    )


@pytest.mark.timeout(600)
@pytest.mark.parametrize("sandbox", sandboxes())
def test_partial_download_never_follows_a_swapped_symlink(tmp_path: Path, sandbox: str) -> None:
    with cluster(tmp_path, client_env={"SANDBOX": sandbox}, server_env=SERVER_ENV) as cl:
        other = cl.api.submit(f'"{PYTHON}" probe.py\n', user_id=2, extra={"probe.py": OTHER_USER})
        cl.api.wait_for(other, "Running", timeout_s=60)

        def secrets() -> list[Path]:
            return list((cl.root / "client0").glob("*/work/secret.txt"))

        eventually(lambda: bool(secrets()), "user 2's secret", 60)
        target = secrets()[0].parent
        attacker = cl.api.submit(
            f'"{PYTHON}" probe.py\n',
            user_id=1,
            extra={"probe.py": SWAPPER, "target.txt": str(target)},
        )
        eventually(
            lambda: any((cl.root / "client0").glob("*/work/ready")), "the swapper to start", 120
        )
        names: set[str] = set()
        for _ in range(8):
            response = httpx.get(f"{cl.api.base_url}/download_partial/{attacker}", timeout=120)
            assert response.status_code == 200, response.text
            with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
                for info in zf.infolist():
                    names.add(info.filename)
                    assert SECRET not in zf.read(info), info.filename
        # The walk did see the swap: the links it refused are reported, not followed.
        assert MANIFEST_NAME in names
        for job_id in (attacker, other):
            httpx.post(f"{cl.api.base_url}/terminate/{job_id}", timeout=60)


def test_over_the_limit_fails_at_once_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    with cluster(tmp_path, client_env={"RESULT_MAX_MB": "10"}, server_env=SERVER_ENV) as cl:
        started = time.monotonic()
        job_id = cl.api.submit("echo hi > log.txt\ntruncate -s 1T big\n")
        body = cl.api.wait_for(job_id, *FINAL, timeout_s=120)
        print(
            f"1 TB sparse file, RESULT_MAX_MB=10: Failed after {time.monotonic() - started:.2f} s"
        )
        assert body["status"] == "Failed"
        assert body["message"] == "result exceeds RESULT_MAX_MB limit of 10 MB"
        response = httpx.get(f"{cl.api.base_url}/download_partial/{job_id}", timeout=120)
        assert response.status_code == 413, response.text
        assert response.json()["message"] == "result exceeds RESULT_MAX_MB limit of 10 MB"
        assert leftovers(cl) == []

        # A client killed while it builds leaves temporary archives; its next start removes them.
        payload_root = next((cl.root / "client0").glob("*/work")).parent
        planted = [
            payload_root / ".result.zip.abc123.tmp",
            payload_root / "..partial-0123456789abcdef.zip.xyz.tmp",
            payload_root / ".partial-0123456789abcdef.zip",
        ]
        client = cl.clients[0]
        assert client.stop() == 0
        for path in planted:
            path.write_bytes(b"half an archive")
        client.start()
        assert leftovers(cl) == []
        assert (payload_root / "work" / "log.txt").is_file()


@pytest.mark.timeout(600)
def test_partial_downloads_cannot_starve_other_jobs(tmp_path: Path) -> None:
    # No RESULT_MAX_MB: zipping the terabyte would take an hour.
    server_env = {**SERVER_ENV, "CLIENT_TIMEOUT": "10", "PARTIAL_KEEP_TIMEOUT": "5"}
    with cluster(tmp_path, server_env=server_env) as cl:
        hog = cl.api.submit("truncate -s 1T big\nsleep 300\n", user_id=1)
        cl.api.wait_for(hog, "Running", timeout_s=60)
        answers: list[int | str] = []
        release = threading.Event()

        def download() -> None:
            # Each requester reads a little of the (endless) stream, then goes away.
            try:
                url = f"{cl.api.base_url}/download_partial/{hog}"
                with httpx.stream("GET", url, timeout=60) as response:
                    answers.append(response.status_code)
                    if response.status_code == 200:
                        next(response.iter_bytes())
                        release.wait(60)
            except httpx.HTTPError as error:
                answers.append(type(error).__name__)

        downloads = [threading.Thread(target=download) for _ in range(8)]
        for thread in downloads:
            thread.start()
        # Every download has its answer's head: all eight streams are open on the client.
        eventually(lambda: len(answers) == len(downloads), "the 8 downloads to start")
        started = time.monotonic()
        trivial = cl.api.submit("echo done > out.txt\n", user_id=2)
        body = cl.api.wait_for(trivial, *FINAL, timeout_s=60)
        print(f"trivial job beside 8 partial downloads: {time.monotonic() - started:.2f} s")
        assert body["status"] == "Completed", body
        assert cl.api.download_zip(trivial).read("out.txt") == b"done\n"
        release.set()
        for thread in downloads:
            thread.join()
        # Each got an answer: a stream (one at a time per payload), or a 500 once the server
        # gave up waiting for its turn (CLIENT_TIMEOUT); none is left hanging.
        assert len(answers) == 8, answers
        assert set(answers) <= {200, 500}, answers
        # The client stops zipping once nobody reads.
        eventually(
            lambda: "abandoned: requester gone" in cl.clients[0].log(), "the build to stop", 60
        )
        # The copy the server keeps of the killed hog is cut at PARTIAL_KEEP_TIMEOUT.
        assert httpx.post(f"{cl.api.base_url}/terminate/{hog}", timeout=60).status_code == 200
        assert cl.server is not None
        assert "took more than PARTIAL_KEEP_TIMEOUT (5 s)" in cl.server.log()


DEEP_TREE = """\
import os
top = os.open(".", os.O_RDONLY)
fd = top
for _ in range(10000):
    os.mkdir("d", dir_fd=fd)
    fd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
os.close(os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
open("top.txt", "w").write("top")
"""


def test_a_result_with_entries_left_out_says_so(tmp_path: Path) -> None:
    try:
        check_deep_tree_result(tmp_path)
    finally:
        # shutil.rmtree (and so pytest's own clean-up) recurses once per level and fails on
        # this tree; coreutils' rm does not.
        subprocess.run(["rm", "-rf", str(tmp_path / "client0")], check=True, timeout=300)


def check_deep_tree_result(tmp_path: Path) -> None:
    with cluster(tmp_path, server_env=SERVER_ENV) as cl:
        started = time.monotonic()
        job_id = cl.api.submit(f'"{PYTHON}" probe.py\n', extra={"probe.py": DEEP_TREE})
        body = cl.api.wait_for(job_id, *FINAL, timeout_s=300)
        print(f"10,000-deep tree: {body['status']} after {time.monotonic() - started:.2f} s")
        assert body["status"] == "Completed", body
        response = httpx.get(f"{cl.api.base_url}/download/{job_id}", timeout=120)
        assert response.headers["content-type"] == "application/zip"
        message = unquote(response.headers["x-orchestrator-message"])
        cut = "d/" * (MAX_DEPTH + 1)
        assert message.startswith("result incomplete: 1 entry left out"), message
        # The name is shortened to 80 characters around "..." (it travels in a header).
        assert f"{cut[:40]}...{cut[-40:]} (deeper than {MAX_DEPTH} levels)" in message
        with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
            assert zf.read("top.txt") == b"top"
            manifest = zf.read(MANIFEST_NAME).decode()
        assert f"{cut}\tdeeper than {MAX_DEPTH} levels" in manifest
        assert "result incomplete: 1 entry left out" in cl.clients[0].log()
