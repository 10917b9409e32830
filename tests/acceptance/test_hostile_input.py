"""Hostile input: file names, huge or truncated uploads, and jobs that try to leak files.

A file name is reduced to its last component (upstream's behaviour) or refused with a 4xx;
nothing is ever written outside the job's own directory, a rejected request leaves nothing
behind, and a result ZIP only ever holds the job's own files.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import socket
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testkit import eventually
from testkit.harness import Cluster, cluster

FINAL = ("Completed", "Failed", "Invalid", "Killed", "Cleaned")
RESULT_MAX_MB = 1
MANY_FILES = 2000
PARSE_ERROR = "Error parsing `multipart/form-data` request"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(
        tmp_path_factory.mktemp("hostile"), client_env={"RESULT_MAX_MB": str(RESULT_MAX_MB)}
    ) as running:
        yield running


# ---- helpers ----------------------------------------------------------------------------------


def quoted(value: str) -> bytes:
    """A quoted parameter value that arrives as `value`: multer (and we) unescape only `\\"`."""
    return b'"' + value.encode().replace(b'"', b'\\"') + b'"'


def file_part(filename: bytes, content: bytes, field: bytes = b"file") -> tuple[bytes, bytes]:
    return b'form-data; name="' + field + b'"; filename=' + filename, content


def text_part(name: str, value: str) -> tuple[bytes, bytes]:
    return f'form-data; name="{name}"'.encode(), value.encode()


def multipart(parts: list[tuple[bytes, bytes]], *, close: bool = True) -> tuple[str, bytes]:
    boundary = secrets.token_hex(16).encode()
    body = bytearray()
    for disposition, content in parts:
        body += b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n"
        body += content + b"\r\n"
    if close:
        body += b"--" + boundary + b"--\r\n"
    return f"multipart/form-data; boundary={boundary.decode()}", bytes(body)


def upload_parts(*files: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [text_part("user_id", "1"), text_part("service", "example"), *files]


def post(url: str, content_type: str, body: bytes) -> httpx.Response:
    return httpx.post(url, content=body, headers={"content-type": content_type}, timeout=120)


def directories(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {entry.name for entry in path.iterdir() if entry.is_dir()}


def server_data(cl: Cluster) -> Path:
    return cl.root / "server-data"


def client_data(cl: Cluster) -> Path:
    return cl.root / "client0"


def expected_name(name: str) -> str | None:
    """What upstream's Path::file_name keeps of a name; None when it must be refused."""
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        return None  # NUL and the other control characters (issue 15 item 6)
    parts = [part for part in name.split("/") if part not in ("", ".")]
    kept = "file" if not parts or parts[-1] == ".." else parts[-1]
    return None if len(kept.encode()) > 255 else kept


def outside_entries(cl: Cluster) -> set[str]:
    """Anything in the cluster's root that is not one of the processes' own files."""
    allowed = {"server-data", "client0", "server.log", "client0.log"}
    return {
        entry.name
        for entry in cl.root.iterdir()
        if entry.name not in allowed and not entry.name.startswith("server.db")
    }


def new_job_dir(cl: Cluster, before: set[str]) -> Path:
    created = directories(server_data(cl)) - before
    assert len(created) == 1, created
    return server_data(cl) / created.pop()


@contextlib.contextmanager
def leaves_nothing(*paths: Path) -> Iterator[None]:
    before = [directories(path) for path in paths]
    yield
    for path, earlier in zip(paths, before, strict=True):
        assert directories(path) == earlier, f"left behind in {path}"


def eventually_leaves_nothing(path: Path, before: set[str], timeout_s: float = 30) -> None:
    """Wait until `path` holds no directory beyond `before`; fail naming the new ones."""
    eventually(
        lambda: not directories(path) - before,
        f"no new directory left in {path}",
        timeout_s,
        detail=lambda: directories(path) - before,
    )


def payload_dirs(path: Path) -> set[str]:
    return {name for name in directories(path) if name.isdigit()}


# ---- file names -------------------------------------------------------------------------------

