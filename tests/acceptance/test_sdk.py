"""The Python SDK (`Client` and `AsyncClient`) against real server and client processes."""

from __future__ import annotations

import secrets
import sqlite3
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from job_orchestrator.sdk import (
    AlreadyFinished,
    AsyncClient,
    Client,
    InvalidSubmission,
    JobFailed,
    JobNotFound,
    NotFinished,
    ServerError,
    ServerUnreachable,
    Status,
    Unauthorized,
    WaitTimeout,
)
from testkit.harness import Cluster, cluster, free_port, job_dir

FINAL = ("Completed", "Failed", "Invalid", "Killed", "Cleaned")
UNKNOWN_ID = 987654
TOKEN_A = f"sdk-user-a-{secrets.token_hex(16)}"
TOKEN_B = f"sdk-user-b-{secrets.token_hex(16)}"
USER_A, USER_B = 11, 12


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("sdk")) as started:
        yield started


@pytest.fixture(scope="module")
def with_tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("sdk-tokens")
    tokens = root / "tokens.txt"
    tokens.write_text(f"{TOKEN_A} {USER_A}\n{TOKEN_B} {USER_B}\n")
    with cluster(root, server_env={"API_TOKENS_FILE": str(tokens)}) as started:
        yield started


def url(cl: Cluster) -> str:
    assert cl.server is not None
    return cl.server.url


def gated(gate: Path) -> str:
    return f"echo started > started.txt\nwhile [ ! -e '{gate}' ]; do sleep 0.1; done\n"


# ---- Client ---------------------------------------------------------------------------------


def test_submit_wait_download(running: Cluster, tmp_path: Path) -> None:
    job = job_dir(tmp_path / "job", "cat input.txt input.txt > out.txt\n", **{"input.txt": "ab"})
    uploaded: list[tuple[int, int | None]] = []
    downloaded: list[tuple[int, int | None]] = []
    with Client(url(running)) as jo:
        submitted = jo.submit(job, "example", progress=lambda *p: uploaded.append(p))
        assert submitted.status is Status.QUEUED
        assert uploaded[-1][0] == uploaded[-1][1]  # the whole body, of a known length
        done = jo.wait(submitted.id, timeout=120)
        assert done.id == submitted.id
        assert done.status is Status.COMPLETED
        assert jo.status(submitted.id).status is Status.COMPLETED
        saved = jo.download(submitted.id, tmp_path, progress=lambda *p: downloaded.append(p))
        assert saved == tmp_path / f"job-{submitted.id}.zip"
        assert zipfile.ZipFile(saved).read("out.txt") == b"abab"
        assert downloaded[-1] == (saved.stat().st_size, saved.stat().st_size)
        partial = jo.download_partial(submitted.id, tmp_path / "partial.zip")
        assert zipfile.ZipFile(partial).read("out.txt") == b"abab"
        with pytest.raises(AlreadyFinished) as finished:
            jo.cancel(submitted.id)
        assert finished.value.status is Status.COMPLETED


def test_the_user_id_is_sent_and_defaults_to_0(running: Cluster, tmp_path: Path) -> None:
    job = job_dir(tmp_path / "job", "echo ok > out.txt\n")
    with Client(url(running)) as jo:
        first, second = jo.submit(job, "example", user_id=5), jo.submit([job / "run.sh"], "example")
    # The owner is only in the server's row of the job (the user routes do not show it).
    assert running.api.wait_for(first.id, *FINAL)["status"] == "Completed"
    assert running.api.wait_for(second.id, *FINAL)["status"] == "Completed"
    with sqlite3.connect(running.root / "server.db") as db:
        owners = dict(
            db.execute("SELECT id, user_id FROM jobs WHERE id IN (?, ?)", (first.id, second.id))
        )
    assert owners == {first.id: 5, second.id: 0}


