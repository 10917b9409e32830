"""The client's sandbox: SANDBOX=rlimits|bwrap, the JOB_MAX_* limits and JOB_USER.

Every probe is an uploaded file run from run.sh (the validator only reads run.sh, and it
would rightly reject most probes written there). Jobs go through a real server and client;
their files are read back from /download (Completed) or /download_partial (Failed).

Needs: root for JOB_USER (a system user `jo-test-job` is created when missing), bubblewrap
for the bwrap tests; both skip with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import threading
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from testkit import eventually, unavailable
from testkit.harness import Cluster, cluster, free_port
from tests.acceptance.sandboxing import (
    JOB_USER,
    bwrap_problem,
    ensure_job_user,
    open_directory,
)

FINAL = ("Completed", "Failed", "Invalid", "Killed", "Cleaned")
# Every job here runs as the same user, and RLIMIT_NPROC counts that user's processes across
# jobs: the module runs on one xdist worker so no other test's jobs share the count.
pytestmark = pytest.mark.xdist_group("sandbox-job-user")
PYTHON = sys.executable
#: An interpreter a job user may run (a venv below a root-only home is out of its reach).
JOB_PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else PYTHON
MIB = 1024 * 1024
#: A backstop so that no sandbox test can leave a job running forever.
SERVER_ENV = {"SERVICE_EXAMPLE_TIMEOUT": "120"}


# ---- environment checks -------------------------------------------------------------------


@pytest.fixture(scope="session")
def job_user() -> pwd.struct_passwd:
    return ensure_job_user()


@pytest.fixture(scope="module")
def bwrap() -> None:
    problem = bwrap_problem()
    if problem is not None:
        unavailable(problem)


# ---- helpers ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    job_id: int
    status: str
    message: str
    files: zipfile.ZipFile

    def text(self, name: str) -> str:
        return self.files.read(name).decode(errors="replace")

    def sizes(self) -> dict[str, int]:
        return {info.filename: info.file_size for info in self.files.infolist()}


def run_job(
    cl: Cluster, script: str, files: dict[str, str] | None = None, timeout_s: float = 180
) -> Outcome:
    job_id = cl.api.submit(script, extra=files)
    body = cl.api.wait_for(job_id, *FINAL, timeout_s=timeout_s)
    archive = (
        cl.api.download_zip(job_id)
        if body["status"] == "Completed"
        else cl.api.download_partial_zip(job_id)
    )
    return Outcome(job_id, body["status"], body["message"], archive)


def processes_of(uid: int, *, zombies: bool = True) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["uids", "status"]):
        with contextlib.suppress(psutil.Error):
            if process.info["uids"] is None or process.info["uids"].real != uid:
                continue
            if not zombies and process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            found.append(process)
    return found


def wait_until_no_process_of(uid: int, what: str, timeout_s: float = 60) -> None:
    """Wait until uid has no living (non-zombie) process; fail naming those left."""
    eventually(
        lambda: not processes_of(uid, zombies=False),
        f"no process of uid {uid} ({what})",
        timeout_s,
        detail=lambda: describe(processes_of(uid, zombies=False)),
    )


class ProcessCounter(threading.Thread):
    """Samples how many processes a user has, for as long as it runs; keeps the maximum."""

    def __init__(self, uid: int) -> None:
        super().__init__(daemon=True)
        self.uid = uid
        self.maximum = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.maximum = max(self.maximum, len(processes_of(self.uid)))
            self.samples += 1
            self._stop_event.wait(0.005)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


# ---- SANDBOX=rlimits ------------------------------------------------------------------------

MEMORY_MB, FILE_MB, CPU_SECONDS = 200, 1, 1

MEMORY_PROBE = """\
import sys
small = bytearray(20 * 1024 * 1024)  # well below the limit: must work
open("small.txt", "w").write("ok")
try:
    big = bytearray(1024 * 1024 * 1024)
except MemoryError:
    open("result.txt", "w").write("MemoryError")
    sys.exit(3)
