"""EXECUTOR=slurm against a real one-node Slurm (slurmctld + slurmd on localhost).

`scripts/setup-slurm` (which .ci/run calls) brings the cluster up; the fixture calls it too,
since it is idempotent. Where slurmd cannot start here the tests skip with the reason, and
in CI (CI=true) they fail instead. They run on one xdist worker (`slurm` group): one of them
stops slurmctld.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from testkit import eventually, unavailable
from testkit.harness import Cluster, Node, cluster

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "setup-slurm"
SLURM = {"EXECUTOR": "slurm"}
FINAL = ("Completed", "Failed", "Killed", "Invalid")

pytestmark = [pytest.mark.needs_slurm, pytest.mark.xdist_group("slurm")]


def _bring_up_slurm() -> str | None:
    """None once the node is up, else why it cannot be."""
    if os.geteuid() != 0:
        return "slurmd needs root here"
    try:
        done = subprocess.run([SETUP], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"scripts/setup-slurm did not run: {error}"
    if done.returncode != 0:
        said = (done.stderr.strip() + "\n" + done.stdout.strip()).strip() or "nothing printed"
        return f"scripts/setup-slurm failed (exit {done.returncode}): {said}"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm_up() -> None:
    reason = _bring_up_slurm()
    if reason is not None:
        unavailable(reason)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("slurm"), client_env=SLURM) as running:
        yield running


def payload_states(client: Node) -> list[dict[str, Any]]:
    root = Path(client.env["DATA_PATH"])
    states = []
    for state in sorted(root.glob("*/state.json")):
        states.append(json.loads(state.read_text()))
    return states


def slurm_job_of(client: Node, token: str) -> tuple[dict[str, Any], int]:
    """The payload whose run.sh holds `token`, and its Slurm job id."""
    for state in payload_states(client):
        script = Path(state["loc"]) / "run.sh"
        if token in script.read_text() and state.get("handle"):
            handle = json.loads(state["handle"])
            assert handle["kind"] == "slurm", state
            return state, int(handle["id"])
    raise AssertionError(f"no submitted payload holds {token}")


def processes_of(slurm_id: int) -> list[psutil.Process]:
    """Processes of a Slurm job on this node (slurmstepd gives each one SLURM_JOB_ID)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get("SLURM_JOB_ID") == str(slurm_id):
                found.append(process)
    return found


def squeue(job_id: int, fields: str) -> str:
    done = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", fields],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout.strip()


def test_job_completes_as_a_named_batch_job(shared: Cluster) -> None:
    token = f"token-{time.time_ns()}"
    job_id = shared.api.submit(f"# {token}\necho hello > output.txt\necho out\necho err >&2\n")
    shared.api.wait_for(job_id, "Completed")
    assert shared.api.download_zip(job_id).read("output.txt") == b"hello\n"
    state, slurm_id = slurm_job_of(shared.clients[0], token)
    assert squeue(slurm_id, "%j|%T") == f"jo-{state['id']}|COMPLETED"
    root = Path(state["loc"]).parent
    assert (root / "output.log").read_text() == "out\nerr\n"


def test_non_zero_exit_fails_with_the_code(shared: Cluster) -> None:
    job_id = shared.api.submit("exit 3\n")
    body = shared.api.wait_for(job_id, *FINAL)
    assert body["status"] == "Failed", body
    assert body["message"] == "run.sh exited with status 3"


def test_kill_leaves_no_process_of_the_job(shared: Cluster) -> None:
    token = f"token-{time.time_ns()}"
    script = f"# {token}\nsleep 300 &\necho $! > background.pid\nsleep 300\n"
    job_id = shared.api.submit(script)
    shared.api.wait_for(job_id, "Running")
    state, slurm_id = slurm_job_of(shared.clients[0], token)
    background = Path(state["loc"]) / "background.pid"
    pid = eventually(
        lambda: background.is_file() and background.read_text().strip(), "the background sleep"
    )
    assert psutil.pid_exists(int(pid))
    assert httpx.post(f"{shared.api.base_url}/terminate/{job_id}", timeout=30).status_code == 200
    body = shared.api.wait_for(job_id, *FINAL)
    assert body["status"] == "Killed", body
    eventually(lambda: not psutil.pid_exists(int(pid)), "the background sleep to be gone")
    eventually(lambda: not processes_of(slurm_id), "every process of the job to be gone")
    assert squeue(slurm_id, "%T") in {"FAILED", "CANCELLED", "COMPLETED"}
    # The server reports Killed as soon as the client took the kill; the client records it
    # when its next squeue sees the job gone (up to SLURM_POLL_INTERVAL after ours did).
    state_file = Path(state["loc"]).parent / "state.json"

    def recorded() -> str:
        return str(json.loads(state_file.read_text())["status"])

    eventually(lambda: recorded() != "Running", "the client to record the end")
    assert recorded() == "Killed"
    # A second kill, sent to the client itself, is harmless: the outcome stands.
    again = httpx.post(f"{shared.clients[0].url}/kill/{state['id']}", timeout=30)
    assert again.status_code == 200, again.text
    assert recorded() == "Killed"


