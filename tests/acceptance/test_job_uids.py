"""JOB_USERS: every running job has a uid of its own (issue 21, item 1 and finding 1).

Real server and client processes, the client as root, jobs under SANDBOX=rlimits and bwrap.
Each probe is an uploaded file run from run.sh; a job that must wait for the test touches
`ready-<name>` in its work directory and waits for `go` there (the test, as root, writes it).

The uid ranges below are used by no account on the test machine (checked before use).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit import eventually, unavailable
from testkit.harness import Cluster, cluster
from tests.acceptance.sandboxing import bwrap_problem, open_directory
from tests.acceptance.test_sandbox import (
    FINAL,
    ProcessCounter,
    escapers,
    processes_of,
    run_job,
)

# One worker for the whole module: a client reclaims every uid of its range as it starts
# (kill -9 as each uid), so the module-scoped cluster of one sandbox, built again on a second
# xdist worker over the same range, killed the first one's jobs (seen in CI: a job ended by
# SIGKILL). Its own group, beside the one of the tests that share JOB_USER.
pytestmark = pytest.mark.xdist_group("job-uids")
TOKEN = "t" * 32
MAX_PROCESSES = 30
RANGES = {"rlimits": (72000, 72003), "bwrap": (72010, 72013), "pool_of_one": (72020, 72020)}
SERVER_ENV = {"SERVICE_EXAMPLE_TIMEOUT": "300", "CLIENT_TOKEN": TOKEN}


def unused_range(first: int, last: int) -> str:
    for uid in range(first, last + 1):
        with contextlib.suppress(KeyError):
            pwd.getpwuid(uid)
            pytest.fail(f"uid {uid} belongs to an account: pick another range for the test")
    return f"{first}-{last}"


@contextlib.contextmanager
def uid_cluster(sandbox: str, uids: tuple[int, int]) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        unavailable("JOB_USERS needs the client to run as root")
    if sandbox == "bwrap" and (problem := bwrap_problem(user=uids[0])) is not None:
        unavailable(f"bwrap as uid {uids[0]}: {problem}")
    env = {
        "SANDBOX": sandbox,
        "JOB_USERS": unused_range(*uids),
        "JOB_MAX_PROCESSES": str(MAX_PROCESSES),
        "CLIENT_TOKEN": TOKEN,
    }
    with (
        open_directory(f"jo-uids-{sandbox}-") as root,
        cluster(root, client_env=env, server_env=SERVER_ENV) as cl,
    ):
        yield cl


@pytest.fixture(scope="module", params=["rlimits", "bwrap"])
def uids(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with uid_cluster(request.param, RANGES[request.param]) as cl:
        yield cl


def waiting_job(name: str, body: str = "") -> str:
    """A probe that records its uid, runs `body`, says it is ready and waits for `go`."""
    return f"id -u > uid.txt\n{body}\ntouch ready-{name}\nwhile [ ! -e go ]; do sleep 0.05; done\n"


def work_of(cl: Cluster, name: str) -> Path:
    """The work directory of the running job that touched ready-<name>."""
    return work_of_file(cl, f"ready-{name}", "uid.txt")


def submit(cl: Cluster, name: str, script: str) -> int:
    return cl.api.submit(f"bash {name}.sh\n", extra={f"{name}.sh": script})


def terminate(cl: Cluster, job_id: int) -> None:
    response = httpx.post(f"{cl.api.base_url}/terminate/{job_id}", timeout=30)
    assert response.status_code == 200, response.text


def test_jobs_get_their_own_uid_and_cannot_reach_each_other(uids: Cluster) -> None:
    client = uids.clients[0]
    assert client.process is not None
    data_path = Path(client.env["DATA_PATH"])
    secret = f"secret-{uuid.uuid4().hex}"
    first = submit(uids, "first", waiting_job("first", f"echo {secret} > input.dat"))
    first_work = work_of(uids, "first")
    first_uid = int((first_work / "uid.txt").read_text())
    [first_process, *_] = processes_of(first_uid, zombies=False)
    probe = f"""\
