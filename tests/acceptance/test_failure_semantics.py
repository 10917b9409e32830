"""No job is ever lost, stuck or run twice: failures of clients, of the server and of the jobs.

Real `server` and `client` processes on loopback ports (testkit/harness.py). A job proves it ran
by appending its token to a marker or ledger file outside its own directory (under tmp_path),
so "ran exactly once" is read from the file system, not from what the orchestrator says.
Waits use generous deadlines; nothing here asserts how fast something happened.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import secrets
import shutil
import signal
import time
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from testkit import eventually
from testkit.harness import Cluster, Node, cluster, tagged_processes
from tests.acceptance.sandboxing import open_directory

FINAL = ("Completed", "Failed", "Invalid", "Killed", "Cleaned")
SEED = int(os.environ.get("FAILURE_SEED", "20240611"))


# ---- helpers -------------------------------------------------------------------------------


def job_processes(cl: Cluster) -> list[psutil.Process]:
    """Tagged processes that are not the orchestrator's own server/client processes."""
    nodes = {
        node.process.pid
        for node in [cl.server, *cl.clients]
        if node is not None and node.process is not None and node.process.poll() is None
    }
    found = []
    for process in tagged_processes(cl.tag):
        try:
            if process.pid in nodes or "job_orchestrator" in " ".join(process.cmdline()):
                continue
        except psutil.Error:
            continue
        found.append(process)
    return found


def processes_running(cl: Cluster, needle: str) -> list[psutil.Process]:
    found = []
    for process in job_processes(cl):
        try:
            if needle in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            pass
    return found


def kill_job_processes(cl: Cluster) -> None:
    for process in job_processes(cl):
        with contextlib.suppress(psutil.Error):
            process.kill()


def payload_dirs(data_path: Path) -> list[Path]:
    if not data_path.is_dir():
        return []
    return sorted(
        (entry for entry in data_path.iterdir() if entry.name.isdigit() and entry.is_dir()),
        key=lambda entry: int(entry.name),
    )


def payload_with(data_path: Path, token: str) -> Path | None:
    """The client payload directory whose run.sh mentions token."""
    for entry in payload_dirs(data_path):
        script = entry / "work" / "run.sh"
        if script.is_file() and token in script.read_text(errors="replace"):
            return entry
    return None


