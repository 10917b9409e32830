"""A job attacks the file its exit status is recorded in (issue 21, finding 2).

run.sh replaces `exit/code` beside its work directory with a symlink to /dev/zero, a FIFO
(read once by a helper so the wrapper's write goes through, then left for the client), or a
symlink to a root-only file holding 4242. The client is killed -9 and restarted while the
jobs run, so the re-adoption path (which reads the file rather than awaiting its child)
reads what they left. The client must keep answering, and no job may come back with 4242.

- With the client's uid (SANDBOX=none, no job user) the job can reach the file: the bounded
  reader (no links, regular files only, a few bytes) is what protects the client.
- With a job user (rlimits, and bwrap) the exit directory is the client's, mode 0700, never
  bound into bubblewrap: the job cannot even reach it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit import eventually, unavailable
from testkit.harness import Cluster, cluster
from tests.acceptance.sandboxing import (
    JOB_USER,
    bwrap_problem,
    ensure_job_user,
    open_directory,
)

# JOB_USER's RLIMIT_NPROC is shared with test_sandbox's jobs: same xdist worker.
pytestmark = pytest.mark.xdist_group("sandbox-job-user")
FINAL = ("Completed", "Failed", "Invalid", "Killed", "Cleaned")
SERVER_ENV = {"SERVICE_EXAMPLE_TIMEOUT": "120"}
SECRET_STATUS = "4242"

# Every attack says it runs (`ready-<name>`), waits for `go` (the test writes both in its
# work directory, after the client's restart), then reports what it managed in attack.txt.
PRELUDE = """\
touch ready-{name}
while [ ! -e go ]; do sleep 0.05; done
code="$PWD/../exit/code"
"""
LINK = 'if ln -sfn "{target}" "$code" 2> /dev/null; then echo linked; else echo refused; fi'
ATTACKS = {
    "dev_zero": LINK.replace("{target}", "/dev/zero"),
    # The helper (same process group, still alive when run.sh ends) opens the FIFO for
    # reading, so the wrapper's write succeeds and the FIFO stays for the client to read.
    "fifo": (
        'rm -f "$code" 2> /dev/null\n'
        'if mkfifo "$code" 2> /dev/null; then echo made; (cat "$code" > /dev/null &)\n'
        "else echo refused; fi"
    ),
    "secret": LINK.replace("{target}", "{secret}"),
}


@pytest.fixture
def secret() -> Iterator[Path]:
    """A root-only file holding 4242, in a directory any user may traverse."""
    with open_directory("jo-exit-file-") as directory:
        path = directory / "secret"
        path.write_text(f"{SECRET_STATUS}\n")
        path.chmod(0o600)
        yield path


def attack_script(name: str, secret: Path) -> str:
    body = ATTACKS[name].format(secret=secret)
    return PRELUDE.format(name=name) + f"{{\n{body}\n}} > attack.txt\nexit 0\n"


def run_attacks(
    cl: Cluster, names: list[str], secret: Path
) -> dict[str, tuple[int, dict[str, Any]]]:
    """Run the attacks through a client kill -9 and restart; their final bodies, by name."""
    client = cl.clients[0]
    data_path = Path(client.env["DATA_PATH"])
    jobs = {
        name: cl.api.submit("bash attack.sh\n", extra={"attack.sh": attack_script(name, secret)})
        for name in names
    }
    eventually(lambda: len(list(data_path.glob("*/work/ready-*"))) == len(names), "the jobs")
    client.stop(signal.SIGKILL)  # the jobs keep running, in their own process groups
    client.start()
    for ready in data_path.glob("*/work/ready-*"):
        (ready.parent / "go").touch()
    bodies: dict[str, tuple[int, dict[str, Any]]] = {}
    deadline = time.monotonic() + 120
    while len(bodies) < len(jobs):
        assert time.monotonic() < deadline, f"jobs never ended: {sorted(set(jobs) - set(bodies))}"
        # The client keeps answering while it reads what the jobs left (a read of /dev/zero
        # or of a FIFO on its event loop would block this request).
        response = httpx.get(f"{client.url}/health", timeout=10)
        assert response.status_code == 200, response.text
        for name, job_id in jobs.items():
            body = cl.api.status(job_id)
            if body["status"] in FINAL:
                bodies[name] = (job_id, body)
        time.sleep(0.1)
    return bodies


def recorded_exit_codes(cl: Cluster) -> list[int | None]:
    data_path = Path(cl.clients[0].env["DATA_PATH"])
    return [
        json.loads(state.read_text()).get("exit_code") for state in data_path.glob("*/state.json")
    ]


def test_a_job_with_the_clients_uid_cannot_stall_the_client(tmp_path: Path, secret: Path) -> None:
    env = {"SANDBOX": "none"}
    with cluster(tmp_path, client_env=env, server_env=SERVER_ENV) as cl:
        bodies = run_attacks(cl, ["dev_zero", "fifo"], secret)
        for name, (_job_id, body) in bodies.items():
            # The job did replace the file; its status is unknown, never what the link says.
            assert body["status"] in {"Completed", "Failed"}, (name, body)
            assert SECRET_STATUS not in body["message"], (name, body)
        assert SECRET_STATUS not in map(str, recorded_exit_codes(cl))
        assert cl.shutdown() == []


#: JOB_USERS of the per-job uid case (no account uses them on the test machine).
JOB_USERS = "72040-72043"


@contextlib.contextmanager
def job_user_cluster(sandbox: str) -> Iterator[Cluster]:
    user = ensure_job_user()
    if sandbox == "bwrap" and (problem := bwrap_problem(user=user.pw_uid)) is not None:
        unavailable(f"bwrap as {JOB_USER}: {problem}")
    env = {"SANDBOX": sandbox, "JOB_USER": JOB_USER}
    if sandbox == "rlimits-uids":
        env = {"SANDBOX": "rlimits", "JOB_USERS": JOB_USERS}
    with (
        open_directory("jo-exit-file-user-") as root,
        cluster(root, client_env=env, server_env=SERVER_ENV) as cl,
    ):
        yield cl


@pytest.mark.parametrize("sandbox", ["rlimits", "bwrap", "rlimits-uids"])
def test_a_job_user_cannot_reach_its_exit_file(sandbox: str, secret: Path) -> None:
    with job_user_cluster(sandbox) as cl:
        bodies = run_attacks(cl, list(ATTACKS), secret)
        for name, (job_id, body) in bodies.items():
            assert body["status"] == "Completed", (name, body)
            attack = cl.api.download_zip(job_id).read("attack.txt").decode()
            assert attack.split() == ["refused"], name
        assert SECRET_STATUS not in map(str, recorded_exit_codes(cl))
        data_path = Path(cl.clients[0].env["DATA_PATH"])
        for exit_dir in data_path.glob("*/exit"):
            info = exit_dir.lstat()
            assert stat.S_ISDIR(info.st_mode), exit_dir
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (os.geteuid(), 0o700), exit_dir
        assert cl.shutdown() == []