id -u > uid.txt
if cat "{first_work}/input.dat" > /dev/null 2>&1; then echo read=yes; else echo read=no; fi
if (echo x > "{first_work}/ro.txt") 2> /dev/null; then echo write=yes; else echo write=no; fi
if cat "{first_work.parent}/output.log" > /dev/null 2>&1; then echo log=yes; else echo log=no; fi
if tr '\\0' '\\n' 2> /dev/null < /proc/{client.process.pid}/environ | grep -q CLIENT_TOKEN
then echo environ=yes; else echo environ=no; fi
if kill -0 {client.process.pid} 2> /dev/null; then echo signal_client=yes
else echo signal_client=no; fi
if kill -0 {first_process.pid} 2> /dev/null; then echo signal_job=yes; else echo signal_job=no; fi
ls -A "{data_path}" > listing.txt 2> /dev/null
exit 0
"""
    second = run_job(uids, "bash probe.sh > probe.txt\n", {"probe.sh": probe})
    assert second.status == "Completed", second.message
    assert second.text("probe.txt").split() == [
        "read=no",
        "write=no",
        "log=no",
        "environ=no",
        "signal_client=no",
        "signal_job=no",
    ]
    # Other payloads are not listed (DATA_PATH is 0711; under bwrap a tmpfs with only the
    # mount point of the job's own work directory).
    assert first_work.parent.name not in second.text("listing.txt").split()
    second_uid = int(second.text("uid.txt"))
    low, high = RANGES["rlimits"] if "rlimits" in str(data_path) else RANGES["bwrap"]
    assert low <= first_uid <= high
    assert low <= second_uid <= high
    assert second_uid != first_uid
    (first_work / "go").touch()
    body = uids.api.wait_for(first, *FINAL, timeout_s=120)
    assert body["status"] == "Completed", body
    result = uids.api.download_zip(first)
    assert result.read("input.dat").decode() == f"{secret}\n"
    assert "ro.txt" not in result.namelist()


# Forks in a loop until 8 s passed or 300 children were started (what keeps the machine
# usable if the limit did not hold), in a subshell: bash retries a refused fork for about
# 15 s and then exits, which in the job's own shell ended the job (Failed) while a slow
# machine still ran the sibling. The job's shell then becomes a sleep (exec: no fork), so it
# stays Running at its limit until it is killed.
BOMB = """\
(
  spawned=0
  while [ "$SECONDS" -lt 8 ] && [ "$spawned" -lt 300 ]; do
    sleep 300 &
    spawned=$((spawned + 1))
  done
) 2>/dev/null
exec sleep 300
"""
SIBLING_FORKS = """\
for n in 1 2 3 4 5; do /bin/true || exit 9; done
echo forked > forks.txt
"""


def test_a_fork_bomb_is_contained_per_job_while_a_sibling_still_forks(uids: Cluster) -> None:
    job_id = submit(uids, "fork-bomb", "id -u > uid.txt\n" + BOMB)
    bomb_work = work_of_file(uids, "fork-bomb.sh", "uid.txt")
    bomb_uid = int((bomb_work / "uid.txt").read_text())
    counter = ProcessCounter(bomb_uid)
    counter.start()
    try:
        eventually(lambda: counter.maximum >= MAX_PROCESSES - 5, "the bomb to reach its limit")
        sibling = run_job(uids, "bash forks.sh\n", {"forks.sh": SIBLING_FORKS})
        # The sibling forked while the bomb held its uid's every process slot: it ends only
        # when killed, so it is certainly still there.
        assert uids.api.status(job_id)["status"] == "Running"
    finally:
        terminate(uids, job_id)
        uids.api.wait_for(job_id, *FINAL, timeout_s=120)
        counter.stop()
    assert sibling.status == "Completed", sibling.message
    assert sibling.text("forks.txt") == "forked\n"
    # The limit binds forks after the job's own shell set it: bwrap, its init and that shell
    # may exist before.
    assert counter.maximum <= MAX_PROCESSES + 3, counter.maximum
    eventually(lambda: not processes_of(bomb_uid, zombies=False), "the bomb's uid to be empty")


def work_of_file(cl: Cluster, marker: str, wanted: str) -> Path:
    """The work directory holding `marker` once `wanted` is written there too."""
    data_path = Path(cl.clients[0].env["DATA_PATH"])

    def found() -> Path | None:
        for path in data_path.glob(f"*/work/{marker}"):
            if (path.parent / wanted).is_file() and (path.parent / wanted).read_text():
                return path.parent
        return None

    eventually(found, marker)
    result = found()
    assert result is not None
    return result


def test_a_pool_of_one_uid_reclaims_it_before_reuse(tmp_path: Path) -> None:
    marker = f"jo-escaper-{uuid.uuid4().hex}"
    left_file = Path("/tmp") / f"{marker}-left"
    # Matches the escaper's name but not this pattern itself (in the grep's own cmdline).
    pattern = f"{marker[:-1]}[{marker[-1]}]"
    escape = f"""\
