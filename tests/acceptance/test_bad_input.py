"""Malformed requests get the documented 4xx, leave nothing on disk, and break nothing.

One cluster for the whole module, with a 1 MiB upload limit so the 413 path is cheap to hit.
Every rejection is checked against the server's (or client's) DATA_PATH: the set of
directories must be the same before and after (SPEC §2: no orphan directories).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.harness import Cluster, cluster

LIMIT_MB = 1
FINAL = {"Completed", "Failed", "Invalid", "Killed", "Cleaned"}
SCRIPT = b"echo ok > out.txt\n"
BAD_BOUNDARY = "Invalid `boundary` for `multipart/form-data` request"
PARSE_ERROR = "Error parsing `multipart/form-data` request"

#: Jobs accepted by this module's tests; waited for before checking the client's DATA_PATH.
accepted: list[int] = []


@pytest.fixture(scope="module")
def cl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(
        tmp_path_factory.mktemp("bad-input"), server_env={"UPLOAD_MAX_MB": str(LIMIT_MB)}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def server_url(cl: Cluster) -> str:
    assert cl.server is not None
    return cl.server.url


def subdirectories(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {entry.name for entry in path.iterdir() if entry.is_dir()}


@contextlib.contextmanager
def leaves_nothing(directory: Path) -> Iterator[None]:
    before = subdirectories(directory)
    yield
    after = subdirectories(directory)
    assert after == before, (
        f"left behind: {sorted(after - before)}; removed: {sorted(before - after)}"
    )


def server_data(cl: Cluster) -> Path:
    return cl.root / "server-data"


def client_data(cl: Cluster) -> Path:
    return cl.root / "client0"


def multipart(parts: list[tuple[bytes, bytes]]) -> tuple[str, bytes]:
    """A raw multipart body from (Content-Disposition value, content) pairs."""
    boundary = secrets.token_hex(16)
    body = bytearray()
    for disposition, content in parts:
        body += b"--" + boundary.encode() + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n"
        body += content + b"\r\n"
    body += b"--" + boundary.encode() + b"--\r\n"
    return f"multipart/form-data; boundary={boundary}", bytes(body)


def form(fields: dict[str, str], files: dict[str, bytes] | None = None) -> tuple[str, bytes]:
    parts = [
        (f'form-data; name="{name}"'.encode(), value.encode()) for name, value in fields.items()
    ]
    for name, content in (files if files is not None else {"run.sh": SCRIPT}).items():
        parts.append((f'form-data; name="file"; filename="{name}"'.encode(), content))
    return multipart(parts)


def post_upload(server_url: str, content_type: str | None, body: Any) -> httpx.Response:
    headers = {"content-type": content_type} if content_type is not None else {}
    return httpx.post(f"{server_url}/upload", content=body, headers=headers, timeout=60)


def assert_json_error(
    response: httpx.Response, status_code: int, message: str | None = None
) -> str:
    assert response.status_code == status_code, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["id", "status", "message"], body
    assert body["id"] == 0
    assert body["status"] == "Unknown"
    if message is not None:
        assert body["message"] == message
    assert isinstance(body["message"], str)
    assert body["message"]
    return str(body["message"])


def reject_upload(
    cl: Cluster, server_url: str, fields: dict[str, str], status_code: int, message: str
) -> None:
    content_type, body = form(fields)
    with leaves_nothing(server_data(cl)):
        response = post_upload(server_url, content_type, body)
    assert_json_error(response, status_code, message)


def accept_upload(cl: Cluster, server_url: str, fields: dict[str, str]) -> int:
    content_type, body = form(fields)
    response = post_upload(server_url, content_type, body)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    assert isinstance(job_id, int)
    assert job_id > 0
    accepted.append(job_id)
    return job_id


def settle(cl: Cluster, timeout_s: float = 60.0) -> None:
    """Wait until every job this module queued is final, so no dispatch is in flight."""
    for job_id in accepted:
        cl.api.wait_for(job_id, *FINAL, timeout_s=timeout_s)


# ---- /upload form fields ----------------------------------------------------------------------


def test_missing_user_id(cl: Cluster, server_url: str) -> None:
    reject_upload(cl, server_url, {"service": "example"}, 400, "Missing user_id field")


@pytest.mark.parametrize(
    "user_id", ["abc", " 1", "1 ", "1.0", "", "0x1", "1_000", "2147483648", "１"]
)
def test_invalid_user_id(cl: Cluster, server_url: str, user_id: str) -> None:
    reject_upload(
        cl,
        server_url,
        {"user_id": user_id, "service": "example"},
        400,
        "Invalid user_id, should be a number",
    )


@pytest.mark.parametrize("user_id", ["+5", "-5", "007", "-2147483648"])
def test_rust_i32_user_ids_are_accepted(cl: Cluster, server_url: str, user_id: str) -> None:
    job_id = accept_upload(cl, server_url, {"user_id": user_id, "service": "example"})
    assert cl.api.wait_for(job_id, *FINAL)["status"] == "Completed"


def test_missing_service(cl: Cluster, server_url: str) -> None:
    reject_upload(cl, server_url, {"user_id": "1"}, 400, "Missing service field")


@pytest.mark.parametrize("service", ["nope", "", "example ", "exam"])
def test_unknown_service(cl: Cluster, server_url: str, service: str) -> None:
    reject_upload(cl, server_url, {"user_id": "1", "service": service}, 400, "Invalid service")


def test_user_id_is_checked_before_service(cl: Cluster, server_url: str) -> None:
    reject_upload(
        cl,
        server_url,
        {"user_id": "x", "service": "nope"},
        400,
        "Invalid user_id, should be a number",
    )


def test_service_is_case_insensitive(cl: Cluster, server_url: str) -> None:
    job_id = accept_upload(cl, server_url, {"user_id": "1", "service": "EXAMPLE"})
    assert cl.api.wait_for(job_id, *FINAL)["status"] == "Completed"


# ---- /upload body framing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        None,
        "multipart/form-data",
        "multipart/mixed; boundary=abc",
        "text/plain; boundary=abc",
    ],
)
def test_not_multipart(cl: Cluster, server_url: str, content_type: str | None) -> None:
    with leaves_nothing(server_data(cl)):
        response = post_upload(server_url, content_type, b'{"user_id": 1, "service": "example"}')
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == BAD_BOUNDARY


def test_truncated_multipart(cl: Cluster, server_url: str) -> None:
    content_type, body = form({"user_id": "1", "service": "example"}, {"run.sh": b"x" * 50_000})
    truncated = body[: len(body) - 20_000]
    with leaves_nothing(server_data(cl)):
        response = post_upload(server_url, content_type, truncated)
    assert PARSE_ERROR in assert_json_error(response, 400)


def test_garbage_after_the_boundary(cl: Cluster, server_url: str) -> None:
    content_type, _ = form({})
    boundary = content_type.split("boundary=")[1]
    body = f"--{boundary}\r\nthis is not a header line at all\r\n\r\n".encode() + b"\x00" * 100
    with leaves_nothing(server_data(cl)):
        response = post_upload(server_url, content_type, body)
    assert PARSE_ERROR in assert_json_error(response, 400)


def _big_form() -> tuple[str, bytes]:
    return form({"user_id": "1", "service": "example"}, {"big.bin": b"x" * (2 * 1024 * 1024)})


def test_body_over_the_limit_with_content_length(cl: Cluster, server_url: str) -> None:
    content_type, body = _big_form()
    with leaves_nothing(server_data(cl)):
        response = post_upload(server_url, content_type, body)
    assert response.request.headers["content-length"] == str(len(body))
    message = assert_json_error(response, 413)
    assert "limit" in message
    assert str(LIMIT_MB * 1024 * 1024) in message


def test_body_over_the_limit_chunked(cl: Cluster, server_url: str) -> None:
    content_type, body = _big_form()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    with leaves_nothing(server_data(cl)):
        response = post_upload(server_url, content_type, chunks())
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    message = assert_json_error(response, 413)
    assert "limit" in message
    assert str(LIMIT_MB * 1024 * 1024) in message


def test_body_just_under_the_limit_is_accepted(cl: Cluster, server_url: str) -> None:
    content_type, body = form(
        {"user_id": "1", "service": "example"},
        {"run.sh": SCRIPT, "data.bin": b"y" * (LIMIT_MB * 1024 * 1024 - 4096)},
    )
    assert len(body) < LIMIT_MB * 1024 * 1024
    response = post_upload(server_url, content_type, body)
    assert response.status_code == 201, response.text
    accepted.append(response.json()["id"])


@pytest.mark.parametrize(
    "filename",
    [b"a\x00b.txt", b"x" * 300, b"dir/" + b"y" * 300],
    ids=["nul", "300-bytes", "nested-300-bytes"],
)
def test_unsafe_file_names(cl: Cluster, server_url: str, filename: bytes) -> None:
    content_type, body = multipart(
        [
            (b'form-data; name="user_id"', b"1"),
            (b'form-data; name="service"', b"example"),
            (b'form-data; name="file"; filename="run.sh"', SCRIPT),
            (b'form-data; name="file"; filename="' + filename + b'"', b"content"),
        ]
    )
    with leaves_nothing(server_data(cl)):
        response = post_upload(server_url, content_type, body)
    assert_json_error(response, 400)


# ---- bad path ids ------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/download/{}", "/download_partial/{}", "/terminate/{}"])
@pytest.mark.parametrize("raw", ["abc", "-1", "4294967296", "1.0", "0x1"])
def test_bad_path_ids(server_url: str, route: str, raw: str) -> None:
    method = "POST" if route.startswith("/terminate") else "GET"
    response = httpx.request(method, server_url + route.format(raw), timeout=30)
    assert response.status_code == 400
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == f"Invalid URL: Cannot parse `{raw}` to a `u32`"


@pytest.mark.parametrize("raw", ["0", "+4000000", "4294967295"])
def test_edge_path_ids_parse(server_url: str, raw: str) -> None:
    response = httpx.get(f"{server_url}/download/{raw}", timeout=30)
    # Parsed as a u32 (so not a 400); these jobs simply do not exist.
    assert response.status_code == 404
    expected = int(raw)
    assert response.json()["message"] == f"Job {expected} not found in the database"


# ---- the client's /submit ---------------------------------------------------------------------


def _client_payload_dirs(cl: Cluster) -> set[str]:
    return subdirectories(client_data(cl))


@pytest.mark.parametrize("content_type", ["application/json", None])
def test_client_submit_not_multipart(cl: Cluster, content_type: str | None) -> None:
    settle(cl)
    headers = {"content-type": content_type} if content_type is not None else {}
    before = _client_payload_dirs(cl)
    response = httpx.post(f"{cl.clients[0].url}/submit", content=b"{}", headers=headers, timeout=30)
    assert response.status_code == 400
    assert response.text == BAD_BOUNDARY
    assert _client_payload_dirs(cl) == before


def test_client_submit_truncated_multipart(cl: Cluster) -> None:
    settle(cl)
    content_type, body = multipart(
        [(b'form-data; name="run.sh"; filename="run.sh"', b"x" * 10_000)]
    )
    before = _client_payload_dirs(cl)
    response = httpx.post(
        f"{cl.clients[0].url}/submit",
        content=body[:5_000],
        headers={"content-type": content_type},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.text == '{"id":0,"input":{},"status":"Unknown","loc":"","pid":0,"killed":false}'
    assert _client_payload_dirs(cl) == before


def test_client_submit_nul_file_name(cl: Cluster) -> None:
    settle(cl)
    content_type, body = multipart([(b'form-data; name="run.sh"; filename="r\x00un.sh"', SCRIPT)])
    before = _client_payload_dirs(cl)
    response = httpx.post(
        f"{cl.clients[0].url}/submit",
        content=body,
        headers={"content-type": content_type},
        timeout=30,
    )
    assert response.status_code == 400
    assert _client_payload_dirs(cl) == before


# ---- and everything still works -----------------------------------------------------------


def test_a_normal_job_still_completes(cl: Cluster, server_url: str) -> None:
    job_id = cl.api.submit("echo still alive > alive.txt\n")
    assert cl.api.wait_for(job_id, *FINAL)["status"] == "Completed"
    assert cl.api.download_zip(job_id).read("alive.txt") == b"still alive\n"
    health = httpx.get(f"{server_url}/health", timeout=30)
    assert health.status_code == 200
    settle(cl)
    for node in [cl.server, *cl.clients]:
        assert node is not None
        assert node.process is not None
        assert node.process.poll() is None
        assert "Traceback" not in node.log()
    # Every job the module accepted is final; none is stuck.
    for job_id in accepted:
        assert cl.api.status(job_id)["status"] in FINAL