def test_load_and_capacity_follow_the_cluster(shared: Cluster) -> None:
    job_id = shared.api.submit("sleep 30\n")
    shared.api.wait_for(job_id, "Running")
    client = shared.clients[0].url

    def busy() -> float | None:
        load = float(httpx.get(f"{client}/load", timeout=30).json())
        return load if load > 0 else None

    load = eventually(busy, "/load to show the allocated CPU")
    assert 0 < load <= 100
    capacity = httpx.get(f"{client}/health", timeout=30).headers["X-Orchestrator-Max-Concurrent"]
    assert int(capacity) >= 1
    httpx.post(f"{shared.api.base_url}/terminate/{job_id}", timeout=30)
    shared.api.wait_for(job_id, *FINAL)


def slurm_calls(client: Node, command: str) -> float:
    text = httpx.get(f"{client.url}/metrics", timeout=30).text
    prefix = f'job_orchestrator_client_slurm_calls_total{{command="{command}"}} '
    values = [float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)]
    return values[0] if values else 0.0


def test_no_slurm_calls_while_no_job_is_in_slurm(shared: Cluster) -> None:
    client = shared.clients[0]
    job_id = shared.api.submit("echo hello > output.txt\n")
    shared.api.wait_for(job_id, "Completed")
    assert slurm_calls(client, "sbatch") >= 1
    polled = slurm_calls(client, "squeue")
    assert polled >= 1
    time.sleep(2)  # four ticks' worth of idleness
    assert slurm_calls(client, "squeue") == polled


def test_client_restart_mid_run_re_adopts_the_job(shared: Cluster) -> None:
    client = shared.clients[0]
    marker = Path(client.env["DATA_PATH"]).parent / f"go-{time.time_ns()}"
    script = f"while [ ! -e {marker} ]; do sleep 0.1; done\necho done > output.txt\n"
    job_id = shared.api.submit(script)
    shared.api.wait_for(job_id, "Running")
    client.stop()
    marker.touch()  # run.sh ends while the client is down
    client.start()
    shared.api.wait_for(job_id, "Completed")
    assert shared.api.download_zip(job_id).read("output.txt") == b"done\n"
    assert "re-adopting payload" in client.log()


def test_wall_time_limit_fails_the_job(tmp_path: Path) -> None:
    env = {"SERVICE_EXAMPLE_TIMEOUT": "2"}
    with cluster(tmp_path, client_env=SLURM, server_env=env) as running:
        token = f"token-{time.time_ns()}"
        job_id = running.api.submit(f"# {token}\nsleep 300\n")
        running.api.wait_for(job_id, "Running")
        _state, slurm_id = slurm_job_of(running.clients[0], token)
        assert squeue(slurm_id, "%l") == "1:00"  # 2 s, rounded up to Slurm's minutes
        body = running.api.wait_for(job_id, *FINAL)
        assert body["status"] == "Failed", body
        assert "wall-time limit" in body["message"], body


@pytest.mark.timeout(400)
def test_slurm_timeout_while_the_client_was_down_is_never_success(tmp_path: Path) -> None:
    env = {"SERVICE_EXAMPLE_TIMEOUT": "1"}
    with cluster(tmp_path, client_env=SLURM, server_env=env) as running:
        token = f"token-{time.time_ns()}"
        job_id = running.api.submit(f"# {token}\nsleep 300\n")
        running.api.wait_for(job_id, "Running")
        client = running.clients[0]
        client.stop()
        _state, slurm_id = slurm_job_of(client, token)
        # Slurm itself ends it at its one-minute --time (plus its once-a-minute check).
        eventually(lambda: squeue(slurm_id, "%T") == "TIMEOUT", "Slurm's TIMEOUT", 200)
        client.start()
        body = running.api.wait_for(job_id, *FINAL)
        assert body["status"] == "Failed", body
        assert "wall-time limit" in body["message"], body