open("result.txt", "w").write("allocated 1 GiB")
"""


@pytest.fixture(scope="module")
def limited(job_user: pwd.struct_passwd) -> Iterator[Cluster]:
    # rlimits needs a job user (issue 21: with the client's uid, jobs read its environment).
    env = {
        "SANDBOX": "rlimits",
        "JOB_USER": JOB_USER,
        "JOB_MAX_MEMORY_MB": str(MEMORY_MB),
        "JOB_MAX_FILE_MB": str(FILE_MB),
        "JOB_MAX_CPU_SECONDS": str(CPU_SECONDS),
    }
    with (
        open_directory("jo-sandbox-rlimits-") as root,
        cluster(root, client_env=env, server_env=SERVER_ENV) as cl,
    ):
        yield cl


def test_ordinary_job_runs_under_limits(limited: Cluster) -> None:
    outcome = run_job(
        limited, "echo ok > out.txt\nulimit -v > limits.txt\nulimit -f >> limits.txt\n"
    )
    assert outcome.status == "Completed", outcome.message
    assert outcome.text("out.txt") == "ok\n"
    # The limits bind run.sh itself (KiB of address space, KiB per written file).
    assert outcome.text("limits.txt").split() == [str(MEMORY_MB * 1024), str(FILE_MB * 1024)]


def test_memory_hog_gets_memory_error(limited: Cluster) -> None:
    outcome = run_job(limited, f'"{JOB_PYTHON}" probe.py\n', {"probe.py": MEMORY_PROBE})
    assert outcome.status == "Failed"
    assert outcome.message == "run.sh exited with status 3"
    assert outcome.text("small.txt") == "ok"
    assert outcome.text("result.txt") == "MemoryError"


def test_file_size_limit_stops_a_big_write(limited: Cluster) -> None:
    script = "head -c 5000000 /dev/zero > big.bin\nrc=$?\necho $rc > rc.txt\nexit $rc\n"
    outcome = run_job(limited, script)
    assert outcome.status == "Failed"
    # SIGXFSZ (25) killed `head`: bash reports 128 + 25.
    assert outcome.text("rc.txt").strip() == "153"
    assert "153" in outcome.message or "SIGXFSZ" in outcome.message
    assert outcome.sizes()["big.bin"] <= FILE_MB * MIB


def test_cpu_limit_kills_a_busy_loop(limited: Cluster) -> None:
    outcome = run_job(limited, "echo spinning > progress.txt\nwhile :; do :; done\n")
    assert outcome.status == "Failed"
    assert outcome.text("progress.txt") == "spinning\n"
    # Killed by a signal: SIGXCPU (152) or SIGKILL (137) once the hard limit is reached.
    assert (
        outcome.message
        in {
            "run.sh exited with status 152",
            "run.sh exited with status 137",
        }
        or "SIGXCPU" in outcome.message
        or "SIGKILL" in outcome.message
    ), outcome.message


def test_cpu_limit_message_names_the_signal(limited: Cluster) -> None:
    outcome = run_job(limited, "while :; do :; done\n")
    assert outcome.status == "Failed"
    assert "SIGXCPU" in outcome.message or "SIGKILL" in outcome.message, outcome.message


# ---- JOB_USER + JOB_MAX_PROCESSES ------------------------------------------------------------

MAX_PROCESSES = 30
# Forks in a loop (no `:(){ :|:& };:`), but stops by itself: after 8 s, or after 300 children
# (if the limit did not hold, this is what keeps the machine usable).
BOMB = """\
spawned=0
while [ "$SECONDS" -lt 8 ] && [ "$spawned" -lt 300 ]; do
  sleep 5 &
  spawned=$((spawned + 1))
done
echo "$spawned" > spawned.txt
wait
"""


@pytest.fixture(scope="module")
def as_user(job_user: pwd.struct_passwd) -> Iterator[Cluster]:
    env = {"SANDBOX": "rlimits", "JOB_USER": JOB_USER, "JOB_MAX_PROCESSES": str(MAX_PROCESSES)}
    with (
        open_directory("jo-sandbox-user-") as root,
        cluster(root, client_env=env, server_env=SERVER_ENV) as cl,
    ):
        yield cl


def test_job_runs_as_job_user_and_results_are_zipped(
    as_user: Cluster, job_user: pwd.struct_passwd
) -> None:
    script = "id -u > uid.txt\nid -g > gid.txt\nmkdir -p sub\necho nested > sub/file.txt\n"
    outcome = run_job(as_user, script, {"input.txt": "data\n"})
    assert outcome.status == "Completed", outcome.message
    assert outcome.text("uid.txt").strip() == str(job_user.pw_uid)
    assert outcome.text("gid.txt").strip() == str(job_user.pw_gid)
    assert outcome.text("sub/file.txt") == "nested\n"
    assert outcome.text("input.txt") == "data\n"


def test_job_user_cannot_touch_the_client(as_user: Cluster) -> None:
    client = as_user.clients[0]
    assert client.process is not None
    client_pid = client.process.pid
    data_path = client.env["DATA_PATH"]
    marker = f"jo-probe-{uuid.uuid4().hex}"
    probe = f"""\