def test_a_failed_job_raises_job_failed_with_its_message(running: Cluster, tmp_path: Path) -> None:
    job = job_dir(tmp_path / "job", "exit 4\n")
    with Client(url(running)) as jo:
        submitted = jo.submit(job, "example")
        with pytest.raises(JobFailed) as failed:
            jo.wait(submitted.id)
        assert failed.value.status is Status.FAILED
        assert failed.value.message == running.api.status(submitted.id)["message"]
        assert failed.value.message
        assert failed.value.job.id == submitted.id
        with pytest.raises(JobFailed):
            jo.download(submitted.id, tmp_path / "r.zip")
        assert not (tmp_path / "r.zip").exists()
        # The files of a failed job stay available.
        assert zipfile.ZipFile(jo.download_partial(submitted.id, tmp_path)).namelist()


def test_cancel_a_running_job(running: Cluster, tmp_path: Path) -> None:
    job = job_dir(tmp_path / "job", gated(tmp_path / "never"))
    with Client(url(running)) as jo:
        submitted = jo.submit(job, "example")
        running.api.wait_for(submitted.id, "Running")
        with pytest.raises(NotFinished) as early:
            jo.download(submitted.id, tmp_path / "r.zip")
        assert early.value.status is Status.RUNNING
        partial = jo.download_partial(submitted.id, tmp_path / "now.zip")
        assert zipfile.ZipFile(partial).read("started.txt") == b"started\n"
        with pytest.raises(WaitTimeout) as timed_out:
            jo.wait(submitted.id, timeout=0.5)
        assert isinstance(timed_out.value, TimeoutError)
        cancelled = jo.cancel(submitted.id)
        assert cancelled.status in (Status.KILLED, Status.LOCKED)
        with pytest.raises(JobFailed) as failed:
            jo.wait(submitted.id, timeout=60)
        assert failed.value.status is Status.KILLED