SANITIZED = [
    ("../../evil.txt", "evil.txt"),
    ("../../../../../../../../tmp/evil.txt", "evil.txt"),
    ("/etc/evil.txt", "evil.txt"),
    ("/", "file"),
    ("..", "file"),
    (".", "file"),
    ("", "file"),
    ("a/../..", "file"),
    ("sub/dir/nested.txt", "nested.txt"),
    ("..\\..\\windows.txt", "..\\..\\windows.txt"),  # a backslash is an ordinary character
    ('quo"te.txt', 'quo"te.txt'),
    ("x" * 255, "x" * 255),
    ("ünï/çødé.txt", "çødé.txt"),
]


@pytest.mark.parametrize(("name", "stored"), SANITIZED)
def test_upload_keeps_only_the_base_name(hostile: Cluster, name: str, stored: str) -> None:
    before = directories(server_data(hostile))
    content_type, body = multipart(
        upload_parts(
            file_part(quoted(name), b"hostile\n"),
            file_part(b'"run.sh"', b"n=$(ls -A); printf '%s\\n' \"$n\" > listing.txt\n"),
        )
    )
    response = post(f"{hostile.api.base_url}/upload", content_type, body)
    assert response.status_code == 201, response.text
    job_dir = new_job_dir(hostile, before)
    stored_files = sorted(entry.name for entry in (job_dir / "input").iterdir())
    assert stored_files == sorted({stored, "run.sh"})
    if stored != "run.sh":
        assert (job_dir / "input" / stored).read_bytes() == b"hostile\n"
    assert outside_entries(hostile) == set()
    assert not Path("/tmp/evil.txt").exists()
    # The client stored the same name in the job's work directory.
    job_id = response.json()["id"]
    assert hostile.api.wait_for(job_id, *FINAL)["status"] == "Completed"
    listed = hostile.api.download_zip(job_id).read("listing.txt").decode().splitlines()
    # Dispatch sends a backslash as two (as reqwest does) and the client keeps both, as the
    # original does.
    assert sorted(listed) == sorted({stored.replace("\\", "\\\\"), "run.sh"})


REFUSED = [
    (b'"bad\x00name.txt"', "NUL byte"),
    (b'"../\x00/etc/passwd"', "NUL byte"),
    (quoted("y" * 300), "too long"),
    (quoted("dir/" + "z" * 256), "too long"),
    (quoted("é" * 128 + ".txt"), "too long"),  # 260 bytes in UTF-8
]


@pytest.mark.parametrize(("filename", "reason"), REFUSED)
def test_upload_refuses_unstorable_names(hostile: Cluster, filename: bytes, reason: str) -> None:
    content_type, body = multipart(
        upload_parts(file_part(b'"run.sh"', b"exit 0\n"), file_part(filename, b"x"))
    )
    with leaves_nothing(server_data(hostile)):
        response = post(f"{hostile.api.base_url}/upload", content_type, body)
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith("Multipart error:")
    assert reason in response.json()["message"]
    assert outside_entries(hostile) == set()


@pytest.mark.parametrize(("name", "stored"), SANITIZED[:10])
def test_client_submit_keeps_only_the_base_name(hostile: Cluster, name: str, stored: str) -> None:
    client = client_data(hostile)
    before = payload_dirs(client)
    content_type, body = multipart(
        [file_part(b'"run.sh"', b"exit 0\n"), file_part(quoted(name), b"hostile\n")]
    )
    response = post(f"{hostile.clients[0].url}/submit", content_type, body)
    assert response.status_code == 200, response.text
    payload = response.json()
    created = payload_dirs(client) - before
    assert created == {str(payload["id"])}
    work = client / str(payload["id"]) / "work"
    assert payload["loc"] == str(work)
    assert sorted(entry.name for entry in work.iterdir()) == sorted({stored, "run.sh"})
    # Nothing landed beside the payload, in DATA_PATH or further up.
    assert not (client / "evil.txt").exists()
    assert not (client / str(payload["id"]) / "evil.txt").exists()
    assert outside_entries(hostile) == set()