if kill -0 {client_pid} 2>/dev/null; then echo signal=allowed; else echo signal=denied; fi
if cat /proc/{client_pid}/environ > /dev/null 2>&1; then echo environ=read
else echo environ=denied; fi
if (echo x > "{data_path}/{marker}") 2>/dev/null; then echo data=written; else echo data=refused; fi
if (echo x > "$PWD/../{marker}") 2>/dev/null; then echo root=written; else echo root=refused; fi
"""
    outcome = run_job(as_user, "bash probe.sh > probe.txt\n", {"probe.sh": probe})
    assert outcome.status == "Completed", outcome.message
    assert outcome.text("probe.txt").split() == [
        "signal=denied",
        "environ=denied",
        "data=refused",
        "root=refused",
    ]
    assert not list(Path(data_path).rglob(marker))


# run.sh ends only once the escaper runs under its marker name: ending earlier, the group kill
# after run.sh could catch it before its setsid, and it would seem contained when it is not.
ESCAPE = """\
setsid bash -c 'exec -a {marker} sleep 300' < /dev/null > /dev/null 2>&1 &
for _ in $(seq 500); do
  cat /proc/[0-9]*/cmdline 2> /dev/null | tr '\\0' '\\n' | grep -qx {marker} && break
  sleep 0.01
done
echo escaped > escaped.txt
"""


def escapers(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            cmdline = process.info["cmdline"] or []
            if cmdline[:1] == [marker] and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def assert_leftovers_are_killed(cl: Cluster) -> None:
    """A process that left run.sh's process group (setsid) must not outlive the job."""
    marker = f"jo-escaper-{uuid.uuid4().hex}"
    try:
        outcome = run_job(cl, "bash escape.sh\n", {"escape.sh": ESCAPE.format(marker=marker)})
        assert outcome.status == "Completed", outcome.message
        assert outcome.text("escaped.txt") == "escaped\n"
        eventually(lambda: not escapers(marker), "the escaped processes to be gone", 10)
    finally:
        for process in escapers(marker):
            with contextlib.suppress(psutil.Error):
                process.kill()


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="LIMITATION client/sandbox.py: without bwrap's PID namespace, a process that leaves "
    "run.sh's process group (setsid) survives the job, even with JOB_USER; only "
    "SANDBOX=bwrap (--unshare-pid) contains it",
)
def test_job_user_leftovers_outside_the_group_are_killed(as_user: Cluster) -> None:
    assert_leftovers_are_killed(as_user)


def describe(processes: list[psutil.Process]) -> list[str]:
    described = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            described.append(f"{process.pid}: {' '.join(process.cmdline())}")
    return described


def assert_fork_bomb_contained(cl: Cluster, uid: int) -> None:
    wait_until_no_process_of(uid, "the job user is busy before the test")
    counter = ProcessCounter(uid)
    counter.start()
    try:
        outcome = run_job(
            cl,
            'bash bomb.sh 2> bomb.err\necho "bomb exited with $?" > bomb.status\n',
            {"bomb.sh": BOMB},
        )
    finally:
        counter.stop()
    # The job ended, and its results were still collected.
    assert outcome.status == "Completed", outcome.message
    assert outcome.text("bomb.status").startswith("bomb exited with")
    assert counter.samples > 0
    # The bomb really pushed against the limit, and the limit held.
    assert counter.maximum >= MAX_PROCESSES // 2, counter.maximum
    # The limit binds forks made after the wrapper's ulimit; up to three processes of the
    # user exist before it (bwrap, bwrap's PID-namespace init, the wrapper itself).
    assert counter.maximum <= MAX_PROCESSES + 3, counter.maximum
    if "spawned.txt" in outcome.files.namelist():
        assert int(outcome.text("spawned.txt")) < 300
    # Nothing of the job is left running.
    wait_until_no_process_of(uid, "the job's processes left running")