def test_unknown_jobs_raise_job_not_found(running: Cluster, tmp_path: Path) -> None:
    with Client(url(running)) as jo:
        for verb in (jo.status, jo.wait, jo.cancel):
            with pytest.raises(JobNotFound) as missing:
                verb(UNKNOWN_ID)
            assert missing.value.job_id == UNKNOWN_ID
        with pytest.raises(JobNotFound):
            jo.download(UNKNOWN_ID, tmp_path)
        with pytest.raises(JobNotFound):
            jo.download_partial(UNKNOWN_ID, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_submission_raises_before_sending(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    (job / "input.txt").write_text("x")
    # Nobody listens there: a request would raise ServerUnreachable instead.
    with Client(f"http://127.0.0.1:{free_port()}") as jo:
        with pytest.raises(InvalidSubmission, match=r"no run\.sh"):
            jo.submit(job, "example")
        with pytest.raises(ServerUnreachable):
            jo.status(1)


def test_a_refused_upload_raises_server_error(running: Cluster, tmp_path: Path) -> None:
    job = job_dir(tmp_path / "job", "echo\n")
    with Client(url(running)) as jo, pytest.raises(ServerError) as refused:
        jo.submit(job, "no-such-service")
    assert (refused.value.status_code, refused.value.message) == (400, "Invalid service")


def test_the_server_comes_from_jo_server(
    running: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JO_SERVER", url(running))
    with Client() as jo:
        assert jo.server == url(running)
        job_id = jo.submit(job_dir(tmp_path / "job", "echo\n"), "example").id
        assert jo.wait(job_id).status is Status.COMPLETED


# ---- AsyncClient ----------------------------------------------------------------------------


async def test_async_submit_wait_download_cancel(running: Cluster, tmp_path: Path) -> None:
    job = job_dir(tmp_path / "job", "echo async > out.txt\n")
    slow = job_dir(tmp_path / "slow", gated(tmp_path / "never"))
    async with AsyncClient(url(running)) as jo:
        submitted = await jo.submit(job, "example")
        assert (await jo.wait(submitted.id, timeout=120)).status is Status.COMPLETED
        saved = await jo.download(submitted.id, tmp_path / "result.zip")
        assert zipfile.ZipFile(saved).read("out.txt") == b"async\n"
        partial = await jo.download_partial(submitted.id, tmp_path / "partial.zip")
        assert zipfile.ZipFile(partial).read("out.txt") == b"async\n"

        long_running = await jo.submit(slow, "example")
        running.api.wait_for(long_running.id, "Running")
        assert (await jo.status(long_running.id)).status is Status.RUNNING
        with pytest.raises(WaitTimeout):
            await jo.wait(long_running.id, timeout=0.5)
        await jo.cancel(long_running.id)
        with pytest.raises(JobFailed) as killed:
            await jo.wait(long_running.id)
        assert killed.value.status is Status.KILLED


async def test_async_errors(running: Cluster, tmp_path: Path) -> None:
    failing = job_dir(tmp_path / "job", "echo broken >&2\nexit 2\n")
    async with AsyncClient(url(running)) as jo:
        submitted = await jo.submit(failing, "example")
        with pytest.raises(JobFailed) as failed:
            await jo.wait(submitted.id)
        assert failed.value.status is Status.FAILED
        assert failed.value.message == running.api.status(submitted.id)["message"]
        with pytest.raises(JobNotFound):
            await jo.status(UNKNOWN_ID)
        with pytest.raises(JobNotFound):
            await jo.download(UNKNOWN_ID, tmp_path / "x.zip")
    async with AsyncClient(f"http://127.0.0.1:{free_port()}") as nobody:
        with pytest.raises(ServerUnreachable):
            await nobody.wait(1)


# ---- API_TOKENS_FILE ------------------------------------------------------------------------


def test_tokens_decide_the_user_and_hide_other_users_jobs(
    with_tokens: Cluster, tmp_path: Path
) -> None:
    job = job_dir(tmp_path / "job", "echo mine > out.txt\n")
    with Client(url(with_tokens), TOKEN_A) as as_a, Client(url(with_tokens), TOKEN_B) as as_b:
        submitted = as_a.submit(job, "example")  # no user_id: the token says who
        assert as_a.wait(submitted.id).status is Status.COMPLETED
        assert zipfile.ZipFile(as_a.download(submitted.id, tmp_path)).read("out.txt") == b"mine\n"
        for verb in (as_b.status, as_b.wait, as_b.cancel):
            with pytest.raises(JobNotFound):
                verb(submitted.id)
        with pytest.raises(Unauthorized) as forbidden:
            as_a.submit(job, "example", user_id=USER_B)
        assert forbidden.value.status_code == 403


@pytest.mark.parametrize("token", [None, "x" * 40])
def test_no_or_a_wrong_token_raises_unauthorized(
    with_tokens: Cluster, tmp_path: Path, token: str | None
) -> None:
    job = job_dir(tmp_path / "job", "echo\n")
    with Client(url(with_tokens), token) as jo:
        with pytest.raises(Unauthorized) as refused:
            jo.submit(job, "example")
        assert refused.value.status_code == 401
        with pytest.raises(Unauthorized):
            jo.status(1)


def test_the_cli_sends_jo_token(with_tokens: Cluster, tmp_path: Path) -> None:
    from tests.acceptance.test_user_cli import cli, submitted_id

    job = job_dir(tmp_path / "job", "echo via-cli > out.txt\n")
    out = tmp_path / "r.zip"
    args = ("submit", str(job), "--service", "example", "-o", str(out))
    done = cli(url(with_tokens), *args, token=TOKEN_A)
    assert done.returncode == 0, done.stderr
    assert zipfile.ZipFile(out).read("out.txt") == b"via-cli\n"
    job_id = submitted_id(done.stdout)
    other = cli(url(with_tokens), "status", str(job_id), "--token", TOKEN_B)
    assert other.returncode == 4
    refused = cli(url(with_tokens), "status", str(job_id))
    assert refused.returncode == 1
    assert refused.stderr.strip() == "job-orchestrator: missing or invalid bearer token"
