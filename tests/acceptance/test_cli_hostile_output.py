"""What a job can put in front of the user who runs the CLI (issue 21, finding 11): terminal
escape sequences in its message (through the names of files the archive left out), and a
symlink planted where a download writes. Real server, client and CLI processes."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from job_orchestrator.sdk import Client
from testkit.harness import Cluster, cluster, job_dir

# File names holding escape sequences: a title change (OSC) and a screen clear (CSI).
HOSTILE_SCRIPT = (
    "ln -s /nonexistent \"$(printf 'x\\033]0;pwned\\007y')\"\n"
    "mkfifo \"$(printf 'f\\033[2J')\"\n"
    "echo result > out.txt\n"
)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("hostile-output")) as started:
        yield started


@pytest.fixture(scope="module")
def hostile_job(running: Cluster, tmp_path_factory: pytest.TempPathFactory) -> int:
    assert running.server is not None
    directory = job_dir(tmp_path_factory.mktemp("job") / "job", HOSTILE_SCRIPT)
    with Client(running.server.url) as client:
        job = client.wait(client.submit(directory, "example", 1).id, timeout=60)
    assert "\x1b" in job.message  # the server keeps the message as the job made it
    return job.id


def cli(cl: Cluster, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert cl.server is not None
    env = {key: value for key, value in os.environ.items() if not key.startswith("JO_")}
    return subprocess.run(
        [sys.executable, "-m", "job_orchestrator", *args],
        env={**env, "JO_SERVER": cl.server.url},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("command", [("status",), ("wait",), ("list", "--user-id", "1")])
def test_no_escape_sequence_of_a_job_reaches_the_terminal(
    running: Cluster, hostile_job: int, command: tuple[str, ...]
) -> None:
    args = [*command, str(hostile_job)] if command[0] != "list" else list(command)
    done = cli(running, *args)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "\x1b" not in output
    assert "\x07" not in output
    assert "\\x1b" in output  # shown, visibly, rather than dropped


def test_json_output_keeps_the_message_exact_but_escaped(
    running: Cluster, hostile_job: int
) -> None:
    done = cli(running, "status", "--json", str(hostile_job))
    assert "\x1b" not in done.stdout
    assert "\\u001b" in done.stdout


def test_a_download_never_follows_a_planted_symlink(
    running: Cluster, hostile_job: int, tmp_path: Path
) -> None:
    """The old temporary name (`.job-N.zip.part`) was predictable and opened following
    symlinks: another local user could make the download overwrite a file of the victim."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for planted in (f".job-{hostile_job}.zip.part", f".job-{hostile_job}-partial.zip.part"):
        (tmp_path / planted).symlink_to(victim)
    done = cli(running, "download", str(hostile_job), "-o", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "precious"
    with zipfile.ZipFile(tmp_path / f"job-{hostile_job}.zip") as archive:
        assert archive.read("out.txt") == b"result\n"
    leftovers = {path.name for path in tmp_path.iterdir()} - {f"job-{hostile_job}.zip"}
    assert leftovers == {
        "victim.txt",
        f".job-{hostile_job}.zip.part",
        f".job-{hostile_job}-partial.zip.part",
    }