def payload_state(payload_dir: Path) -> dict[str, Any]:
    """The client's own record of a payload, read from disk (asking over HTTP releases it)."""
    try:
        state: dict[str, Any] = json.loads((payload_dir / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return state


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def read_zip(response: httpx.Response) -> zipfile.ZipFile:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip", response.text
    return zipfile.ZipFile(io.BytesIO(response.content))


def stable_status(cl: Cluster, job_id: int, reads: int = 3) -> str:
    """The job's status, read several times a little apart: a final status never changes."""
    seen = []
    for _ in range(reads):
        seen.append(cl.api.status(job_id)["status"])
        time.sleep(0.1)
    assert len(set(seen)) == 1, f"job {job_id} changed status after finishing: {seen}"
    return str(seen[0])


def marker_script(marker: Path, body: str) -> str:
    """A run.sh that records each start in marker (outside the job directory), then runs body."""
    return f'echo "ran $(date +%s.%N)" >> {marker}\n{body}'


# ---- wall-time limit -----------------------------------------------------------------------


def test_wall_time_limit_fails_the_job_kills_its_group_and_keeps_its_files(
    tmp_path: Path,
) -> None:
    with cluster(tmp_path, server_env={"SERVICE_EXAMPLE_TIMEOUT": "2"}) as cl:
        job_id = cl.api.submit("echo before > partial.txt\nsleep 300 &\nsleep 300\n")
        body = cl.api.wait_for(job_id, *FINAL, timeout_s=90)
        assert body["status"] == "Failed", body
        assert body["message"] == "wall-time limit of 2 s exceeded", body
        eventually(
            lambda: not processes_running(cl, "sleep 300"),
            "every process of the timed-out job to be gone",
        )
        response = httpx.get(f"{cl.api.base_url}/download_partial/{job_id}", timeout=30)
        assert read_zip(response).read("partial.txt") == b"before\n"
        assert stable_status(cl, job_id) == "Failed"
        assert cl.shutdown() == []


# ---- terminate racing completion -----------------------------------------------------------


def test_terminate_racing_completion_gives_one_consistent_outcome(tmp_path: Path) -> None:
    """Terminate each short job at about the moment it completes.

    A job completes within a few tens of milliseconds of its upload's answer, so /terminate is
    sent after a random delay around that moment, from several threads at once.
    """
    rng = random.Random(SEED)
    count = 24
    plans = [(rng.randint(1, 9), rng.uniform(0.0, 0.05)) for _ in range(count)]
    with cluster(tmp_path) as cl:

        def race(index: int) -> tuple[int, str, int, str]:
            hundredths, delay = plans[index]
            token = f"race-{index}-{secrets.token_hex(4)}"
            job_id = cl.api.submit(f"sleep 0.0{hundredths}\necho {token} > output.txt\n")
            time.sleep(delay)
            response = httpx.post(f"{cl.api.base_url}/terminate/{job_id}", timeout=60)
            return job_id, token, response.status_code, response.json()["status"]

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(race, range(count)))

        finals = {
            job_id: cl.api.wait_for(job_id, *FINAL, timeout_s=60)["status"]
            for job_id, *_ in results
        }
        for _ in range(2):  # a final status never changes
            time.sleep(0.2)
            assert {job_id: cl.api.status(job_id)["status"] for job_id in finals} == finals
        outcomes: Counter[str] = Counter()
        for job_id, token, code, answered in results:
            final = finals[job_id]
            assert final in {"Completed", "Killed"}, (job_id, final)
            if code == 200:
                assert answered in {"Killed", "Locked"}, (job_id, answered)
                assert final == "Killed", f"job {job_id}: terminate said 200 but it ended {final}"
            else:
                assert code == 409, (job_id, code, answered)
                assert answered == final == "Completed", (job_id, answered, final)
            if final == "Completed":
                assert cl.api.download_zip(job_id).read("output.txt") == f"{token}\n".encode()
            outcomes[f"{code}/{answered}/{final}"] += 1
        print(f"terminate race outcomes: {dict(outcomes)}")
        eventually(lambda: not job_processes(cl), "the raced jobs' processes to end")
        assert cl.shutdown() == []


# ---- several clients per service -----------------------------------------------------------


def test_jobs_are_spread_over_two_clients(tmp_path: Path) -> None:
    with cluster(tmp_path, clients=2) as cl:
        tokens = {cl.api.submit(f"sleep 1\necho {i} > output.txt\n"): str(i) for i in range(6)}
        for job_id, token in tokens.items():
            cl.api.wait_for(job_id, "Completed", timeout_s=60)
            assert cl.api.download_zip(job_id).read("output.txt") == f"{token}\n".encode()
        on_first = payload_dirs(cl.root / "client0")
        on_second = payload_dirs(cl.root / "client1")
        assert on_first, "client0 got no job"
        assert on_second, "client1 got no job"
        assert len(on_first) + len(on_second) == 6
        assert cl.shutdown() == []


def test_two_clients_of_capacity_one_run_two_jobs_at_once(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    script = (
        f'echo "start $(date +%s.%N) $PWD" >> {ledger}\n'
        "sleep 2\n"
        f'echo "end $(date +%s.%N) $PWD" >> {ledger}\n'
    )
    with cluster(tmp_path, clients=2, client_env={"MAX_CONCURRENT": "1"}) as cl:
        jobs = [cl.api.submit(script) for _ in range(4)]
        for job_id in jobs:
            cl.api.wait_for(job_id, "Completed", timeout_s=90)
        assert cl.shutdown() == []
    events = []
    for line in lines(ledger):
        kind, stamp, cwd = line.split(maxsplit=2)
        client = Path(cwd).relative_to(tmp_path).parts[0]
        events.append((float(stamp), 0 if kind == "end" else 1, client))
    assert len(events) == 8
    running: Counter[str] = Counter()
    peak_total = 0
    peak_client: Counter[str] = Counter()
    for _stamp, starting, client in sorted(events):
        running[client] += 1 if starting else -1
        peak_total = max(peak_total, sum(running.values()))
        peak_client[client] = max(peak_client[client], running[client])
    assert set(peak_client) == {"client0", "client1"}
    assert max(peak_client.values()) == 1, f"a client ran more than MAX_CONCURRENT: {peak_client}"
    assert peak_total == 2, "the two clients never ran jobs at the same time"


# ---- failover ------------------------------------------------------------------------------

FAILOVER_ENV = {"NODE_CHECK_INTERVAL": "0.2", "FAILOVER_AFTER": "1", "RETRY_DEADLINE": "3"}
ONE_SLOT = {"MAX_CONCURRENT": "1"}


def occupy_first_client(cl: Cluster, marker: Path, long_script: str) -> tuple[int, int, str]:
    """A long job running on client0 and a second one Prepared behind it (client1 still off)."""
    long_job = cl.api.submit(long_script)
    cl.api.wait_for(long_job, "Running", timeout_s=60)
    token = f"queued-{secrets.token_hex(6)}"
    queued = cl.api.submit(marker_script(marker, f"echo {token} > output.txt\n"))
    cl.api.wait_for(queued, "Prepared", timeout_s=60)
    assert payload_with(cl.root / "client0", token) is not None
    return long_job, queued, token


def freeze_the_first_of_two_clients(
    cl: Cluster, first_env: dict[str, str], env: dict[str, str], marker: Path, frozen: list[Node]
) -> tuple[Node, Path, int, str]:
    """client0 runs a long job and holds a second one Prepared; client1 starts; client0 is
    frozen (SIGSTOP). Returns client0, the file that ends the long job, the Prepared job and
    its token. The long job ends only when told, so a slow machine cannot free client0's slot
    before client0 is frozen."""
    first = cl.add_client(first_env)
    second = cl.add_client(ONE_SLOT, start=False)
    cl.start_server(env)
    go = cl.root / "go"
    long_script = f"while [ ! -e {go} ]; do sleep 0.05; done\n"
    _long_job, queued, token = occupy_first_client(cl, marker, long_script)
    second.start()
    assert first.process is not None
    os.kill(first.process.pid, signal.SIGSTOP)
    frozen.append(first)
    return first, go, queued, token


def resume_before_the_server(cl: Cluster, client: Node, frozen: list[Node], token: str) -> None:
    """Let the frozen `client` run again while the server cannot revoke anything yet (a
    partition that heals on the client's side first), then check that the payload of `token`
    on it ends without having been started."""
    assert cl.server is not None
    assert cl.server.process is not None
    assert client.process is not None
    os.kill(cl.server.process.pid, signal.SIGSTOP)
    frozen.append(cl.server)
    os.kill(client.process.pid, signal.SIGCONT)
    frozen.remove(client)
    revoked = payload_with(Path(client.env["DATA_PATH"]), token)
    assert revoked is not None
    time.sleep(2)  # the client's own loop runs; the server cannot revoke anything yet
    os.kill(cl.server.process.pid, signal.SIGCONT)
    frozen.remove(cl.server)
    state = eventually(
        lambda: (s := payload_state(revoked)).get("status") in FINAL and s,
        "the revoked payload to end on the client",
    )
    assert state["status"] == "Killed", state
    assert not state["handle"], f"the revoked payload was started: {state}"


def test_failover_from_a_partitioned_client_never_runs_a_job_twice(tmp_path: Path) -> None:
    """client0 is alive but unreachable (simulated with SIGSTOP): the server fails its Prepared
    job over to client1. If client0 then starts that payload before the server can revoke it,
    the job runs twice. (A partition while the server is briefly stopped too.) The client's
    SERVER_LEASE, shorter than FAILOVER_AFTER, keeps it from starting a payload the server
    stopped asking about; the requests that waited in its socket while it was frozen do not
    renew the lease."""
    marker = tmp_path / "queued-job.marker"
    env = {"NODE_CHECK_INTERVAL": "0.2", "FAILOVER_AFTER": "1", "CLIENT_TIMEOUT": "1"}
    cl = Cluster(tmp_path)
    frozen: list[Node] = []
    try:
        first, go, queued, token = freeze_the_first_of_two_clients(
            cl, {**ONE_SLOT, "SERVER_LEASE": "0.5"}, env, marker, frozen
        )
        cl.api.wait_for(queued, "Completed", timeout_s=60)
        assert len(lines(marker)) == 1
        # The long job ends while client0 is unreachable; then client0 runs again while the
        # server is (briefly) unable to talk to it.
        go.touch()
        eventually(
            lambda: not processes_running(cl, "job-orchestrator-wrapper"), "the long job to end"
        )
        resume_before_the_server(cl, first, frozen, token)
        assert len(lines(marker)) == 1, f"the job ran twice: {lines(marker)}"
    finally:
        for node in frozen:
            if node.process is not None:
                os.kill(node.process.pid, signal.SIGCONT)
        cl.shutdown()


def test_dispatch_that_timed_out_is_not_run_again_on_another_client(tmp_path: Path) -> None:
    """The server's call to client0 times out after client0 has the payload (simulated with
    SIGSTOP: the request waits in client0's socket). The job must run exactly once: it is
    resent only to client0, whose Idempotency-Key check recognises it."""
    marker = tmp_path / "job.marker"
    env = {"NODE_CHECK_INTERVAL": "0.2", "CLIENT_TIMEOUT": "1"}
    cl = Cluster(tmp_path)
    first: Node | None = None
    try:
        first = cl.add_client()
        cl.add_client()
        cl.start_server(env)
        # Make client0 the obvious choice: client1 is busy with one job.
        blocker = cl.api.submit("sleep 60\n")
        cl.api.wait_for(blocker, "Running", timeout_s=60)
        busy = "client1" if payload_dirs(cl.root / "client1") else "client0"
        if busy == "client0":
            first = cl.clients[1]
        assert first.process is not None
        os.kill(first.process.pid, signal.SIGSTOP)
        token = f"once-{secrets.token_hex(6)}"
        job_id = cl.api.submit(marker_script(marker, f"echo {token} > output.txt\n"))
        # The dispatch to the frozen client0 times out; it may have been delivered, so it is
        # only ever resent to client0, with its key, never to client1.
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            assert cl.api.status(job_id)["status"] in ("Queued", "Processing")
            time.sleep(0.2)
        assert lines(marker) == []
        os.kill(first.process.pid, signal.SIGCONT)
        first.wait_healthy()
        cl.api.wait_for(job_id, "Completed", timeout_s=90)
        # Give client0 the chance to act on the requests that waited in its socket.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(lines(marker)) < 2:
            time.sleep(0.1)
        assert len(lines(marker)) == 1, f"the job ran twice: {lines(marker)}"
        httpx.post(f"{cl.api.base_url}/terminate/{blocker}", timeout=30)
    finally:
        if first is not None and first.process is not None and first.process.poll() is None:
            os.kill(first.process.pid, signal.SIGCONT)
        cl.shutdown()


def test_a_terminated_job_gets_its_kill_grace_to_clean_up(tmp_path: Path) -> None:
    """/terminate sends SIGTERM and waits KILL_GRACE (2 s in the harness) before SIGKILL: a
    script that cleans up on SIGTERM gets to finish its cleanup."""
    script = "trap 'sleep 0.5; echo cleaned > cleanup.txt; exit 143' TERM\nsleep 300 &\nwait\n"
    with cluster(tmp_path) as cl:
        job_id = cl.api.submit(script)
        cl.api.wait_for(job_id, "Running", timeout_s=60)
        eventually(lambda: processes_running(cl, "sleep 300"), "the script to start")
        response = httpx.post(f"{cl.api.base_url}/terminate/{job_id}", timeout=30)
        assert response.status_code == 200, response.text
        assert cl.api.wait_for(job_id, *FINAL, timeout_s=60)["status"] == "Killed"
        payload = payload_dirs(cl.root / "client0")[-1]
        eventually(lambda: not job_processes(cl), "the killed job's processes to end")
        assert (payload / "work" / "cleanup.txt").is_file(), "SIGKILL came before the grace"
        assert cl.shutdown() == []


def test_terminate_cut_by_a_server_crash_still_kills_the_job(tmp_path: Path) -> None:
    """/terminate reaches Locked, the server dies before the kill reaches the client, and the
    client is down when the server comes back: the job must still be killed in the end."""
    with cluster(tmp_path, server_env={"CLIENT_TIMEOUT": "10"}) as cl:
        assert cl.server is not None
        client = cl.clients[0]
        job_id = cl.api.submit("sleep 90\n")
        cl.api.wait_for(job_id, "Running", timeout_s=60)
        eventually(lambda: processes_running(cl, "sleep 90"), "the script to start")
        assert client.process is not None
        os.kill(client.process.pid, signal.SIGSTOP)  # the kill request will hang
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(httpx.post, f"{cl.api.base_url}/terminate/{job_id}", timeout=30)
            cl.api.wait_for(job_id, "Locked", timeout_s=30)
            cl.server.stop(signal.SIGKILL)
        client.stop(signal.SIGKILL)  # the script itself survives, in its own group
        cl.server.start()
        body = cl.api.wait_for(job_id, *FINAL, timeout_s=60)
        assert body["status"] == "Killed", body
        client.start()
        eventually(
            lambda: not processes_running(cl, "sleep 90"),
            "the terminated job's script to be killed once its client is back",
            timeout_s=20,
        )
        assert stable_status(cl, job_id) == "Killed"
        assert cl.shutdown() == []


# ---- lost payload --------------------------------------------------------------------------


def test_a_payload_the_client_lost_is_dispatched_again(tmp_path: Path) -> None:
    token = f"lost-{secrets.token_hex(6)}"
    with cluster(tmp_path) as cl:
        job_id = cl.api.submit(f"sleep 1\necho {token} > output.txt\n")
        cl.api.wait_for(job_id, "Running", timeout_s=60)
        client = cl.clients[0]
        assert client.stop() == 0
        kill_job_processes(cl)  # the node lost everything: its disk and its processes
        shutil.rmtree(cl.root / "client0")
        client.start()
        body = cl.api.wait_for(job_id, *FINAL, timeout_s=90)
        assert body["status"] == "Completed", body
        assert cl.api.download_zip(job_id).read("output.txt") == f"{token}\n".encode()
        assert cl.server is not None
        assert re.search(rf"job {job_id}: .*dispatching it again", cl.server.log())
        assert stable_status(cl, job_id) == "Completed"
        assert cl.shutdown() == []


# ---- server crashes ------------------------------------------------------------------------


def test_server_killed_right_after_upload_never_loses_or_repeats_a_job(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    ledger = tmp_path / "ledger"
    with cluster(tmp_path) as cl:
        assert cl.server is not None
        tokens: dict[int, str] = {}
        for index in range(6):
            token = f"crash-{index}-{secrets.token_hex(4)}"
            script = f'echo "{token}" >> {ledger}\nsleep 0.3\necho {token} > output.txt\n'
            tokens[cl.api.submit(script)] = token
            time.sleep(rng.uniform(0.0, 0.3))
            cl.server.stop(signal.SIGKILL)
            cl.server.start()
        for job_id, token in tokens.items():
            body = cl.api.wait_for(job_id, *FINAL, timeout_s=90)
            assert body["status"] == "Completed", body
            assert cl.api.download_zip(job_id).read("output.txt") == f"{token}\n".encode()
        assert Counter(lines(ledger)) == Counter(tokens.values())
        assert cl.shutdown() == []


# ---- unreachable clients -------------------------------------------------------------------


def test_a_client_that_comes_up_late_still_gets_the_job(tmp_path: Path) -> None:
    cl = Cluster(tmp_path)
    try:
        late = cl.add_client(start=False)
        cl.start_server({"RETRY_DEADLINE": "3600"})
        job_id = cl.api.submit("echo late > output.txt\n")
        time.sleep(1.5)
        late.start()
        body = cl.api.wait_for(job_id, *FINAL, timeout_s=60)
        assert body["status"] == "Completed", body
        assert cl.api.download_zip(job_id).read("output.txt") == b"late\n"
        assert cl.shutdown() == []
    finally:
        cl.shutdown()


# ---- graceful shutdown ---------------------------------------------------------------------


def test_sigterm_to_a_client_leaves_jobs_running_and_restart_collects_true_status(
    tmp_path: Path,
) -> None:
    with cluster(tmp_path) as cl:
        token = f"graceful-{secrets.token_hex(6)}"
        good = cl.api.submit(f"sleep 6\necho {token} > output.txt\n")
        bad = cl.api.submit("sleep 6.5\necho half > partial.txt\nexit 7\n")
        cl.api.wait_for(good, "Running", timeout_s=60)
        cl.api.wait_for(bad, "Running", timeout_s=60)
        eventually(
            lambda: processes_running(cl, "sleep 6") and processes_running(cl, "sleep 6.5"),
            "both scripts to be running",
        )
        assert cl.clients[0].stop(signal.SIGTERM, timeout_s=20) == 0
        assert processes_running(cl, "sleep 6"), "SIGTERM to the client killed the job"
        wrappers = processes_running(cl, "job-orchestrator-wrapper")
        assert len(wrappers) == 2, "the scripts' wrappers (which record the exit status) died"
        cl.clients[0].start()
        body = cl.api.wait_for(good, *FINAL, timeout_s=90)
        assert body["status"] == "Completed", body
        assert cl.api.download_zip(good).read("output.txt") == f"{token}\n".encode()
        body = cl.api.wait_for(bad, *FINAL, timeout_s=90)
        assert body["status"] == "Failed", body
        assert body["message"] == "run.sh exited with status 7", body
        assert cl.shutdown() == []


#: JOB_USERS of the per-job uid case below (no account uses them on the test machine).
UNRECORDED_JOB_USERS = "72060-72061"


@pytest.mark.parametrize(
    ("ended_while_down", "job_users"),
    [(False, None), (True, None), (False, UNRECORDED_JOB_USERS)],
    ids=["running", "ended", "running-own-uid"],
)
def test_a_start_the_client_died_before_recording_is_never_made_twice(
    tmp_path: Path, ended_while_down: bool, job_users: str | None
) -> None:
    """A SIGKILL can land between the start of run.sh and the state write that records its
    handle (a full-suite chaos run started a job twice so). The state file then says Prepared
    without a handle, as it is made here; the restarted client finds the execution (still
    running, or ended with its exit file) and re-adopts it instead of starting it again.
    With JOB_USERS, the uid it runs under stays held meanwhile: the restarted client used to
    reclaim it (kill -9 of every process of the uid) before it looked, and the re-adopted job
    ended Failed, killed by SIGKILL (a full CI run failed test_exit_file so)."""
    if job_users is not None and os.geteuid() != 0:
        pytest.skip("JOB_USERS needs a root client")
    client_env = {"SANDBOX": "rlimits", "JOB_USERS": job_users} if job_users else None
    # The job's own uid must reach the gate and the marker (pytest's directories are 0700).
    with open_directory("jo-unrecorded-") as root:
        marker = root / "job.marker"
        marker.touch()
        marker.chmod(0o666)
        _unrecorded_start(tmp_path, client_env, marker, root / "gate", ended_while_down)


def _unrecorded_start(
    tmp_path: Path,
    client_env: dict[str, str] | None,
    marker: Path,
    gate: Path,
    ended_while_down: bool,
) -> None:
    with cluster(tmp_path, client_env=client_env) as cl:
        token = f"once-{secrets.token_hex(6)}"
        script = f"while [ ! -e {gate} ]; do sleep 0.05; done\necho {token} > output.txt\n"
        job_id = cl.api.submit(marker_script(marker, script))
        cl.api.wait_for(job_id, "Running", timeout_s=60)
        payload = payload_with(cl.root / "client0", token)
        assert payload is not None
        cl.clients[0].stop(signal.SIGKILL)
        if ended_while_down:
            gate.touch()
            eventually(
                lambda: not processes_running(cl, "job-orchestrator-wrapper"), "run.sh to end"
            )
        state_file = payload / "state.json"
        state = json.loads(state_file.read_text())
        state_file.write_text(json.dumps({**state, "status": "Prepared", "handle": None}))
        cl.clients[0].start()
        gate.touch()
        body = cl.api.wait_for(job_id, *FINAL, timeout_s=90)
        assert body["status"] == "Completed", body
        assert cl.api.download_zip(job_id).read("output.txt") == f"{token}\n".encode()
        assert len(lines(marker)) == 1, f"the job ran twice: {lines(marker)}"


def test_a_failover_setting_below_the_clients_lease_still_never_runs_a_job_twice(
    tmp_path: Path,
) -> None:
    """Issue 21: with FAILOVER_AFTER=3 and the clients' default SERVER_LEASE=15, a client
    frozen while holding an unstarted job, resumed once the job had been failed over and had
    completed elsewhere, ran it a second time. Our clients advertise their lease on /health,
    and the server waits for it (plus a margin) whatever FAILOVER_AFTER says."""
    marker = tmp_path / "queued-job.marker"
    env = {"NODE_CHECK_INTERVAL": "0.2", "FAILOVER_AFTER": "3", "CLIENT_TIMEOUT": "1"}
    cl = Cluster(tmp_path)
    frozen: list[Node] = []
    try:
        # client0 keeps the default SERVER_LEASE.
        first, go, queued, token = freeze_the_first_of_two_clients(
            cl, ONE_SLOT, env, marker, frozen
        )
        go.touch()  # client0's slot is free the moment it runs again
        cl.api.wait_for(queued, "Completed", timeout_s=120)
        assert len(lines(marker)) == 1
        resume_before_the_server(cl, first, frozen, token)
        assert len(lines(marker)) == 1, f"the job ran twice: {lines(marker)}"
        assert cl.server is not None
        assert "SERVER_LEASE (15 s) plus 5 s" in cl.server.log()
    finally:
        for node in frozen:
            if node.process is not None:
                os.kill(node.process.pid, signal.SIGCONT)
        cl.shutdown()
