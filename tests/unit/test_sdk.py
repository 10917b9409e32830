"""The SDK's pure parts: the upload body (read back by our own multipart parser), the checks
done before anything is sent, the Job model and where the server URL and token come from."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pytest

from job_orchestrator.multipart import read_multipart
from job_orchestrator.sdk import InvalidServer, InvalidSubmission, Job, QueueInfo, Status
from job_orchestrator.sdk._protocol import DEFAULT_SERVER, Connection
from job_orchestrator.sdk._upload import UploadBody, collect_files

CONTRACT_EXAMPLE = {
    "id": 7,
    "status": "Queued",
    "message": "",
    "service": "example",
    "user_id": 1,
    "created_at": "2026-12-01T14:00:00.123Z",
    "started_at": None,
    "finished_at": None,
    "client": "http://127.0.0.1:9000",
    "exit_code": None,
    "queue": {"position": 3, "reason": "user_quota", "detail": "user 1 has 2 of 2 running"},
    "callback_url": None,
}


def job_dir(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir()
    for name, content in files.items():
        (root / name).write_bytes(content)
    return root


def test_a_directory_gives_its_files_by_name(tmp_path: Path) -> None:
    directory = job_dir(tmp_path / "job", {"run.sh": b"echo\n", "in.pdb": b"ATOM"})
    assert collect_files([directory]) == {
        "in.pdb": directory / "in.pdb",
        "run.sh": directory / "run.sh",
    }


def test_files_and_directories_combine(tmp_path: Path) -> None:
    directory = job_dir(tmp_path / "job", {"run.sh": b"echo\n"})
    extra = tmp_path / "extra.txt"
    extra.write_text("x")
    assert set(collect_files([directory, extra])) == {"run.sh", "extra.txt"}


@pytest.mark.parametrize(
    ("layout", "reason"),
    [
        ({"input.txt": b"x"}, "no run.sh in this directory"),
        ({}, "no run.sh in this directory"),
    ],
)
def test_a_directory_without_run_sh_is_refused(
    tmp_path: Path, layout: dict[str, bytes], reason: str
) -> None:
    directory = job_dir(tmp_path / "job", layout)
    with pytest.raises(InvalidSubmission, match=reason) as raised:
        collect_files([directory])
    assert isinstance(raised.value, ValueError)
    assert str(directory) in str(raised.value)


def test_files_without_run_sh_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("x")
    with pytest.raises(InvalidSubmission, match=r"no run\.sh among the files"):
        collect_files([data])


def test_a_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidSubmission, match="no such file or directory"):
        collect_files([tmp_path / "absent"])


def test_subdirectories_are_refused_not_flattened(tmp_path: Path) -> None:
    directory = job_dir(tmp_path / "job", {"run.sh": b"echo\n"})
    (directory / "inputs").mkdir()
    (directory / "inputs" / "a.txt").write_text("a")
    with pytest.raises(InvalidSubmission, match=r"subdirectories cannot be uploaded.*inputs"):
        collect_files([directory])


def test_two_files_of_one_name_are_refused(tmp_path: Path) -> None:
    first = job_dir(tmp_path / "a", {"run.sh": b"echo\n"})
    second = job_dir(tmp_path / "b", {"run.sh": b"echo 2\n"})
    with pytest.raises(InvalidSubmission, match=r"two files named .run\.sh."):
        collect_files([first, second])


def test_control_characters_in_names_are_refused(tmp_path: Path) -> None:
    directory = job_dir(tmp_path / "job", {"run.sh": b"echo\n", "a\tb": b"x"})
    with pytest.raises(InvalidSubmission, match="control characters"):
        collect_files([directory])


async def test_the_upload_body_reads_back_as_sent(tmp_path: Path) -> None:
    big = bytes(range(256)) * 9000  # over two read chunks
    names = {"run.sh": b"echo ok\n", 'quote"d.txt': b"q", "back\\slash": b"b", "é.txt": big}
    directory = job_dir(tmp_path / "job", names)
    body = UploadBody(collect_files([directory]), {"service": "example", "user_id": "3"})
    chunks = list(body.chunks())
    assert sum(map(len, chunks)) == body.length_bytes == int(body.headers["Content-Length"])
    assert max(map(len, chunks)) <= 1024 * 1024

    async def replay() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    stored = tmp_path / "stored"
    stored.mkdir()
    form = await read_multipart(
        replay(),
        body.headers["Content-Type"],
        stored,
        name_for_file=lambda _field, filename: PurePosixPath(filename),
    )
    assert form.fields == {"service": "example", "user_id": "3"}
    assert {saved.filename for saved in form.files} == set(names)
    for name, content in names.items():
        assert (stored / name).read_bytes() == content
    async_chunks = [chunk async for chunk in body.achunks()]
    assert b"".join(async_chunks) == b"".join(chunks)


def test_upload_progress_reaches_the_total(tmp_path: Path) -> None:
    directory = job_dir(tmp_path / "job", {"run.sh": b"echo\n", "data": b"x" * 3_000_000})
    body = UploadBody(collect_files([directory]), {"service": "example"})
    seen: list[tuple[int, int | None]] = []
    for _ in body.chunks(lambda done, total: seen.append((done, total))):
        pass
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert seen[-1] == (body.length_bytes, body.length_bytes)


def test_a_file_that_shrinks_during_the_upload_is_an_error(tmp_path: Path) -> None:
    directory = job_dir(tmp_path / "job", {"run.sh": b"echo\n", "data": b"x" * 100})
    body = UploadBody(collect_files([directory]), {"service": "example"})
    (directory / "data").write_bytes(b"x")
    with pytest.raises(InvalidSubmission, match="shrank"):
        list(body.chunks())


def test_job_reads_the_contract_example() -> None:
    job = Job.from_dict(CONTRACT_EXAMPLE)
    assert job.id == 7
    assert job.status is Status.QUEUED
    assert job.created_at == datetime(2026, 12, 1, 14, 0, 0, 123000, tzinfo=UTC)
    assert job.queue == QueueInfo(3, "user_quota", "user 1 has 2 of 2 running")
    assert job.client == "http://127.0.0.1:9000"
    assert not job.is_final
    assert job.to_dict() == CONTRACT_EXAMPLE


def test_job_reads_a_status_body_and_odd_values_leniently() -> None:
    job = Job.from_dict({"id": 3, "status": "Exploded", "message": "m", "user_id": "1"})
    assert (job.id, job.status, job.message, job.user_id) == (3, Status.UNKNOWN, "m", None)
    assert job.is_final  # Unknown never changes on its own
    with pytest.raises(AttributeError):
        job.id = 4  # type: ignore[misc]


def test_the_connection_comes_from_arguments_then_the_environment() -> None:
    env = {"JO_SERVER": "http://jo:5000/", "JO_TOKEN": "t" * 20}
    assert Connection.resolve(None, None, env).server == "http://jo:5000"
    assert Connection.resolve(None, None, env).token == "t" * 20
    assert Connection.resolve("http://other:1", "x" * 16, env).server == "http://other:1"
    assert Connection.resolve("http://other:1", "x" * 16, env).token == "x" * 16
    empty = Connection.resolve(None, None, {"JO_SERVER": "", "JO_TOKEN": ""})
    assert (empty.server, empty.token) == (DEFAULT_SERVER, None)


def test_the_token_is_sent_as_a_bearer_token() -> None:
    with_token = Connection.resolve("http://jo", "secret-token-1234", {})
    assert with_token.request("GET", "/x").headers["Authorization"] == "Bearer secret-token-1234"
    assert (
        "Authorization"
        not in Connection.resolve("http://jo", None, {}).request("GET", "/x").headers
    )


@pytest.mark.parametrize("server", ["127.0.0.1:5000", "ftp://jo", "http://", "http://[::1"])
def test_a_server_that_is_not_an_http_url_is_refused(server: str) -> None:
    with pytest.raises(InvalidServer, match="invalid server URL") as raised:
        Connection.resolve(server, None, {})
    assert isinstance(raised.value, ValueError)