def assert_other_jobs_out_of_reach(cl: Cluster) -> None:
    """A job cannot read or change another job's files or logs (same JOB_USER or not)."""
    secret = f"secret-{uuid.uuid4().hex}"
    first = run_job(cl, f"echo {secret} > secret.txt\necho {secret}\n")
    assert first.status == "Completed", first.message
    data_path = Path(cl.clients[0].env["DATA_PATH"])
    work = next(
        path.parent
        for path in data_path.glob("*/work/secret.txt")
        if path.read_text().strip() == secret
    )
    probe = f"""\
if cat "{work}/secret.txt" > /dev/null 2>&1; then echo work=read; else echo work=denied; fi
if (echo tampered > "{work}/secret.txt") 2>/dev/null; then echo write=done
else echo write=denied; fi
if cat "{work.parent}/output.log" > /dev/null 2>&1; then echo log=read; else echo log=denied; fi
"""
    second = run_job(cl, "bash probe.sh > probe.txt\n", {"probe.sh": probe})
    assert second.status == "Completed", second.message
    assert (work / "secret.txt").read_text() == f"{secret}\n"
    assert second.text("probe.txt").split() == ["work=denied", "write=denied", "log=denied"]


def test_fork_bomb_is_contained(as_user: Cluster, job_user: pwd.struct_passwd) -> None:
    assert_fork_bomb_contained(as_user, job_user.pw_uid)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="LIMITATION client/sandbox.py: every job runs as the same JOB_USER, which owns every "
    "payload's work/ (and output.log is 0644), so without bwrap a job reads and overwrites "
    "other jobs' files and reads their logs; only SANDBOX=bwrap hides them",
)
def test_job_user_alone_keeps_jobs_apart(as_user: Cluster) -> None:
    assert_other_jobs_out_of_reach(as_user)


# ---- SANDBOX=bwrap ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def boxed(bwrap: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env = {"SANDBOX": "bwrap", "JOB_MAX_FILE_MB": str(FILE_MB), "CLIENT_TOKEN": "c" * 32}
    with cluster(
        tmp_path_factory.mktemp("bwrap"),
        client_env=env,
        server_env={**SERVER_ENV, "CLIENT_TOKEN": "c" * 32},
    ) as cl:
        yield cl


def write_probe(targets: dict[str, str]) -> str:
    """A probe that tries to create each target; prints `name=written|refused`."""
    lines = []
    for name, target in targets.items():
        lines.append(
            f'if (echo x > "{target}") 2>/dev/null; then echo {name}=written; '
            f"else echo {name}=refused; fi"
        )
    return "\n".join(lines) + "\n"


def test_bwrap_confines_writes_to_the_work_dir(boxed: Cluster) -> None:
    client = boxed.clients[0]
    data_path = Path(client.env["DATA_PATH"])
    home = Path(client.env.get("HOME", "/root"))
    marker = f"jo-probe-{uuid.uuid4().hex}"
    host_paths = [Path("/etc") / marker, home / marker, Path("/usr") / marker]
    targets = {
        "etc": f"/etc/{marker}",
        "home": f"$HOME/{marker}",
        "usr": f"/usr/{marker}",
        "data": f"{data_path}/{marker}",
        "data_relative": f"$PWD/../../{marker}",
        "payload_root": f"$PWD/../{marker}",
        "work": f"$PWD/{marker}",
    }
    try:
        outcome = run_job(
            boxed, "bash probe.sh > probe.txt 2> probe.err\n", {"probe.sh": write_probe(targets)}
        )
        assert outcome.status == "Completed", outcome.message
        results = dict(line.split("=") for line in outcome.text("probe.txt").split())
        assert results["work"] == "written"  # the probe itself works
        for name in ("etc", "home", "usr"):
            assert results[name] == "refused", results
        # DATA_PATH is an empty tmpfs inside: a write may "succeed" there but never reaches
        # the client's real directory.
        found = list(data_path.rglob(marker))
        assert [path.relative_to(data_path).parts[1:] for path in found] == [("work", marker)]
        assert outcome.text(marker) == "x\n"  # the one in the work dir is the result
        for path in host_paths:
            assert not path.exists(), path
    finally:
        for path in host_paths:
            path.unlink(missing_ok=True)


def test_bwrap_tmp_is_private(boxed: Cluster) -> None:
    marker = f"jo-probe-{uuid.uuid4().hex}"
    host_marker = Path("/tmp") / f"jo-host-{uuid.uuid4().hex}"
    script = (
        f"echo secret > /tmp/{marker}\ncat /tmp/{marker} > seen.txt\n"
        f"if [ -e {host_marker} ]; then echo visible; else echo invisible; fi > host.txt\n"
        "echo $TMPDIR > tmpdir.txt\n"
    )
    host_marker.write_text("on the host\n")
    try:
        outcome = run_job(boxed, script)
        assert outcome.status == "Completed", outcome.message
        assert outcome.text("seen.txt") == "secret\n"  # the job has a working /tmp
        assert not (Path("/tmp") / marker).exists()  # ... which is not the host's
        assert outcome.text("host.txt") == "invisible\n"  # and the host's is not its
        assert outcome.text("tmpdir.txt").strip() == "/tmp"
    finally:
        (Path("/tmp") / marker).unlink(missing_ok=True)
        host_marker.unlink(missing_ok=True)