@pytest.mark.parametrize(("filename", "reason"), REFUSED)
def test_client_submit_refuses_unstorable_names(
    hostile: Cluster, filename: bytes, reason: str
) -> None:
    content_type, body = multipart([file_part(b'"run.sh"', b"exit 0\n"), file_part(filename, b"x")])
    before = payload_dirs(client_data(hostile))
    response = post(f"{hostile.clients[0].url}/submit", content_type, body)
    assert response.status_code == 400, (reason, response.text)
    assert response.json()["id"] == 0
    assert payload_dirs(client_data(hostile)) == before


def test_two_thousand_files_in_one_upload(hostile: Cluster) -> None:
    files = [file_part(b'"run.sh"', b'n=$(ls | wc -l)\necho "$n" > count.txt\n')]
    files += [
        file_part(quoted(f"input-{index:04d}.dat"), f"{index}\n".encode())
        for index in range(MANY_FILES - 1)
    ]
    before = directories(server_data(hostile))
    content_type, body = multipart(upload_parts(*files))
    response = post(f"{hostile.api.base_url}/upload", content_type, body)
    assert response.status_code == 201, response.text
    job_dir = new_job_dir(hostile, before)
    assert len(list((job_dir / "input").iterdir())) == MANY_FILES
    job_id = response.json()["id"]
    body_status = hostile.api.wait_for(job_id, *FINAL, timeout_s=180)
    assert body_status["status"] == "Completed", body_status
    archive = hostile.api.download_zip(job_id)
    assert archive.read("count.txt") == f"{MANY_FILES}\n".encode()
    assert len(archive.namelist()) == MANY_FILES + 1
    assert archive.read("input-1998.dat") == b"1998\n"


# ---- truncated and broken bodies --------------------------------------------------------------


def truncations(body: bytes) -> dict[str, bytes]:
    last_part = body.rindex(b"\r\n--")
    delimiter = body[: body.index(b"\r\n")]
    first_data = body.index(b"\r\n\r\n") + 4
    return {
        "no-closing-boundary": body[:last_part],
        "mid-headers": body[: body.index(b"Content-Disposition") + 25],
        "mid-content": body[: body.rindex(b"#!") + 5] if b"#!" in body else body[: len(body) // 2],
        "half": body[: len(body) // 2],
        "just-a-boundary": delimiter,
        "empty": b"",
        "mid-text": body[: first_data + 1],
        "after-text-headers": body[:first_data],
        "after-a-delimiter": body[: body.index(delimiter, first_data) + len(delimiter)],
        "after-the-last-delimiter": body[: last_part + 2 + len(delimiter)],
        "mid-last-delimiter": body[: last_part + 5],
    }


#: What upstream answers for each cut (UPSTREAM §3.2): where its handler was reading.
TRUNCATED_MESSAGE = {
    "no-closing-boundary": f"Could not save file: Chunk read failed: {PARSE_ERROR}",
    "mid-headers": f"Multipart error: {PARSE_ERROR}",
    "mid-content": f"Could not save file: Chunk read failed: {PARSE_ERROR}",
    "half": f"Could not save file: Chunk read failed: {PARSE_ERROR}",
    "just-a-boundary": f"Multipart error: {PARSE_ERROR}",
    "empty": f"Multipart error: {PARSE_ERROR}",
    "mid-text": f"Error reading text field: {PARSE_ERROR}",
    "after-text-headers": f"Error reading text field: {PARSE_ERROR}",
    "after-a-delimiter": f"Multipart error: {PARSE_ERROR}",
    "after-the-last-delimiter": f"Multipart error: {PARSE_ERROR}",
    "mid-last-delimiter": f"Could not save file: Chunk read failed: {PARSE_ERROR}",
}


def valid_upload_body() -> tuple[str, bytes]:
    script = b"#!/bin/bash\necho ok > out.txt\n" + b"# padding\n" * 200
    return multipart(
        upload_parts(file_part(b'"run.sh"', script), file_part(b'"data.txt"', b"x" * 5000))
    )


@pytest.mark.parametrize("cut", sorted(truncations(valid_upload_body()[1])))
def test_truncated_multipart_upload_is_refused(hostile: Cluster, cut: str) -> None:
    content_type, body = valid_upload_body()
    with leaves_nothing(server_data(hostile)):
        response = post(f"{hostile.api.base_url}/upload", content_type, truncations(body)[cut])
    assert response.status_code == 400, response.text
    assert response.json()["message"] == TRUNCATED_MESSAGE[cut]


@pytest.mark.parametrize("cut", sorted(truncations(valid_upload_body()[1])))
def test_truncated_multipart_submit_is_refused(hostile: Cluster, cut: str) -> None:
    content_type, body = valid_upload_body()
    before = payload_dirs(client_data(hostile))
    response = post(f"{hostile.clients[0].url}/submit", content_type, truncations(body)[cut])
    assert response.status_code == 400, response.text
    assert payload_dirs(client_data(hostile)) == before


def send_and_hang_up(port: int, path: str) -> None:
    """Announce a large body, send part of it, then close the connection."""
    content_type, body = valid_upload_body()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body) + 1_000_000}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body[: len(body) - 100])
        time.sleep(0.5)  # let the server start writing files before the hang-up
        sock.shutdown(socket.SHUT_RDWR)


