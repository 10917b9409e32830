"""`job-orchestrator submit | status | wait | download | cancel` as a user runs them: the CLI
as a subprocess against real server and client processes, checked by exit status and output.

Exit statuses (docs/cli-sdk.md): 0 done, 1 the job failed (or the server
refused), 2 usage or files that cannot make a job, 3 server unreachable, 4 unknown job,
5 not finished yet.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import re
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.harness import Cluster, cluster, free_port, job_dir

FINAL = ("Completed", "Failed", "Invalid", "Killed", "Cleaned")
UNKNOWN_ID = 987654


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("usercli")) as started:
        yield started


def cli(
    server: str | None, *args: str, cwd: Path | None = None, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("JO_")}
    if server is not None:
        env["JO_SERVER"] = server
    if token is not None:
        env["JO_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "job_orchestrator", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def server_url(cl: Cluster) -> str:
    assert cl.server is not None
    return cl.server.url


def submitted_id(stdout: str) -> int:
    first = stdout.splitlines()[0]
    assert first.startswith("submitted job "), stdout
    return int(first.removeprefix("submitted job "))


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


#: What a wait prints on stderr, off a terminal, each time the job's status or place changes.
WAITING_LINE = re.compile(r"job \d+ (Queued|Processing|Submitted|Prepared|Running|Locked)\b.*")


def error_line(stderr: str) -> str:
    """The one error line of a command that waited: its other lines are progress lines."""
    errors = [line for line in stderr.splitlines() if not WAITING_LINE.fullmatch(line)]
    assert len(errors) == 1, stderr
    return one_line(errors[0])


def test_submit_wait_output_saves_the_result_and_exits_0(running: Cluster, tmp_path: Path) -> None:
    job = job_dir(tmp_path / "job", "tr a-z A-Z < input.txt > out.txt\n", **{"input.txt": "abc"})
    result = tmp_path / "result.zip"
    done = cli(
        server_url(running), "submit", str(job), "--service", "example", "--wait", "-o", str(result)
    )
    assert done.returncode == 0, done.stderr
    job_id = submitted_id(done.stdout)
    assert f"job {job_id} Completed" in done.stdout
    assert zipfile.ZipFile(result).read("out.txt") == b"ABC"
    assert running.api.status(job_id)["status"] == "Completed"


def test_submit_of_files_exits_0_and_prints_the_id(running: Cluster, tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("cat data.txt > out.txt\n")
    data = tmp_path / "data.txt"
    data.write_text("payload")
    done = cli(server_url(running), "submit", str(script), str(data), "--service", "EXAMPLE")
    assert done.returncode == 0, done.stderr
    job_id = submitted_id(done.stdout)
    assert running.api.wait_for(job_id, *FINAL)["status"] == "Completed"
    assert running.api.download_zip(job_id).read("out.txt") == b"payload"
    waited = cli(server_url(running), "wait", str(job_id))
    assert waited.returncode == 0, waited.stderr
    downloaded = cli(server_url(running), "download", str(job_id), cwd=tmp_path)
    assert downloaded.returncode == 0, downloaded.stderr
    assert zipfile.ZipFile(tmp_path / f"job-{job_id}.zip").read("out.txt") == b"payload"


def test_a_failing_job_exits_1_with_its_message(running: Cluster, tmp_path: Path) -> None:
    job = job_dir(tmp_path / "job", "echo nothing to do >&2\nexit 3\n")
    failed = cli(server_url(running), "submit", str(job), "--service", "example", "--wait")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    job_id = submitted_id(failed.stdout)
    line = error_line(failed.stderr)
    message = running.api.status(job_id)["message"]
    assert message
    assert line == f"job-orchestrator: job {job_id} Failed: {message}"
    assert cli(server_url(running), "wait", str(job_id)).returncode == 1
    # No result to download: the reason, exit 1.
    download = cli(server_url(running), "download", str(job_id), "-o", str(tmp_path / "r.zip"))
    assert download.returncode == 1
    assert message in one_line(download.stderr)
    assert not (tmp_path / "r.zip").exists()


def test_status_json_and_text(running: Cluster) -> None:
    job_id = running.api.submit("echo ok > out.txt\n")
    running.api.wait_for(job_id, *FINAL)
    shown = cli(server_url(running), "status", str(job_id), "--json")
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["id"] == job_id
    assert body["status"] == "Completed"
    assert body["message"] == ""
    text = cli(server_url(running), "status", str(job_id))
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0] == f"job {job_id}: Completed"


def test_cancel_of_a_running_job(running: Cluster, tmp_path: Path) -> None:
    gate = tmp_path / "never"
    job = job_dir(
        tmp_path / "job",
        f"echo started > started.txt\nwhile [ ! -e '{gate}' ]; do sleep 0.1; done\n",
    )
    submitted = cli(server_url(running), "submit", str(job), "--service", "example")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted_id(submitted.stdout)
    running.api.wait_for(job_id, "Running")
    # Not finished: `download` says so (exit 5), `--partial` gets the files as they are now,
    # and `wait --timeout` gives up with exit 5.
    early = cli(server_url(running), "download", str(job_id), "-o", str(tmp_path / "x.zip"))
    assert early.returncode == 5, early.stderr
    assert "Running" in one_line(early.stderr)
    partial = tmp_path / "partial.zip"
    got = cli(server_url(running), "download", str(job_id), "--partial", "-o", str(partial))
    assert got.returncode == 0, got.stderr
    assert zipfile.ZipFile(partial).read("started.txt") == b"started\n"
    timed_out = cli(server_url(running), "wait", str(job_id), "--timeout", "0.5")
    assert timed_out.returncode == 5, timed_out.stderr
    assert "still Running" in error_line(timed_out.stderr)

    cancelled = cli(server_url(running), "cancel", str(job_id))
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith(f"job {job_id} "), cancelled.stdout
    assert running.api.wait_for(job_id, *FINAL)["status"] == "Killed"
    waited = cli(server_url(running), "wait", str(job_id))
    assert waited.returncode == 1
    assert f"job {job_id} Killed" in error_line(waited.stderr)
    again = cli(server_url(running), "cancel", str(job_id))
    assert again.returncode == 1
    assert "already finished with status Killed" in one_line(again.stderr)


@pytest.mark.parametrize(
    "args",
    [
        ("status", "1"),
        ("wait", "1"),
        ("cancel", "1"),
        ("download", "1"),
        ("list",),
        ("logs", "1"),
        ("submit", ".", "--service", "x"),
    ],
)
def test_an_unreachable_server_exits_3_in_one_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    (tmp_path / "run.sh").write_text("echo\n")
    nobody = f"http://127.0.0.1:{free_port()}"
    result = cli(nobody, *args, cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    assert one_line(result.stderr).startswith(f"job-orchestrator: server {nobody} unreachable")


@pytest.mark.parametrize("layout", ["no-run-sh", "nested", "missing"])
def test_a_submission_that_cannot_make_a_job_exits_2_before_any_request(
    tmp_path: Path, layout: str
) -> None:
    job = tmp_path / "job"
    job.mkdir()
    (job / "input.txt").write_text("x")
    if layout == "nested":
        (job / "run.sh").write_text("echo\n")
        (job / "sub").mkdir()
    target = tmp_path / "absent" if layout == "missing" else job
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        result = cli(url, "submit", str(target), "--service", "example")
        assert result.returncode == 2, result.stdout + result.stderr
        line = one_line(result.stderr)
        assert line.startswith(f"job-orchestrator: {target}: ")
        # Nothing connected: the check happened before any request.
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args", [("status",), ("wait",), ("download",), ("cancel",), ("download", "--partial")]
)
def test_an_unknown_job_exits_4_in_one_line(
    running: Cluster, tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = cli(server_url(running), args[0], str(UNKNOWN_ID), *args[1:], cwd=tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr
    assert one_line(result.stderr) == f"job-orchestrator: job {UNKNOWN_ID} not found"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ("submit", "--service", "example"),  # no files
        ("submit", "x"),  # no service
        ("status", "abc"),
        ("wait",),
        ("list", "--status", "Sleeping"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = cli(f"http://127.0.0.1:{free_port()}", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_server_url_that_is_not_http_exits_2(tmp_path: Path) -> None:
    result = cli("127.0.0.1:5000", "status", "1", cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid server URL '127.0.0.1:5000'" in one_line(result.stderr)


def test_a_refused_upload_exits_1_with_the_servers_reason(running: Cluster, tmp_path: Path) -> None:
    job = job_dir(tmp_path / "job", "echo\n")
    result = cli(server_url(running), "submit", str(job), "--service", "no-such-service")
    assert result.returncode == 1
    # The server's answer is the original's text; the CLI adds the services it has.
    assert one_line(result.stderr) == (
        "job-orchestrator: Invalid service 'no-such-service' (HTTP 400); "
        "this server's services: example"
    )


def test_a_download_leaves_only_the_finished_file(running: Cluster, tmp_path: Path) -> None:
    job_id = running.api.submit("head -c 3000000 /dev/urandom > big.bin\n")
    running.api.wait_for(job_id, *FINAL)
    out = tmp_path / "out.zip"
    result = cli(server_url(running), "download", str(job_id), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert zipfile.ZipFile(io.BytesIO(out.read_bytes())).getinfo("big.bin").file_size == 3000000
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.zip"]


def test_progress_bars_on_a_terminal_plain_lines_otherwise(
    running: Cluster, tmp_path: Path
) -> None:
    job = job_dir(tmp_path / "job", "cp input.bin copy.bin\n", **{"input.bin": "x" * 3_000_000})
    args = ["submit", str(job), "--service", "example", "-o"]
    plain = cli(server_url(running), *args, str(tmp_path / "plain.zip"))
    assert plain.returncode == 0, plain.stderr
    # Off a terminal: no bar, and a plain line (if any) each time the waiting job changed.
    assert all(WAITING_LINE.fullmatch(line) for line in plain.stderr.splitlines()), plain.stderr
    assert [line.split()[0] for line in plain.stdout.splitlines()] == ["submitted", "job", "saved"]

    env = {key: value for key, value in os.environ.items() if not key.startswith("JO_")}
    env.update(JO_SERVER=server_url(running), TERM="xterm-256color", COLUMNS="120")
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "job_orchestrator", *args, str(tmp_path / "tty.zip")],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the program has exited
        while chunk := os.read(controller, 65536):
            shown += chunk
    os.close(controller)
    assert process.wait(timeout=120) == 0, shown
    text = shown.decode(errors="replace")
    assert "upload" in text
    assert "download" in text
    assert "\x1b[" in text  # drawn with terminal control sequences
    assert zipfile.ZipFile(tmp_path / "tty.zip").read("copy.bin") == b"x" * 3_000_000


def test_a_result_that_cannot_be_written_exits_1_in_one_line(
    running: Cluster, tmp_path: Path
) -> None:
    job_id = running.api.submit("echo ok > out.txt\n")
    running.api.wait_for(job_id, *FINAL)
    target = tmp_path / "no-such-dir" / "r.zip"
    result = cli(server_url(running), "download", str(job_id), "-o", str(target))
    assert result.returncode == 1
    assert "No such file or directory" in one_line(result.stderr)