def test_bwrap_hides_other_payloads(boxed: Cluster) -> None:
    first = run_job(boxed, "echo secret-of-the-first > mine.txt\nsleep 0\n")
    assert first.status == "Completed"
    data_path = Path(boxed.clients[0].env["DATA_PATH"])
    payloads = sorted(entry.name for entry in data_path.iterdir() if entry.name.isdigit())
    assert len(payloads) >= 1
    others = [data_path / name / "work" / "mine.txt" for name in payloads]
    assert any(path.is_file() for path in others)
    probe = 'ls -A "$PWD/../.." > listing.txt\n' + "".join(
        f'if cat "{path}" > /dev/null 2>&1; then echo read; else echo hidden; fi\n'
        for path in others
    )
    second = run_job(boxed, "bash probe.sh > probe.txt\n", {"probe.sh": probe})
    assert second.status == "Completed", second.message
    assert set(second.text("probe.txt").split()) == {"hidden"}
    visible = set(second.text("listing.txt").split())
    assert not visible & set(payloads), visible


def test_bwrap_has_no_network(boxed: Cluster) -> None:
    assert boxed.server is not None
    ports = {"client": boxed.clients[0].port, "server": boxed.server.port}
    probe = "".join(
        f"if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo {name}=connected; "
        f"else echo {name}=refused; fi\n"
        for name, port in ports.items()
    )
    outcome = run_job(boxed, "bash probe.sh > probe.txt\n", {"probe.sh": probe})
    assert outcome.status == "Completed", outcome.message
    assert outcome.text("probe.txt").split() == ["client=refused", "server=refused"]


def test_bwrap_isolates_processes(boxed: Cluster) -> None:
    client = boxed.clients[0]
    assert client.process is not None
    assert boxed.server is not None
    assert boxed.server.process is not None
    pids = {"client": client.process.pid, "server": boxed.server.process.pid}
    probe = "".join(
        f"if kill -0 {pid} 2>/dev/null; then echo {name}=signalable; "
        f"else echo {name}=out-of-reach; fi\n"
        f"if tr '\\0' '\\n' < /proc/{pid}/environ 2>/dev/null | grep -q CLIENT_TOKEN; "
        f"then echo {name}_environ=read; else echo {name}_environ=hidden; fi\n"
        for name, pid in pids.items()
    )
    outcome = run_job(boxed, "bash probe.sh > probe.txt\n", {"probe.sh": probe})
    assert outcome.status == "Completed", outcome.message
    assert outcome.text("probe.txt").split() == [
        "client=out-of-reach",
        "client_environ=hidden",
        "server=out-of-reach",
        "server_environ=hidden",
    ]


def test_bwrap_kills_what_the_job_leaves_behind(boxed: Cluster) -> None:
    assert_leftovers_are_killed(boxed)


def test_bwrap_keeps_the_rlimits(boxed: Cluster) -> None:
    script = "head -c 5000000 /dev/zero > big.bin\necho $? > rc.txt\nexit 0\n"
    outcome = run_job(boxed, script)
    assert outcome.status == "Completed", outcome.message
    assert outcome.text("rc.txt").strip() == "153"
    assert outcome.sizes()["big.bin"] <= FILE_MB * MIB


@pytest.fixture(scope="module")
def boxed_user(job_user: pwd.struct_passwd) -> Iterator[Cluster]:
    problem = bwrap_problem(user=job_user.pw_uid)
    if problem is not None:
        unavailable(f"bwrap as {JOB_USER}: {problem}")
    env = {"SANDBOX": "bwrap", "JOB_USER": JOB_USER, "JOB_MAX_PROCESSES": str(MAX_PROCESSES)}
    with (
        open_directory("jo-sandbox-bwrap-user-") as root,
        cluster(root, client_env=env, server_env=SERVER_ENV) as cl,
    ):
        yield cl