def test_upload_cut_off_by_the_sender_leaves_nothing(hostile: Cluster) -> None:
    assert hostile.server is not None
    before = directories(server_data(hostile))
    send_and_hang_up(hostile.server.port, "/upload")
    eventually_leaves_nothing(server_data(hostile), before)
    assert httpx.get(f"{hostile.server.url}/health", timeout=30).status_code == 200


def test_submit_cut_off_by_the_sender_leaves_nothing(hostile: Cluster) -> None:
    before = payload_dirs(client_data(hostile))
    send_and_hang_up(hostile.clients[0].port, "/submit")
    assert httpx.get(f"{hostile.clients[0].url}/health", timeout=30).status_code == 200
    eventually_leaves_nothing(client_data(hostile), before)


# ---- jobs that try to leak files ----------------------------------------------------------------

# The links are made by a helper script: the validator (rightly) refuses /etc/passwd in run.sh.
MAKE_LINKS = """\
echo inside > inside.txt
mkdir -p sub
echo nested > sub/nested.txt
ln -s /etc/passwd leak
ln -s /etc/hostname leak_hostname
ln -s / root_link
ln -s ../.. up
ln -s ../state.json state_link
ln -s ../output.log log_link
ln -s "$PWD/../../.." abs_up
ln -s inside.txt ok_link
ln -s sub/nested.txt ok_nested_link
ln -s /nonexistent dangling
"""
ALLOWED = {
    "run.sh",
    "links.sh",
    "inside.txt",
    "sub/",
    "sub/nested.txt",
    "ok_link",
    "ok_nested_link",
    "ready.txt",
    ".orchestrator-skipped.txt",  # lists the links left out
}


def outside_secrets() -> list[bytes]:
    secrets_ = [Path("/etc/passwd").read_bytes()]
    with contextlib.suppress(OSError):
        secrets_.append(Path("/etc/hostname").read_bytes())
    return [secret for secret in secrets_ if secret.strip()]


def assert_only_own_files(archive: zipfile.ZipFile) -> None:
    names = set(archive.namelist())
    assert names <= ALLOWED, names - ALLOWED
    assert {"run.sh", "links.sh", "inside.txt", "sub/nested.txt"} <= names
    skipped = archive.read(".orchestrator-skipped.txt").decode()
    assert "leak\tsymlink points outside the archived directory" in skipped
    # Links inside the directory are followed, to their content.
    if "ok_link" in names:
        assert archive.read("ok_link") == b"inside\n"
    for info in archive.infolist():
        content = archive.read(info)
        for secret in outside_secrets():
            assert secret.strip() not in content, info.filename
        assert b"root:x:0:0" not in content
        assert b'"dispatch_key"' not in content  # the client's state.json


def test_result_zip_never_follows_links_out(hostile: Cluster) -> None:
    job_id = hostile.api.submit("bash links.sh\n", extra={"links.sh": MAKE_LINKS})
    body = hostile.api.wait_for(job_id, *FINAL)
    assert body["status"] == "Completed", body
    assert_only_own_files(hostile.api.download_zip(job_id))
    assert_only_own_files(hostile.api.download_partial_zip(job_id))