echo left > {left_file}
setsid nohup bash -c 'exec -a {marker} sleep 300' < /dev/null > /dev/null 2>&1 &
for _ in $(seq 500); do
  cat /proc/[0-9]*/cmdline 2> /dev/null | tr '\\0' '\\n' | grep -qx {marker} && break
  sleep 0.01
done
"""
    check = f"""\
id -u > uid.txt
if [ -e {left_file} ]; then echo tmp=left; else echo tmp=gone; fi > left.txt
if cat /proc/[0-9]*/cmdline 2> /dev/null | tr '\\0' '\\n' | grep -qx '{pattern}'
then echo escaper=alive; else echo escaper=gone; fi > escaper.txt
"""
    try:
        with uid_cluster("rlimits", RANGES["pool_of_one"]) as cl:
            client = cl.clients[0]
            first = submit(cl, "first", waiting_job("first", escape))
            first_work = work_of(cl, "first")
            assert escapers(marker), "the escaper did not start"
            # A client crash mid-job: the restarted client re-adopts the job and keeps its uid.
            client.stop(signal.SIGKILL)
            client.start()
            second = cl.api.submit("bash check.sh\n", extra={"check.sh": check})
            cl.api.wait_for(second, "Prepared", timeout_s=60)
            # A job killed while it waits for a uid ends Killed.
            third = cl.api.submit("echo never > never.txt\n")
            cl.api.wait_for(third, "Prepared", timeout_s=60)
            terminate(cl, third)
            assert cl.api.wait_for(third, *FINAL, timeout_s=60)["status"] == "Killed"
            # The first job still runs under the uid (the server learns it again after the
            # restart); the second still waits for it.
            cl.api.wait_for(first, "Running", timeout_s=60)
            assert escapers(marker), "the restarted client reclaimed a uid a job still holds"
            assert cl.api.status(second)["status"] == "Prepared"
            (first_work / "go").touch()
            assert cl.api.wait_for(first, *FINAL, timeout_s=120)["status"] == "Completed"
            body = cl.api.wait_for(second, *FINAL, timeout_s=120)
            assert body["status"] == "Completed", body
            result = cl.api.download_zip(second)
            assert int(result.read("uid.txt")) == RANGES["pool_of_one"][0]
            assert result.read("left.txt").decode() == "tmp=gone\n"
            assert result.read("escaper.txt").decode() == "escaper=gone\n"
            assert escapers(marker) == []
            assert not left_file.exists()
    finally:
        left_file.unlink(missing_ok=True)
        for process in escapers(marker):
            with contextlib.suppress(Exception):
                process.kill()


def test_without_a_job_user_a_job_reaches_the_client_and_other_jobs(tmp_path: Path) -> None:
    """What SANDBOX=none without a job user allows (docs/security.md's table says so): the job has
    the client's uid. Not a wish, a record: if it ever fails, update the table."""
    env = {"SANDBOX": "none", "CLIENT_TOKEN": TOKEN}
    with cluster(tmp_path, client_env=env, server_env=SERVER_ENV) as cl:
        client = cl.clients[0]
        assert client.process is not None
        first = submit(cl, "first", waiting_job("first", "echo mine > input.dat"))
        first_work = work_of(cl, "first")
        probe = f"""\
if cat "{first_work}/input.dat" > /dev/null 2>&1; then echo read=yes; else echo read=no; fi
if (echo x > "{first_work}/dropped.txt") 2> /dev/null; then echo write=yes; else echo write=no; fi
if tr '\\0' '\\n' 2> /dev/null < /proc/{client.process.pid}/environ | grep -q CLIENT_TOKEN
then echo environ=yes; else echo environ=no; fi
if kill -0 {client.process.pid} 2> /dev/null; then echo signal_client=yes
else echo signal_client=no; fi
"""
        second = run_job(cl, "bash probe.sh > probe.txt\n", {"probe.sh": probe})
        (first_work / "go").touch()
        assert cl.api.wait_for(first, *FINAL, timeout_s=120)["status"] == "Completed"
        assert second.status == "Completed", second.message
        assert second.text("probe.txt").split() == [
            "read=yes",
            "write=yes",
            "environ=yes",
            "signal_client=yes",
        ]