def test_bwrap_with_job_user(boxed_user: Cluster, job_user: pwd.struct_passwd) -> None:
    marker = f"jo-probe-{uuid.uuid4().hex}"
    probe = write_probe(
        {"etc": f"/etc/{marker}", "tmp": f"/tmp/{marker}", "work": f"$PWD/{marker}"}
    )
    outcome = run_job(
        boxed_user, "id -u > uid.txt\nbash probe.sh > probe.txt\n", {"probe.sh": probe}
    )
    assert outcome.status == "Completed", outcome.message
    assert outcome.text("uid.txt").strip() == str(job_user.pw_uid)
    assert outcome.text("probe.txt").split() == ["etc=refused", "tmp=written", "work=written"]
    assert not (Path("/tmp") / marker).exists()
    assert not (Path("/etc") / marker).exists()


def test_bwrap_with_job_user_contains_a_fork_bomb(
    boxed_user: Cluster, job_user: pwd.struct_passwd
) -> None:
    assert_fork_bomb_contained(boxed_user, job_user.pw_uid)


def test_bwrap_with_job_user_keeps_jobs_apart(boxed_user: Cluster) -> None:
    assert_other_jobs_out_of_reach(boxed_user)


def test_bwrap_keeps_jobs_apart(boxed: Cluster) -> None:
    assert_other_jobs_out_of_reach(boxed)


# ---- configuration -----------------------------------------------------------------------------


def start_client(env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SERVICE_", "JOB_", "SANDBOX"))
    }
    env.update(
        {
            "PORT": str(free_port()),
            "HOST": "127.0.0.1",
            "DATA_PATH": str(tmp_path / "data"),
            **env_extra,
        }
    )
    return subprocess.run(
        [PYTHON, "-m", "job_orchestrator", "client"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bwrap_sandbox_without_bwrap_stops_the_client(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    bash = shutil.which("bash")
    assert bash is not None
    (bin_dir / "bash").symlink_to(bash)
    result = start_client({"SANDBOX": "bwrap", "PATH": str(bin_dir)}, tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "SANDBOX" in lines[0]
    assert "bwrap" in lines[0]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SANDBOX": "docker"}, "SANDBOX"),
        # Jobs with the client's uid would read its environment and signal it (issue 21).
        ({"SANDBOX": "rlimits"}, "SANDBOX"),
        ({"SANDBOX": "rlimits", "JOB_MAX_MEMORY_MB": "0"}, "JOB_MAX_MEMORY_MB"),
        ({"JOB_USERS": "5"}, "JOB_USERS"),
        ({"SANDBOX": "rlimits", "JOB_MAX_PROCESSES": "-1"}, "JOB_MAX_PROCESSES"),
        ({"SANDBOX": "rlimits", "JOB_MAX_FILE_MB": "1.5"}, "JOB_MAX_FILE_MB"),
        ({"SANDBOX": "rlimits", "JOB_MAX_CPU_SECONDS": "many"}, "JOB_MAX_CPU_SECONDS"),
        ({"JOB_USER": "no-such-user-jo"}, "JOB_USER"),
        ({"JOB_USER": "root"}, "JOB_USER"),
        ({"JOB_USER": "0"}, "JOB_USER"),
    ],
)
def test_bad_sandbox_settings_stop_the_client(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    result = start_client(env, tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]


def test_rlimits_refusal_names_the_job_user_settings(tmp_path: Path) -> None:
    result = start_client({"SANDBOX": "rlimits"}, tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    [line] = result.stderr.splitlines()
    assert "SANDBOX" in line
    assert "JOB_USERS" in line
    assert "JOB_USER " in line


def test_sandbox_none_warns_on_stderr_that_jobs_share_the_clients_uid(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SERVICE_", "JOB_", "SANDBOX"))
    }
    port = free_port()
    env.update({"PORT": str(port), "HOST": "127.0.0.1", "DATA_PATH": str(tmp_path / "data")})
    client = subprocess.Popen(
        [PYTHON, "-m", "job_orchestrator", "client"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def healthy() -> bool:
            assert client.poll() is None, "the client stopped"
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200

        eventually(healthy, "the client to answer", retry_on=(httpx.HTTPError,))
    finally:
        client.terminate()
        _, stderr = client.communicate(timeout=30)
    warnings = [line for line in stderr.splitlines() if "SANDBOX=none" in line]
    assert len(warnings) == 1, stderr
    assert "CLIENT_TOKEN" in warnings[0]
    assert "JOB_USERS" in warnings[0]