def test_partial_zip_never_follows_links_out(hostile: Cluster) -> None:
    script = "bash links.sh\necho ready > ready.txt\nsleep 60\n"
    job_id = hostile.api.submit(script, extra={"links.sh": MAKE_LINKS})
    hostile.api.wait_for(job_id, "Running")

    def ready() -> zipfile.ZipFile | None:
        archive = hostile.api.download_partial_zip(job_id)  # proxied from the client
        return archive if "ready.txt" in archive.namelist() else None

    archive = eventually(ready, "ready.txt in the partial ZIP")
    assert_only_own_files(archive)
    response = httpx.post(f"{hostile.api.base_url}/terminate/{job_id}", timeout=60)
    assert response.status_code == 200, response.text
    assert hostile.api.wait_for(job_id, *FINAL)["status"] == "Killed"
    assert_only_own_files(hostile.api.download_partial_zip(job_id))  # the server's copy


def test_result_over_result_max_mb_fails_the_job(hostile: Cluster) -> None:
    job_id = hostile.api.submit("head -c 3000000 /dev/zero > big.bin\necho done > done.txt\n")
    body = hostile.api.wait_for(job_id, *FINAL)
    assert body["status"] == "Failed", body
    assert "RESULT_MAX_MB" in body["message"]
    assert f"{RESULT_MAX_MB} MB" in body["message"]
    # No result ZIP on the server.
    response = httpx.get(f"{hostile.api.base_url}/download/{job_id}", timeout=30)
    assert response.headers["content-type"] == "application/json"


def test_result_just_under_result_max_mb_completes(hostile: Cluster) -> None:
    job_id = hostile.api.submit("head -c 900000 /dev/zero > big.bin\n")
    assert hostile.api.wait_for(job_id, *FINAL)["status"] == "Completed"
    assert hostile.api.download_zip(job_id).getinfo("big.bin").file_size == 900000


# ---- property: any file name --------------------------------------------------------------------

NAME_CHARACTERS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n")
NAME_PIECES = ["..", ".", "", "/", "a", "run.sh", "etc", "passwd", "\\", "ü", " ", "\0", "~"]
# multer takes a quote after a backslash as escaped, so a quoted name cannot end in one.
NAMES = st.one_of(
    st.text(NAME_CHARACTERS, max_size=30),
    st.lists(st.sampled_from(NAME_PIECES), max_size=8).map("/".join),
    st.lists(st.sampled_from(NAME_PIECES), max_size=8).map("".join),
    st.text(NAME_CHARACTERS, min_size=240, max_size=300),
).filter(lambda name: not name.endswith("\\"))


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(name=NAMES)
def test_any_upload_name_is_stored_safely_or_refused(hostile: Cluster, name: str) -> None:
    data = server_data(hostile)
    before = directories(data)
    content_type, body = multipart(upload_parts(file_part(quoted(name), b"payload\n")))
    response = post(f"{hostile.api.base_url}/upload", content_type, body)
    assert response.status_code < 500, response.text
    expected = expected_name(name)
    if response.status_code == 201:
        assert expected is not None, (name, response.text)
        job_dir = new_job_dir(hostile, before)
        stored = list((job_dir / "input").iterdir())
        assert [entry.name for entry in stored] == [expected]
        assert "/" not in stored[0].name
        assert stored[0].resolve().parent == (job_dir / "input").resolve()
        assert stored[0].read_bytes() == b"payload\n"
    else:
        assert 400 <= response.status_code < 500
        assert expected is None, (name, response.status_code, response.text)
        assert directories(data) == before
    # Never anything outside the job directories.
    assert outside_entries(hostile) == set()
    assert all(entry.is_dir() for entry in data.iterdir())
    assert os.path.commonpath([data, *data.iterdir()]) == str(data)


def test_zip_of_a_hostile_name_job_reads_back(hostile: Cluster) -> None:
    """Sanity check of the helpers above: what the property stores is what a job sees."""
    job_id = hostile.api.submit("ls -A > listing.txt\n", extra={"../up/ü name.txt": "x"})
    assert hostile.api.wait_for(job_id, *FINAL)["status"] == "Completed"
    archive = hostile.api.download_zip(job_id)
    listing = io.TextIOWrapper(archive.open("listing.txt")).read().split("\n")
    assert "ü name.txt" in listing
