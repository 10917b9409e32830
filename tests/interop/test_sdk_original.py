"""The SDK and the CLI against the original Rust server (driving our client): only the
original's routes exist there, so `status()` reads `/download/{id}` and `wait()` falls back
to holding no request (the original ignores `?wait=`) without polling faster than 1/s."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from job_orchestrator.sdk import Client, JobFailed, JobNotFound, Status
from testkit.original import TRAP, Fleet
from tests.acceptance.test_user_cli import cli, submitted_id


@pytest.fixture
def original_server(fleet: Fleet) -> Fleet:
    fleet.our_client()
    fleet.original_server()
    return fleet


def job_dir(root: Path, script: str) -> Path:
    root.mkdir()
    (root / "run.sh").write_text(TRAP + script)
    return root


def test_sdk_submit_wait_download_on_the_original_server(
    original_server: Fleet, tmp_path: Path
) -> None:
    assert original_server.server is not None
    with Client(original_server.server.url) as jo:
        job = jo.submit(job_dir(tmp_path / "ok", "echo original > out.txt\n"), "example")
        assert jo.wait(job.id, timeout=120).status is Status.COMPLETED
        assert jo.status(job.id).status is Status.COMPLETED
        assert jo.status(job.id).service is None  # no details from the original
        saved = jo.download(job.id, tmp_path / "r.zip")
        assert zipfile.ZipFile(saved).read("out.txt") == b"original\n"
        failing = jo.submit(job_dir(tmp_path / "bad", "exit 5\n"), "example")
        with pytest.raises(JobFailed) as failed:
            jo.wait(failing.id, timeout=120)
        assert failed.value.status is Status.FAILED
        with pytest.raises(JobNotFound):
            jo.status(987654)


def test_cli_submit_wait_on_the_original_server(original_server: Fleet, tmp_path: Path) -> None:
    assert original_server.server is not None
    job = job_dir(tmp_path / "ok", "echo cli > out.txt\n")
    out = tmp_path / "r.zip"
    done = cli(
        original_server.server.url, "submit", str(job), "--service", "example", "-o", str(out)
    )
    assert done.returncode == 0, done.stderr
    assert submitted_id(done.stdout) > 0
    assert zipfile.ZipFile(out).read("out.txt") == b"cli\n"
