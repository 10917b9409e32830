"""What `submit --wait` and `wait` show while the job waits (issue 25, item 6): its status,
queue position and reason; a live line in a terminal (driven here in a pseudo-terminal), a
line per change otherwise; times with their time zone; `--status` in any case; a closed
pipe ends quietly. Real server and client processes; a job held by a gate file decides when
things change, so nothing depends on timing.
"""

from __future__ import annotations

import itertools
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.harness import Cluster, cluster, job_dir
from tests.acceptance.test_user_cli import WAITING_LINE, cli, submitted_id

#: How long a read waits for the program's next output before the test gives up (a hang
#: guard, not a timing claim).
PATIENCE_S = 90.0


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One job at a time in service `example`, so a second one waits Queued."""
    with cluster(
        tmp_path_factory.mktemp("cliwait"), server_env={"SERVICE_EXAMPLE_MAX_RUNS": "1"}
    ) as started:
        yield started


def gated(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A job directory whose run.sh runs until `<name>.gate` exists, and that gate."""
    gate = tmp_path / f"{name}.gate"
    script = f"while [ ! -e '{gate}' ]; do sleep 0.1; done\necho {name} > out.txt\n"
    return job_dir(tmp_path / name, script), gate


class Terminal:
    """A child process on a pseudo-terminal, its output read as it comes."""

    def __init__(self, args: list[str], server: str) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("JO_")}
        env.update(JO_SERVER=server, TERM="xterm-256color", COLUMNS="200", TZ="UTC")
        self.controller, terminal = pty.openpty()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "job_orchestrator", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=terminal,
            stderr=terminal,
        )
        os.close(terminal)
        self.shown = ""

    def read_until(self, needle: str) -> str:
        """Everything shown so far, once `needle` is in it."""
        give_up = time.monotonic() + PATIENCE_S
        while needle not in self.shown:
            assert time.monotonic() < give_up, f"{needle!r} never shown: {self.shown!r}"
            ready, _, _ = select.select([self.controller], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(self.controller, 65536)
            except OSError:  # EIO: the program exited
                chunk = b""
            assert chunk or needle in self.shown, f"exited without {needle!r}: {self.shown!r}"
            self.shown += chunk.decode(errors="replace")
        return self.shown

    def finish(self) -> int:
        try:
            while chunk := os.read(self.controller, 65536):
                self.shown += chunk.decode(errors="replace")
        except OSError:
            pass
        os.close(self.controller)
        return self.process.wait(timeout=PATIENCE_S)


def test_the_wait_shows_queue_position_reason_then_running_live(
    one_slot: Cluster, tmp_path: Path
) -> None:
    first, first_gate = gated(tmp_path, "first")
    second, second_gate = gated(tmp_path, "second")
    server = one_slot.server
    assert server is not None
    holder = cli(server.url, "submit", str(first), "--service", "example")
    holder_id = submitted_id(holder.stdout)
    one_slot.api.wait_for(holder_id, "Running")

    shown = Terminal(["submit", str(second), "--service", "example", "--wait"], server.url)
    try:
        text = shown.read_until("service_limit")
        job_id = int(text.split("submitted job ", 1)[1].split()[0])
        # The live line: rewritten in place (carriage return, erase line), never scrolled.
        assert f"\r\x1b[Kjob {job_id} Queued: position 1, service_limit" in text
        assert "MAX_RUNS=1" in text  # the reason in words, with the numbers
        first_gate.touch()
        shown.read_until(f"job {job_id} Running")
        second_gate.touch()
        shown.read_until(f"job {job_id} Completed")
    finally:
        first_gate.touch()
        second_gate.touch()
        status = shown.finish()
    assert status == 0, shown.shown


def test_off_a_terminal_a_line_per_change(one_slot: Cluster, tmp_path: Path) -> None:
    first, first_gate = gated(tmp_path, "first")
    second, second_gate = gated(tmp_path, "second")
    server = one_slot.server
    assert server is not None
    holder_id = submitted_id(cli(server.url, "submit", str(first), "--service", "example").stdout)
    one_slot.api.wait_for(holder_id, "Running")
    job_id = submitted_id(cli(server.url, "submit", str(second), "--service", "example").stdout)
    env = {key: value for key, value in os.environ.items() if not key.startswith("JO_")}
    env["JO_SERVER"] = server.url
    waiting = subprocess.Popen(
        [sys.executable, "-m", "job_orchestrator", "wait", str(job_id)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stderr is not None
        first_line = waiting.stderr.readline()
        assert first_line.startswith(f"job {job_id} Queued: position 1, service_limit")
        first_gate.touch()
        one_slot.api.wait_for(job_id, "Running")
        second_gate.touch()
        out, err = waiting.communicate(timeout=PATIENCE_S)
    finally:
        first_gate.touch()
        second_gate.touch()
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, err
    assert out == f"job {job_id} Completed\n"
    lines = [first_line.rstrip("\n"), *err.splitlines()]
    assert all(WAITING_LINE.fullmatch(line) for line in lines), lines
    # A line per change: no line repeats the one before it, however many looks were taken.
    assert all(a != b for a, b in itertools.pairwise(lines)), lines


def test_times_with_zone_status_in_any_case_and_a_closed_pipe(
    one_slot: Cluster, tmp_path: Path
) -> None:
    job_id = one_slot.api.submit("echo ok > out.txt\n")
    one_slot.api.wait_for(job_id, "Completed")
    server = one_slot.server
    assert server is not None
    env = {key: value for key, value in os.environ.items() if not key.startswith("JO_")}
    env.update(JO_SERVER=server.url, TZ="UTC")
    shown = subprocess.run(
        [sys.executable, "-m", "job_orchestrator", "status", str(job_id)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    created = next(line for line in shown.stdout.splitlines() if "created:" in line)
    assert created.rstrip().endswith(" UTC"), shown.stdout
    listed = cli(server.url, "list", "--status", "completed", "--limit", "0")
    assert listed.returncode == 0, listed.stderr
    assert f"\n{job_id} " in listed.stdout
    assert re.search(r"\d\d:\d\d:\d\d [A-Z]+$", listed.stdout.splitlines()[1])  # its zone
    bad = cli(server.url, "list", "--status", "finished")
    assert bad.returncode == 2
    assert "invalid choice: 'finished'" in bad.stderr
    # `| head -c 1`: the reader leaves after one byte of a 2 MB log; the rest goes nowhere,
    # quietly, with exit status 0 (it was "file: Broken pipe" and 1).
    chatty = one_slot.api.submit("head -c 2000000 /dev/zero | tr '\\0' a\n")
    one_slot.api.wait_for(chatty, "Completed")
    closed = subprocess.run(
        f"{sys.executable} -m job_orchestrator logs {chatty} | head -c 1 >/dev/null; "
        'echo "${PIPESTATUS[0]}"',
        shell=True,
        executable="/bin/bash",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert closed.stdout.strip() == "0", closed.stdout + closed.stderr
    assert closed.stderr == "", closed.stderr
