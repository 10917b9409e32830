"""Uploads that are slow, stalled, cut off by a crash, numerous, or oddly named (issues 15, 16).

Each test is the repro from the issue, run against real processes: a body that streams for
longer than MAX_AGE is never taken for an orphan (server and client), a stalled body is
answered 408 and leaves nothing, too many at once are answered 503 with Retry-After, a half
upload left by `kill -9` is removed when the server starts again, control characters in a
file name are refused, and large text fields are accepted without being held in memory.
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import signal
import socket
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit import eventually
from testkit.harness import Cluster, cluster

FINAL = ("Completed", "Failed", "Invalid", "Killed")
SCRIPT = b"echo ok > out.txt\n"
STAGING_PREFIX = ".upload-"


# ---- helpers ----------------------------------------------------------------------------------


def multipart(parts: list[tuple[bytes, bytes]]) -> tuple[str, bytes]:
    boundary = secrets.token_hex(16).encode()
    body = bytearray()
    for disposition, content in parts:
        body += b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n"
        body += content + b"\r\n"
    body += b"--" + boundary + b"--\r\n"
    return f"multipart/form-data; boundary={boundary.decode()}", bytes(body)


def job_form(*files: tuple[bytes, bytes], user_id: bytes = b"1") -> tuple[str, bytes]:
    return multipart(
        [
            (b'form-data; name="user_id"', user_id),
            (b'form-data; name="service"', b"example"),
            *[(b'form-data; name="file"; filename="' + name + b'"', data) for name, data in files],
        ]
    )


def entries(path: Path) -> set[str]:
    """The directories in `path` (job, payload and staging directories)."""
    return {entry.name for entry in path.iterdir() if entry.is_dir()} if path.exists() else set()


def server_data(cl: Cluster) -> Path:
    return cl.root / "server-data"


def client_data(cl: Cluster) -> Path:
    return cl.root / "client0"


@contextlib.contextmanager
def raw_request(port: int, path: str, content_type: str, length: int) -> Iterator[socket.socket]:
    """An open HTTP/1.1 request whose body the caller sends (or does not) on the socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n"
        )
        sock.sendall(head.encode())
        yield sock
    finally:
        sock.close()


def read_response(sock: socket.socket, timeout_s: float = 60) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of the one response on `sock`."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(status_line.split()[1]), headers, rest