def test_sbatch_refusal_fails_with_its_message(tmp_path: Path) -> None:
    with cluster(tmp_path, client_env={**SLURM, "SLURM_PARTITION": "no-such-partition"}) as running:
        job_id = running.api.submit("echo never > output.txt\n")
        body = running.api.wait_for(job_id, *FINAL)
        assert body["status"] == "Failed", body
        assert "invalid partition" in body["message"].lower(), body


def _stop_slurmctld() -> None:
    pid = int(Path("/run/slurmctld.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    eventually(lambda: not psutil.pid_exists(pid), "slurmctld to stop")


@pytest.mark.timeout(400)
def test_unreachable_slurmctld_keeps_the_job_prepared_until_it_returns(tmp_path: Path) -> None:
    with cluster(tmp_path, client_env=SLURM) as running:
        _stop_slurmctld()
        try:
            job_id = running.api.submit("echo back > output.txt\n")
            client = running.clients[0]
            eventually(lambda: "slurmctld is unreachable" in client.log(), "a failed sbatch", 90)
            # Prepared, not failed (seen once it has held STATUS_SETTLE).
            running.api.wait_for(job_id, "Prepared", timeout_s=10)
        finally:
            assert _bring_up_slurm() is None
        running.api.wait_for(job_id, "Completed", timeout_s=120)
        assert running.api.download_zip(job_id).read("output.txt") == b"back\n"


def test_unparsable_extra_args_stop_the_client_at_start(tmp_path: Path) -> None:
    env = Cluster(tmp_path).base_env(
        {**SLURM, "SLURM_EXTRA_ARGS": '--comment "unclosed', "DATA_PATH": str(tmp_path)}
    )
    done = subprocess.run(
        [*Node("client", 0, env, tmp_path / "log").command()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "SLURM_EXTRA_ARGS" in lines[0]


def test_a_job_submitted_just_before_a_crash_is_found_again_not_resubmitted(
    shared: Cluster,
) -> None:
    """The client died after sbatch answered but before the job id reached the state file."""
    client = shared.clients[0]
    marker = Path(client.env["DATA_PATH"]).parent / f"go-{time.time_ns()}"
    token = f"token-{time.time_ns()}"
    script = f"# {token}\nwhile [ ! -e {marker} ]; do sleep 0.1; done\necho once >> output.txt\n"
    job_id = shared.api.submit(script)
    shared.api.wait_for(job_id, "Running")
    state, slurm_id = slurm_job_of(client, token)
    client.stop(signal.SIGKILL)
    state_file = Path(state["loc"]).parent / "state.json"
    on_disk = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**on_disk, "status": "Prepared", "handle": None}))
    client.start()
    eventually(lambda: f"is already Slurm job {slurm_id}" in client.log(), "the job found again")
    marker.touch()
    shared.api.wait_for(job_id, "Completed")
    assert shared.api.download_zip(job_id).read("output.txt") == b"once\n"
    named = subprocess.run(
        ["squeue", "-h", "-t", "all", f"--name=jo-{state['id']}", "-o", "%i|%Z"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split()
    # Other clients' payloads of the same id share the name, not the work directory.
    assert [entry for entry in named if entry.endswith(f"|{state['loc']}")] == [
        f"{slurm_id}|{state['loc']}"
    ]


def test_kill_of_a_pending_job_cancels_it(tmp_path: Path) -> None:
    # --begin keeps the job PENDING (Reason BeginTime): the payload stays Prepared.
    env = {**SLURM, "SLURM_EXTRA_ARGS": "--begin=now+3600 --comment='held by the test'"}
    with cluster(tmp_path, client_env=env) as running:
        token = f"token-{time.time_ns()}"
        job_id = running.api.submit(f"# {token}\necho never > output.txt\n")
        client = running.clients[0]
        _state, slurm_id = eventually(
            lambda: _submitted(client, token), "the job to be submitted to Slurm"
        )
        assert squeue(slurm_id, "%T|%r|%k") == "PENDING|BeginTime|held by the test"
        # The server learns of Prepared once it has held STATUS_SETTLE (0.2 s).
        running.api.wait_for(job_id, "Prepared", timeout_s=10)
        assert (
            httpx.post(f"{running.api.base_url}/terminate/{job_id}", timeout=30).status_code == 200
        )
        body = running.api.wait_for(job_id, *FINAL)
        assert body["status"] == "Killed", body
        assert squeue(slurm_id, "%T") == "CANCELLED"


def _submitted(client: Node, token: str) -> tuple[dict[str, Any], int] | None:
    try:
        return slurm_job_of(client, token)
    except AssertionError:
        return None