def send_slowly(sock: socket.socket, body: bytes, duration_s: float, pieces: int = 20) -> None:
    step = max(1, len(body) // pieces)
    for start in range(0, len(body), step):
        sock.sendall(body[start : start + step])
        time.sleep(duration_s / pieces)


def wait_until_gone(path: Path, names: set[str], timeout_s: float = 30) -> None:
    """Wait until none of `names` is in `path`; fail naming those left."""
    eventually(
        lambda: not names & entries(path),
        f"{sorted(names)} gone from {path}",
        timeout_s,
        detail=lambda: names & entries(path),
    )


def staging_dirs(cl: Cluster) -> set[str]:
    return {name for name in entries(server_data(cl)) if name.startswith(STAGING_PREFIX)}


def wait_for_status(cl: Cluster, job_id: int, timeout_s: float = 60) -> dict[str, object]:
    """The job's first final status; polled fast, since MAX_AGE here is seconds."""
    return cl.api.wait_for(job_id, *FINAL, timeout_s=timeout_s)


# ---- 15.4: retention never takes a streaming upload for an orphan ----------------------------

MAX_AGE_S = 3
SLOW_BODY_S = MAX_AGE_S * 2 + 1


@pytest.fixture(scope="module")
def short_retention(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    retention = {"MAX_AGE": str(MAX_AGE_S), "CLEANER_INTERVAL": "0.5"}
    with cluster(
        tmp_path_factory.mktemp("retention"), server_env=retention, client_env=retention
    ) as running:
        yield running


def test_upload_streaming_longer_than_max_age_is_kept(short_retention: Cluster) -> None:
    assert short_retention.server is not None
    content_type, body = job_form((b"run.sh", SCRIPT), (b"data.bin", b"d" * 200_000))
    with raw_request(short_retention.server.port, "/upload", content_type, len(body)) as sock:
        send_slowly(sock, body, SLOW_BODY_S)
        status, _, answer = read_response(sock)
    assert status == 201, answer
    job_id = json.loads(answer)["id"]
    final = wait_for_status(short_retention, job_id)
    assert final["status"] == "Completed", final


def test_submit_streaming_longer_than_max_age_is_kept(short_retention: Cluster) -> None:
    client = short_retention.clients[0]
    content_type, body = multipart(
        [
            (b'form-data; name="file"; filename="run.sh"', SCRIPT),
            (b'form-data; name="file"; filename="data.bin"', b"d" * 200_000),
        ]
    )
    with raw_request(client.port, "/submit", content_type, len(body)) as sock:
        send_slowly(sock, body, SLOW_BODY_S)
        status, _, answer = read_response(sock)
    assert status == 200, answer
    payload_id = json.loads(answer)["id"]

    def zipped() -> httpx.Response | None:
        response = httpx.get(f"{client.url}/retrieve/{payload_id}", timeout=30)
        if response.headers["content-type"] == "application/zip":
            return response
        assert response.json()["status"] in {"Prepared", "Running"}, response.text
        return None

    response = eventually(zipped, f"payload {payload_id} to complete")
    assert "out.txt" in zipfile.ZipFile(io.BytesIO(response.content)).namelist()


# ---- 15.5: stalled uploads, too many uploads, half uploads after a crash ---------------------

IDLE_S = 2
PER_CLIENT = 10


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(
        tmp_path,
        server_env={"UPLOAD_IDLE_TIMEOUT": str(IDLE_S), "UPLOAD_MAX_PER_CLIENT": str(PER_CLIENT)},
        client_env={"UPLOAD_IDLE_TIMEOUT": str(IDLE_S)},
    ) as running:
        yield running


def stalled_body() -> tuple[str, bytes, int]:
    """A job form of which only the first KiB will be sent; and the length announced."""
    content_type, body = job_form((b"run.sh", SCRIPT), (b"data.bin", b"x" * 100_000))
    return content_type, body[:1024], len(body)


def test_stalled_uploads_get_408_and_leave_nothing(guarded: Cluster) -> None:
    assert guarded.server is not None
    before = entries(server_data(guarded))
    content_type, first_kib, length = stalled_body()
    with contextlib.ExitStack() as stack:
        socks = []
        for _ in range(50):
            sock = stack.enter_context(
                raw_request(guarded.server.port, "/upload", content_type, length)
            )
            sock.sendall(first_kib)
            socks.append(sock)
        answers = [read_response(sock) for sock in socks]
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [408] * PER_CLIENT + [503] * (50 - PER_CLIENT), statuses
    for status, headers, answer in answers:
        body = json.loads(answer)
        assert list(body) == ["id", "status", "message"]
        assert body["id"] == 0
        if status == 503:
            assert int(headers["retry-after"]) > 0
            assert "Too many uploads" in body["message"]
        else:
            assert body["message"] == f"No data received for {IDLE_S} s; upload abandoned"
    wait_until_gone(server_data(guarded), entries(server_data(guarded)) - before)
    # Slots are free again.
    assert guarded.api.upload({"run.sh": SCRIPT}).status_code == 201


def test_stalled_submit_gets_408_and_leaves_nothing(guarded: Cluster) -> None:
    client = guarded.clients[0]
    before = entries(client_data(guarded))
    content_type, body = multipart([(b'form-data; name="file"; filename="run.sh"', b"x" * 5000)])
    with raw_request(client.port, "/submit", content_type, len(body)) as sock:
        sock.sendall(body[:1024])
        status, _, answer = read_response(sock)
    assert status == 408, answer
    assert json.loads(answer)["id"] == 0
    wait_until_gone(client_data(guarded), entries(client_data(guarded)) - before)


def test_half_upload_left_by_a_crash_is_removed_at_start(guarded: Cluster) -> None:
    server = guarded.server
    assert server is not None
    content_type, first_kib, length = stalled_body()
    with raw_request(server.port, "/upload", content_type, length) as sock:
        sock.sendall(first_kib)
        half = eventually(
            lambda: staging_dirs(guarded),
            "the upload's staging directory",
            30,
            detail=lambda: entries(server_data(guarded)),
        )
        server.stop(signal.SIGKILL)
    assert staging_dirs(guarded) == half  # the crash left it behind
    server.start()
    wait_until_gone(server_data(guarded), half)


# ---- 15.6: control characters in file names ---------------------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("plain")) as running:
        yield running


@pytest.mark.parametrize(
    ("name", "code"),
    [
        (b"a\nb.txt", "U+000A"),
        (b"tab\there", "U+0009"),
        (b"esc\x1b[31m", "U+001B"),
        (b"del\x7f", "U+007F"),
        (b"\x01", "U+0001"),
    ],
)
def test_control_characters_in_file_names_are_refused(
    plain: Cluster, name: bytes, code: str
) -> None:
    content_type, body = job_form((b"run.sh", SCRIPT), (name, b"x"))
    before = entries(server_data(plain))
    response = httpx.post(
        f"{plain.api.base_url}/upload", content=body, headers={"content-type": content_type}
    )
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert "control character" in message
    assert code in message
    assert entries(server_data(plain)) == before


def test_percent_encoded_names_are_ordinary(plain: Cluster) -> None:
    job_id = plain.api.submit("ls > listing.txt\n", extra={"a%0Ab.txt": "x"})
    assert wait_for_status(plain, job_id)["status"] == "Completed"
    listed = plain.api.download_zip(job_id).read("listing.txt").decode().split()
    assert "a%0Ab.txt" in listed


# ---- 16.2: large text fields ------------------------------------------------------------------


def test_three_mib_text_field_is_accepted(plain: Cluster) -> None:
    content_type, body = multipart(
        [
            (b'form-data; name="user_id"', b"1"),
            (b'form-data; name="params"', b"p" * (3 * 1024 * 1024)),
            (b'form-data; name="service"', b"example"),
            (b'form-data; name="file"; filename="run.sh"', SCRIPT),
        ]
    )
    response = httpx.post(
        f"{plain.api.base_url}/upload",
        content=body,
        headers={"content-type": content_type},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    assert wait_for_status(plain, response.json()["id"])["status"] == "Completed"


@pytest.mark.parametrize(
    ("field", "message"),
    [("user_id", "Invalid user_id, should be a number"), ("service", "Invalid service")],
)
def test_huge_user_id_or_service_is_invalid(plain: Cluster, field: str, message: str) -> None:
    values = {"user_id": b"1", "service": b"example", field: b"1" * (2 * 1024 * 1024)}
    content_type, body = multipart(
        [
            *[(f'form-data; name="{name}"'.encode(), value) for name, value in values.items()],
            (b'form-data; name="file"; filename="run.sh"', SCRIPT),
        ]
    )
    before = entries(server_data(plain))
    response = httpx.post(
        f"{plain.api.base_url}/upload",
        content=body,
        headers={"content-type": content_type},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    assert response.json()["message"] == message
    assert entries(server_data(plain)) == before
