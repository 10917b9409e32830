"""Wire compatibility with the original Rust job-orchestrator (SPEC §1, UPSTREAM §2-§5).

Two directions:

* our client driven exactly the way the Rust server drives it (reqwest multipart bodies,
  plain `/retrieve/{id}` polling, answers parsed as strictly as serde would);
* our server checked the way a Rust peer sees it: its user API byte for byte, and its
  dispatch/poll/partial/kill calls against a small stand-in for the Rust client that answers
  the way the original does (full six-field Payload JSON with `input` byte arrays).
"""

from __future__ import annotations

import io
import json
import re
import secrets
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from testkit import eventually
from testkit.harness import Cluster, Node, cluster, free_port

STATUSES = {
    "Queued",
    "Processing",
    "Submitted",
    "Prepared",
    "Running",
    "Completed",
    "Failed",
    "Invalid",
    "Unknown",
    "Locked",
    "Killed",
    "Cleaned",
}
PAYLOAD_KEYS = ["id", "input", "status", "loc", "pid", "killed"]
STATUS_BODY_KEYS = ["id", "status", "message"]
U32_MAX = 2**32 - 1
EMPTY_PAYLOAD = '{"id":0,"input":{},"status":"Unknown","loc":"","pid":0,"killed":false}'
TIMEOUT_S = 60.0


# ---- helpers ---------------------------------------------------------------------------------

U32_SCHEMA = {"type": "integer", "format": "int32", "minimum": 0}


def id_parameter(description: str) -> dict[str, Any]:
    """The `{id}` path parameter as utoipa 5 documents `("id" = u32, Path, ...)`."""
    return {
        "name": "id",
        "in": "path",
        "description": description,
        "required": True,
        "schema": U32_SCHEMA,
    }


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate JSON keys: {keys}"
    return dict(pairs)


def strict_json(response: httpx.Response, keys: list[str]) -> dict[str, Any]:
    """Parse a JSON answer as a serde struct would see it: exact keys, order, compact text."""
    assert response.headers.get("content-type") == "application/json", response.headers
    text = response.text
    body = json.loads(text, object_pairs_hook=_unique_keys)
    assert isinstance(body, dict), text
    assert list(body) == keys, text
    # serde_json's compact form: no spaces, no trailing newline, non-ASCII unescaped.
    assert text == json.dumps(body, separators=(",", ":"), ensure_ascii=False), text
    return body


def is_u32(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= U32_MAX


def rust_payload(response: httpx.Response) -> dict[str, Any]:
    """What `serde_json::from_str::<Payload>` accepts: all six fields, with their Rust types."""
    payload = strict_json(response, PAYLOAD_KEYS)
    assert is_u32(payload["id"]), payload
    assert isinstance(payload["input"], dict), payload
    for name, content in payload["input"].items():
        assert isinstance(name, str)
        assert isinstance(content, list), payload
        assert all(is_u32(byte) and byte <= 255 for byte in content), payload
    assert payload["status"] in STATUSES, payload
    assert isinstance(payload["loc"], str), payload
    assert is_u32(payload["pid"]), payload
    assert isinstance(payload["killed"], bool), payload
    return payload


def status_body(response: httpx.Response) -> dict[str, Any]:
    body = strict_json(response, STATUS_BODY_KEYS)
    assert is_u32(body["id"]), body
    assert body["status"] in STATUSES, body
    assert isinstance(body["message"], str), body
    return body


def reqwest_multipart(parts: list[tuple[str, bytes]]) -> tuple[dict[str, str], bytes]:
    """A body as reqwest 0.12 builds it: `<16hex>-<16hex>-<16hex>-<16hex>` boundary, one
    Content-Disposition header per part, no part Content-Type."""
    boundary = "-".join(secrets.token_hex(8) for _ in range(4))
    body = bytearray()
    for disposition, content in parts:
        body += f"--{boundary}\r\n".encode()
        body += f"Content-Disposition: {disposition}\r\n\r\n".encode()
        body += content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    headers = {
        "content-type": f"multipart/form-data; boundary={boundary}",
        "content-length": str(len(body)),
        "accept": "*/*",
    }
    return headers, bytes(body)


def rust_submit(client_url: str, script: str, extra: bytes = b"extra\n") -> dict[str, Any]:
    headers, body = reqwest_multipart(
        [
            ('form-data; name="run.sh"; filename="run.sh"', script.encode()),
            ("form-data; name*=utf-8''sub%2Fx.txt; filename=\"x.txt\"", extra),
        ]
    )
    response = httpx.post(f"{client_url}/submit", content=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return rust_payload(response)


def rust_retrieve(client_url: str, payload_id: int) -> httpx.Response:
    """GET /retrieve/{id} with no query string at all, as the Rust getter sends it."""
    response = httpx.get(f"{client_url}/retrieve/{payload_id}", timeout=30)
    assert response.request.url.query == b""
    return response


def retrieve_until(client_url: str, payload_id: int, status: str) -> dict[str, Any]:

    def reached() -> dict[str, Any] | None:
        response = rust_retrieve(client_url, payload_id)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] != "application/zip", "finished too early"
        payload = rust_payload(response)
        assert payload["status"] in {status, "Prepared", "Running"}, payload
        return payload if payload["status"] == status else None

    return eventually(reached, f"payload {payload_id} to reach {status}", TIMEOUT_S)


def zip_names(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert archive.testzip() is None
        return {info.filename: archive.read(info) for info in archive.infolist()}


def make_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


# ---- our client, driven like the Rust server drives it ---------------------------------------


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("wire")) as running:
        yield running


@pytest.fixture(scope="module")
def client_url(ours: Cluster) -> str:
    return ours.clients[0].url


def test_submit_answers_like_the_rust_client(client_url: str) -> None:
    payload = rust_submit(client_url, "echo hello > out.txt\n")
    assert payload["status"] == "Prepared"
    assert payload["id"] > 0
    assert payload["pid"] == 0
    assert payload["killed"] is False
    assert payload["loc"]


def test_submit_then_plain_retrieve_returns_the_zip(client_url: str) -> None:
    payload = rust_submit(client_url, "echo hello from run.sh > out.txt\n", b"nested input\n")
    payload_id = payload["id"]

    def zipped() -> httpx.Response | None:
        response = rust_retrieve(client_url, payload_id)
        assert response.status_code == 200, response.text
        if response.headers["content-type"] == "application/zip":
            return response
        # Every intermediate answer must parse as a Payload, and not be a final failure.
        assert rust_payload(response)["status"] in {"Prepared", "Running"}, response.text
        return None

    response = eventually(zipped, "a ZIP from /retrieve", TIMEOUT_S)
    files = zip_names(response.content)
    assert files["out.txt"] == b"hello from run.sh\n"
    # The original stores a part under its sanitised file name, not under its field name.
    assert files["x.txt"] == b"nested input\n"
    assert "sub/x.txt" not in files
    assert files["run.sh"] == b"echo hello from run.sh > out.txt\n"
    # Asking again returns the same result.
    again = rust_retrieve(client_url, payload_id)
    assert again.headers["content-type"] == "application/zip"
    assert zip_names(again.content)["out.txt"] == b"hello from run.sh\n"


def test_running_payload_partial_and_kill(client_url: str) -> None:
    payload = rust_submit(client_url, "echo early > early.txt\nsleep 60\necho late > late.txt\n")
    payload_id = payload["id"]
    running = retrieve_until(client_url, payload_id, "Running")
    assert running["id"] == payload_id
    assert running["pid"] > 0
    assert running["killed"] is False
    assert running["input"] == {}

    def partial_has_early() -> dict[str, bytes] | None:
        response = httpx.get(f"{client_url}/retrieve_partial/{payload_id}", timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/zip"
        files = zip_names(response.content)
        return files if "early.txt" in files else None

    files = eventually(partial_has_early, "early.txt in the partial ZIP")
    assert files["early.txt"] == b"early\n"
    assert "late.txt" not in files
    # A partial download does not finish the payload.
    assert rust_payload(rust_retrieve(client_url, payload_id))["status"] == "Running"

    killed = httpx.post(f"{client_url}/kill/{payload_id}", timeout=30)
    assert killed.status_code == 200
    assert killed.content == b""
    final = retrieve_until(client_url, payload_id, "Killed")
    assert final["id"] == payload_id


def test_retrieve_errors(client_url: str) -> None:
    missing = httpx.get(f"{client_url}/retrieve/999999", timeout=30)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert missing.text == EMPTY_PAYLOAD
    rust_payload(missing)

    bad = httpx.get(f"{client_url}/retrieve/abc", timeout=30)
    assert bad.status_code == 400
    assert bad.headers["content-type"] == "text/plain; charset=utf-8"
    assert bad.text == "Invalid URL: Cannot parse `abc` to a `u32`"

    partial = httpx.get(f"{client_url}/retrieve_partial/999999", timeout=30)
    assert partial.status_code == 404
    assert partial.text == EMPTY_PAYLOAD


def test_kill_unknown_payload(client_url: str) -> None:
    response = httpx.post(f"{client_url}/kill/999999", timeout=30)
    assert response.status_code == 404
    assert response.text == EMPTY_PAYLOAD


def test_load_is_a_bare_number(client_url: str) -> None:
    response = httpx.get(f"{client_url}/load", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert re.fullmatch(r"[0-9]+(\.[0-9]+)?", response.text), response.text
    value = json.loads(response.text)
    assert isinstance(value, int | float)
    assert not isinstance(value, bool)
    assert 0 <= value <= 100


@pytest.mark.parametrize("node", ["client", "server"])
def test_health_ping_and_framework_conventions(ours: Cluster, node: str) -> None:
    assert ours.server is not None
    url = ours.clients[0].url if node == "client" else ours.server.url
    health = httpx.get(f"{url}/health", timeout=30)
    assert health.status_code == 200
    assert health.headers["content-type"] == "application/json"
    assert health.text == '{"status":"ok","database":"ok"}'

    ping = httpx.get(f"{url}/", timeout=30)
    assert ping.status_code == 200
    assert ping.headers["content-type"] == "application/json"
    assert ping.text == '{"message":"pong"}'

    head = httpx.head(f"{url}/health", timeout=30)
    assert head.status_code == 200
    assert head.content == b""

    unknown = httpx.get(f"{url}/no/such/route", timeout=30)
    assert unknown.status_code == 404
    assert unknown.content == b""

    post_route = "/submit" if node == "client" else "/upload"
    wrong = httpx.get(f"{url}{post_route}", timeout=30)
    assert wrong.status_code == 405
    assert wrong.content == b""
    assert "POST" in wrong.headers["allow"]

    get_route = "/retrieve/1" if node == "client" else "/download/1"
    wrong_get = httpx.post(f"{url}{get_route}", timeout=30)
    assert wrong_get.status_code == 405
    assert wrong_get.content == b""
    assert "GET" in wrong_get.headers["allow"]


@pytest.mark.parametrize("node", ["client", "server"])
def test_no_trailing_slash_normalisation(ours: Cluster, node: str) -> None:
    assert ours.server is not None
    url = ours.clients[0].url if node == "client" else ours.server.url
    route = "/retrieve/1/" if node == "client" else "/download/1/"
    response = httpx.get(f"{url}{route}", timeout=30)
    assert response.status_code == 404
    assert response.content == b""


# ---- our server's user API, byte for byte ----------------------------------------------------


def upload_raw(ours: Cluster, files: dict[str, bytes]) -> httpx.Response:
    return ours.api.upload(files)


def test_upload_answer_is_exact(ours: Cluster) -> None:
    response = upload_raw(ours, {"run.sh": b"echo done > done.txt\n"})
    assert response.status_code == 201
    body = status_body(response)
    job_id = body["id"]
    assert job_id > 0
    assert (
        response.text
        == f'{{"id":{job_id},"status":"Queued","message":"Job successfully uploaded"}}'
    )
    ours.api.wait_for(job_id, "Completed")
    assert ours.api.download_zip(job_id).read("done.txt") == b"done\n"


def test_download_of_active_job_is_a_status_body(ours: Cluster) -> None:
    assert ours.server is not None
    response = upload_raw(ours, {"run.sh": b"sleep 60\n"})
    assert response.status_code == 201
    job_id = response.json()["id"]
    seen: list[str] = []
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        assert time.monotonic() < deadline, f"job never ran; saw {seen}"
        answer = httpx.get(f"{ours.server.url}/download/{job_id}", timeout=30)
        assert answer.status_code == 200
        body = status_body(answer)
        assert body["id"] == job_id
        seen.append(body["status"])
        assert body["status"] in {"Queued", "Processing", "Submitted", "Prepared", "Running"}, body
        if body["status"] == "Running":
            assert answer.text == f'{{"id":{job_id},"status":"Running","message":""}}'
            break
        time.sleep(0.05)
    terminated = httpx.post(f"{ours.server.url}/terminate/{job_id}", timeout=60)
    assert terminated.status_code == 200, terminated.text
    assert status_body(terminated)["message"] == "job terminated"
    assert ours.api.wait_for(job_id, "Killed")["status"] == "Killed"


def test_download_unknown_job(ours: Cluster) -> None:
    assert ours.server is not None
    response = httpx.get(f"{ours.server.url}/download/999", timeout=30)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert (
        response.text == '{"id":0,"status":"Unknown","message":"Job 999 not found in the database"}'
    )
    for route, method in [("/download_partial/999", "GET"), ("/terminate/999", "POST")]:
        other = httpx.request(method, f"{ours.server.url}{route}", timeout=30)
        assert other.status_code == 404, route
        assert (
            other.text
            == '{"id":0,"status":"Unknown","message":"Job 999 not found in the database"}'
        )


def test_quote_in_a_file_name_survives_dispatch(ours: Cluster) -> None:
    assert ours.server is not None
    headers, body = reqwest_multipart(
        [
            ('form-data; name="user_id"', b"1"),
            ('form-data; name="service"', b"example"),
            ('form-data; name="file"; filename="run.sh"', b"ls > listing.txt\n"),
            ('form-data; name="file"; filename="q\\"uote.txt"', b"quoted\n"),
        ]
    )
    response = httpx.post(f"{ours.server.url}/upload", content=body, headers=headers, timeout=30)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    assert ours.api.wait_for(job_id, "Completed", "Failed", "Invalid")["status"] == "Completed"
    archive = ours.api.download_zip(job_id)
    # The script saw the file under the name the user gave it.
    assert archive.read("listing.txt").decode().split() == ["listing.txt", 'q"uote.txt', "run.sh"]
    assert archive.read('q"uote.txt') == b"quoted\n"


def test_swagger_and_openapi(ours: Cluster) -> None:
    assert ours.server is not None
    url = ours.server.url
    redirect = httpx.get(f"{url}/swagger", timeout=30)
    assert redirect.status_code == 303
    assert redirect.headers["location"] == "/swagger/"

    page = httpx.get(f"{url}/swagger/", timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/api-docs/openapi.json" in page.text

    document = httpx.get(f"{url}/api-docs/openapi.json", timeout=30)
    assert document.status_code == 200
    assert document.headers["content-type"] == "application/json"
    spec = document.json()
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] == "job-orchestrator"
    assert spec["openapi"] == "3.1.0"
    paths = spec["paths"]
    assert "post" in paths["/upload"]
    assert "multipart/form-data" in paths["/upload"]["post"]["requestBody"]["content"]
    # What the original's utoipa document says (u32: int32 with minimum 0, no maximum).
    for route, method in [
        ("/download/{id}", "get"),
        ("/download_partial/{id}", "get"),
        ("/terminate/{id}", "post"),
    ]:
        assert list(paths[route]) == [method]
        # The original's id parameter; /download/{id} adds our optional `wait` after it.
        parameters = paths[route][method]["parameters"]
        assert parameters[0] == id_parameter("Job identifier"), route
        assert [p["name"] for p in parameters[1:]] == (
            ["wait"] if route == "/download/{id}" else []
        )
        assert paths[route][method]["tags"] == ["files"]
        # Ids that are not a u32 (out of range too) get axum's plain-text 400, documented.
        assert "text/plain" in paths[route][method]["responses"]["400"]["content"]
    assert paths["/health"]["get"]["tags"] == ["health"]
    health = paths["/health"]["get"]["responses"]
    assert health["200"]["content"]["application/json"]["schema"] == ref("Health")
    assert "503" in health
    assert spec["tags"] == [
        {"name": "files", "description": "File management endpoints"},
        {"name": "health", "description": "Health check endpoints"},
    ]
    schemas = spec["components"]["schemas"]
    assert schemas["Job"] == {
        "type": "object",
        "required": ["id", "user_id", "service", "status", "loc", "dest_id"],
        "properties": {
            "id": U32_SCHEMA,
            "user_id": {"type": "integer", "format": "int32"},
            "service": {"type": "string"},
            "status": ref("Status"),
            "loc": {"type": "string"},
            "dest_id": U32_SCHEMA,
        },
    }
    assert schemas["Health"] == {
        "type": "object",
        "required": ["status", "database"],
        "properties": {"status": {"type": "string"}, "database": {"type": "string"}},
    }
    assert schemas["StatusBody"] == {
        "type": "object",
        "required": ["id", "status", "message"],
        "properties": {"id": U32_SCHEMA, "status": ref("Status"), "message": {"type": "string"}},
    }
    assert schemas["Status"]["type"] == "string"
    assert set(schemas["Status"]["enum"]) == STATUSES
    # FastAPI's 422 is never sent (a bad id is axum's 400), so it is not documented either.
    assert "HTTPValidationError" not in schemas
    for route, operations in paths.items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], (method, route)


def test_swagger_ui_needs_no_internet(ours: Cluster) -> None:
    """Every file of the page comes from our server: on an internal network it still renders."""
    assert ours.server is not None
    url = ours.server.url
    page = httpx.get(f"{url}/swagger/", timeout=30).text
    assert "http://" not in page
    assert "https://" not in page
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    kinds = {"js": "javascript", "css": "text/css", "png": "image/png"}
    assert sorted(asset.rsplit(".", 1)[-1] for asset in assets) == sorted(kinds)
    bodies = {}
    for asset in assets:
        assert asset.startswith("/swagger/"), asset
        response = httpx.get(f"{url}{asset}", timeout=30)
        assert response.status_code == 200, asset
        assert kinds[asset.rsplit(".", 1)[-1]] in response.headers["content-type"], asset
        bodies[asset.rsplit(".", 1)[-1]] = response.content
    assert b"SwaggerUIBundle" in bodies["js"]
    # Swagger UI 4 refuses our `openapi: 3.1.0` document ("3.0.n only"); 5 accepts 3.1.x.
    assert b"openapi: 3.1.x" in bodies["js"]
    # The stylesheet pulls nothing in either (its images are data: URLs).
    assert re.findall(rb"url\((?![\"']?data:)", bodies["css"]) == []
    assert b"@import" not in bodies["css"]


def test_client_serves_its_own_openapi_document(client_url: str) -> None:
    """A deliberate difference (docs/differences.md): the original client has no OpenAPI
    document."""
    document = httpx.get(f"{client_url}/api-docs/openapi.json", timeout=30)
    assert document.status_code == 200
    assert document.headers["content-type"] == "application/json"
    paths = document.json()["paths"]
    for route, method in [
        ("/retrieve/{id}", "get"),
        ("/retrieve_partial/{id}", "get"),
        ("/kill/{id}", "post"),
    ]:
        assert list(paths[route]) == [method]
        parameters = paths[route][method]["parameters"]
        assert parameters[0] == id_parameter("Payload identifier"), route
        extensions = ["wait", "known", "settle"] if route == "/retrieve/{id}" else []
        assert [parameter["name"] for parameter in parameters[1:]] == extensions
        assert "422" not in paths[route][method]["responses"]
    # Only the document: no Swagger UI on the client.
    assert httpx.get(f"{client_url}/swagger/", timeout=30).status_code == 404


# ---- the original's multipart and query-string rules ----------------------------------------


def completed_zip(client_url: str, payload_id: int) -> bytes:
    def zipped() -> bytes | None:
        response = rust_retrieve(client_url, payload_id)
        assert response.status_code == 200, response.text
        if response.headers["content-type"] != "application/zip":
            assert rust_payload(response)["status"] in {"Prepared", "Running"}, response.text
            return None
        return response.content

    content: bytes = eventually(zipped, f"the ZIP of payload {payload_id}")
    return content


def test_backslashes_in_quoted_file_names_stay_as_multer_leaves_them(client_url: str) -> None:
    """multer 3.1 ends a quoted value at the first `"` not after a backslash, and unescapes
    only a backslash-quote pair."""
    headers, body = reqwest_multipart(
        [
            ('form-data; name="run.sh"; filename="run.sh"', b"ls > listing.txt\n"),
            ('form-data; name="f"; filename="a\\\\b.txt"', b"two backslashes\n"),
            ('form-data; name="g"; filename="c\\\\\\"d.txt"', b"backslash, quote\n"),
            ('form-data; name="h"; filename="e\\f.txt"', b"one backslash\n"),
        ]
    )
    response = httpx.post(f"{client_url}/submit", content=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    files = zip_names(completed_zip(client_url, rust_payload(response)["id"]))
    # `c\\\"d` ends at the last quote; only its `\"` loses the backslash.
    expected = ["a\\\\b.txt", 'c\\\\"d.txt', "e\\f.txt", "listing.txt", "run.sh"]
    assert sorted(files["listing.txt"].decode().split("\n")[:-1]) == expected
    assert files["a\\\\b.txt"] == b"two backslashes\n"
    assert files['c\\\\"d.txt'] == b"backslash, quote\n"


def test_upload_reads_quoted_file_names_like_submit(ours: Cluster) -> None:
    """The original's server is axum + multer too: /upload keeps `\\` as /submit does."""
    assert ours.server is not None
    marker = secrets.token_hex(4)
    headers, body = reqwest_multipart(
        [
            ('form-data; name="user_id"', b"1"),
            ('form-data; name="service"', b"example"),
            ('form-data; name="file"; filename="run.sh"', b"ls > listing.txt\n"),
            (f'form-data; name="file"; filename="{marker}\\\\x.txt"', b"x\n"),
        ]
    )
    response = httpx.post(f"{ours.server.url}/upload", content=body, headers=headers, timeout=30)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    stored = [path.name for path in (ours.root / "server-data").glob(f"*/input/{marker}*")]
    assert stored == [f"{marker}\\\\x.txt"]
    assert ours.api.wait_for(job_id, "Completed", "Failed", "Invalid")["status"] == "Completed"
    # Dispatch escapes each backslash (as reqwest does) and the client keeps both, so the
    # name doubles again, exactly as it does between the original's server and client.
    listed = ours.api.download_zip(job_id).read("listing.txt").decode().split("\n")[:-1]
    assert sorted(listed) == sorted(["listing.txt", "run.sh", f"{marker}\\\\\\\\x.txt"])


@pytest.mark.parametrize(
    "query", ["wait=abc", "wait=nan", "wait=-5", "wait=1e999", "wait=%ff", "known=Bogus&wait=x"]
)
def test_bad_extension_parameters_are_ignored(client_url: str, query: str) -> None:
    """The original ignores the query string; an invalid `wait`/`known` is treated as absent."""
    payload_id = rust_submit(client_url, "echo done > done.txt\n")["id"]
    plain = completed_zip(client_url, payload_id)
    response = httpx.get(f"{client_url}/retrieve/{payload_id}?{query}", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.content == plain
    assert "x-orchestrator-long-poll" not in response.headers


def test_valid_extension_parameters_still_long_poll(client_url: str) -> None:
    payload_id = rust_submit(client_url, "sleep 60\n")["id"]
    retrieve_until(client_url, payload_id, "Running")
    url = f"{client_url}/retrieve/{payload_id}"
    for query, long_polled in [
        ("wait=0.2&known=Running", True),
        ("wait=0.2&known=Bogus", True),  # an invalid `known` counts as absent: the current one
        ("wait=abc&known=Running", False),
    ]:
        response = httpx.get(f"{url}?{query}", timeout=30)
        assert response.status_code == 200, query
        assert rust_payload(response)["status"] == "Running", query
        assert ("x-orchestrator-long-poll" in response.headers) is long_polled, query
    assert httpx.post(f"{client_url}/kill/{payload_id}", timeout=30).status_code == 200
    retrieve_until(client_url, payload_id, "Killed")


# ---- deliberate differences, pinned (docs/differences.md) ------------------------------------


def test_zip_downloads_carry_caching_headers_and_answer_ranges(ours: Cluster) -> None:
    """The original sends the whole ZIP with only Content-Type; ours adds resumable downloads."""
    assert ours.server is not None
    job_id = ours.api.submit("head -c 5000 /dev/urandom > noise.bin\n")
    ours.api.wait_for(job_id, "Completed")
    url = f"{ours.server.url}/download/{job_id}"
    whole = httpx.get(url, timeout=30)
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "application/zip"
    assert whole.headers["content-disposition"] == f'attachment; filename="job-{job_id}.zip"'
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["etag"].startswith('"')
    assert whole.headers["last-modified"].endswith(" GMT")
    size = len(whole.content)
    part = httpx.get(url, headers={"Range": "bytes=100-199"}, timeout=30)
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    assert part.content == whole.content[100:200]
    rest = httpx.get(url, headers={"Range": "bytes=4000-"}, timeout=30)
    assert rest.status_code == 206
    assert whole.content[:4000] + rest.content == whole.content
    # A client that sends no Range (the Rust getter, a plain curl) still gets the whole ZIP.
    assert zipfile.ZipFile(io.BytesIO(whole.content)).read("noise.bin")


def raw_upload(ours: Cluster, parts: list[tuple[str, bytes]]) -> httpx.Response:
    assert ours.server is not None
    headers, body = reqwest_multipart(parts)
    return httpx.post(f"{ours.server.url}/upload", content=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("user_id", "service"),
    [
        ("form-data; name*=utf-8''user_id", "form-data; name*=UTF-8''service"),
        ('form-data; Name="user_id"', 'form-data; NAME="service"'),
    ],
)
def test_server_reads_extended_and_any_case_parameter_names(
    ours: Cluster, user_id: str, service: str
) -> None:
    """The original answers 400 `Missing user_id field` to both; ours reads the fields."""
    response = raw_upload(
        ours,
        [
            (user_id, b"7"),
            (service, b"example"),
            ('form-data; name="file"; FILENAME="run.sh"', b"echo ok > ok.txt\n"),
        ],
    )
    assert response.status_code == 201, response.text
    job_id = status_body(response)["id"]
    assert ours.api.wait_for(job_id, "Completed", "Failed", "Invalid")["status"] == "Completed"
    assert ours.api.download_zip(job_id).read("ok.txt") == b"ok\n"


# ---- our server driving a Rust-like client --------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakePayload:
    id: int
    marker: str
    result: bytes
    partial: bytes
    released: threading.Event = field(default_factory=threading.Event)
    killed: bool = False


class FakeRustClient:
    """Answers /submit, /retrieve, /retrieve_partial and /kill the way the Rust client does.

    Routes live under PREFIX, so the server's URL derivation (UPSTREAM §3.4) is exercised
    with a non-trivial DOWNLOAD_URL. Query strings are ignored, as axum ignores them.
    """

    PREFIX = "/v1"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.payloads: dict[int, FakePayload] = {}
        self.next_id = 7
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{self.PREFIX}"

    def start(self) -> FakeRustClient:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)

    def recorded(self, method: str, path: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    def payload_for(self, marker: str) -> FakePayload | None:
        with self.lock:
            return next((p for p in self.payloads.values() if p.marker == marker), None)

    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str | None, bytes]:
        split = urlsplit(target)
        with self.lock:
            self.requests.append(Recorded(method, split.path, split.query, headers, body))
        if not split.path.startswith(self.PREFIX + "/"):
            return 404, None, b""
        parts = split.path[len(self.PREFIX) + 1 :].split("/")
        if method == "POST" and parts == ["submit"]:
            return self._submit(body)
        if len(parts) != 2 or not parts[1].isdigit():
            return 404, None, b""
        route, payload_id = parts[0], int(parts[1])
        with self.lock:
            payload = self.payloads.get(payload_id)
        if payload is None:
            return 404, "application/json", EMPTY_PAYLOAD.encode()
        if method == "GET" and route == "retrieve":
            if payload.killed:
                return 200, "application/json", self._payload_json(payload, "Killed")
            if payload.released.is_set():
                return 200, "application/zip", payload.result
            return 200, "application/json", self._payload_json(payload, "Running")
        if method == "GET" and route == "retrieve_partial":
            return 200, "application/zip", payload.partial
        if method == "POST" and route == "kill":
            payload.killed = True
            return 200, None, b""
        return 405, None, b""

    def _submit(self, body: bytes) -> tuple[int, str | None, bytes]:
        found = re.search(rb"marker-[0-9a-f]{32}", body)
        with self.lock:
            payload_id = self.next_id
            self.next_id += 1
            self.payloads[payload_id] = FakePayload(
                id=payload_id,
                marker=found.group().decode() if found else "",
                result=make_zip({"result.txt": f"result of {payload_id}\n".encode()}),
                partial=make_zip({"partial.txt": f"partial of {payload_id}\n".encode()}),
            )
        answer = {
            "id": payload_id,
            "input": {"run.sh": [35, 33]},
            "status": "Prepared",
            "loc": f"/opt/data/{payload_id}",
            "pid": 0,
            "killed": False,
        }
        return 200, "application/json", json.dumps(answer, separators=(",", ":")).encode()

    @staticmethod
    def _payload_json(payload: FakePayload, status: str) -> bytes:
        answer = {
            "id": payload.id,
            "input": {},
            "status": status,
            "loc": f"/opt/data/{payload.id}",
            "pid": 4242,
            "killed": payload.killed,
        }
        return json.dumps(answer, separators=(",", ":")).encode()


def _make_handler(fake: FakeRustClient) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _read_body(self) -> bytes:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                body = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(body)
                    body += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("content-length") or 0))

        def _serve(self) -> None:
            body = self._read_body()
            headers = {key.lower(): value for key, value in self.headers.items()}
            status, content_type, content = fake.handle(self.command, self.path, headers, body)
            self.send_response(status)
            if content_type is not None:
                self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = _serve
        do_POST = _serve

    return Handler


@pytest.fixture(scope="module")
def fake_client() -> Iterator[FakeRustClient]:
    fake = FakeRustClient().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def rust_peer(
    tmp_path_factory: pytest.TempPathFactory, fake_client: FakeRustClient
) -> Iterator[Cluster]:
    """Our server configured the original way: three URLs per service, no _CLIENTS."""
    running = Cluster(tmp_path_factory.mktemp("rust-peer"))
    port = free_port()
    env = running.base_env(
        {
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "DB_PATH": str(running.root / "server.db"),
            "DATA_PATH": str(running.root / "server-data"),
            "SERVICE_EXAMPLE_UPLOAD_URL": f"{fake_client.url}/submit",
            "SERVICE_EXAMPLE_DOWNLOAD_URL": f"{fake_client.url}/retrieve",
            "SERVICE_EXAMPLE_TERMINATE_URL": f"{fake_client.url}/kill",
            "POLL_INTERVAL": "0.2",
        }
    )
    running.server = Node("server", port, env, running.root / "server.log")
    try:
        running.server.start()
        yield running
    finally:
        running.shutdown()


def _parse_multipart(headers: dict[str, str], body: bytes) -> list[tuple[dict[str, str], bytes]]:
    content_type = headers.get("content-type", "")
    match = re.fullmatch(r'multipart/form-data;\s*boundary="?([^";]+)"?', content_type)
    assert match, f"not multipart/form-data with a boundary: {content_type!r}"
    boundary = match.group(1).encode()
    assert body.startswith(b"--" + boundary + b"\r\n"), body[:200]
    assert body.endswith(b"--" + boundary + b"--\r\n"), body[-200:]
    chunks = body[len(boundary) + 4 : -(len(boundary) + 6)].split(b"\r\n--" + boundary + b"\r\n")
    parts = []
    for chunk in chunks:
        raw_headers, separator, content = chunk.partition(b"\r\n\r\n")
        assert separator, chunk[:200]
        part_headers = {}
        for line in raw_headers.split(b"\r\n"):
            name, _, value = line.decode().partition(":")
            part_headers[name.strip().lower()] = value.strip()
        parts.append((part_headers, content.removesuffix(b"\r\n")))
    return parts


def _upload_with_marker(server: Cluster, script: bytes) -> tuple[int, str]:
    marker = f"marker-{uuid.uuid4().hex}"
    response = server.api.upload({"run.sh": script, "marker.txt": marker.encode()})
    assert response.status_code == 201, response.text
    return response.json()["id"], marker


def test_dispatch_to_rust_client_and_collect_the_zip(
    rust_peer: Cluster, fake_client: FakeRustClient
) -> None:
    script = b"#!/bin/bash\necho hi > out.txt\n"
    job_id, marker = _upload_with_marker(rust_peer, script)
    payload = eventually(lambda: fake_client.payload_for(marker), "the dispatch")
    submit = next(
        r for r in fake_client.recorded("POST", "/v1/submit") if marker.encode() in r.body
    )

    # The dispatch is a multipart body a Rust client (multer) reads: every part a file part,
    # sent with its exact length (not chunked) and without waiting for a 100 Continue.
    assert submit.query == ""
    assert submit.headers["content-length"] == str(len(submit.body))
    assert "transfer-encoding" not in submit.headers
    assert "expect" not in submit.headers
    parts = _parse_multipart(submit.headers, submit.body)
    files = {}
    for part_headers, content in parts:
        disposition = part_headers["content-disposition"]
        assert disposition.startswith("form-data;"), disposition
        filename = re.search(r';\s*filename="([^"]*)"', disposition)
        assert filename, f"part without a filename: {disposition}"
        files[filename.group(1)] = content
    assert files == {"run.sh": script, "marker.txt": marker.encode()}

    # The server follows the Rust client's answers: Running, then the ZIP.
    assert rust_peer.api.wait_for(job_id, "Running")["status"] == "Running"
    payload.released.set()
    rust_peer.api.wait_for(job_id, "Completed")
    assert rust_peer.server is not None
    download = httpx.get(f"{rust_peer.server.url}/download/{job_id}", timeout=30)
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/zip"
    assert download.content == payload.result
    polls = fake_client.recorded("GET", f"/v1/retrieve/{payload.id}")
    assert polls, "the server never polled the fake client"


def test_download_partial_is_proxied_to_the_derived_url(
    rust_peer: Cluster, fake_client: FakeRustClient
) -> None:
    assert rust_peer.server is not None
    job_id, marker = _upload_with_marker(rust_peer, b"sleep 1\n")
    payload = eventually(lambda: fake_client.payload_for(marker), "the dispatch")
    rust_peer.api.wait_for(job_id, "Running")

    response = httpx.get(f"{rust_peer.server.url}/download_partial/{job_id}", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.content == payload.partial
    # DOWNLOAD_URL .../v1/retrieve -> .../v1/retrieve_partial/<dest_id>
    proxied = fake_client.recorded("GET", f"/v1/retrieve_partial/{payload.id}")
    assert len(proxied) == 1
    assert proxied[0].query == ""
    assert rust_peer.api.status(job_id)["status"] == "Running"

    payload.released.set()
    rust_peer.api.wait_for(job_id, "Completed")
    assert (
        httpx.get(f"{rust_peer.server.url}/download/{job_id}", timeout=30).content == payload.result
    )


def test_terminate_calls_the_rust_kill_url(rust_peer: Cluster, fake_client: FakeRustClient) -> None:
    assert rust_peer.server is not None
    job_id, marker = _upload_with_marker(rust_peer, b"sleep 60\n")
    payload = eventually(lambda: fake_client.payload_for(marker), "the dispatch")
    rust_peer.api.wait_for(job_id, "Running")

    response = httpx.post(f"{rust_peer.server.url}/terminate/{job_id}", timeout=60)
    assert response.status_code == 200, response.text
    assert status_body(response)["message"] == "job terminated"
    kills = fake_client.recorded("POST", f"/v1/kill/{payload.id}")
    assert len(kills) == 1
    assert kills[0].body == b""
    assert "content-type" not in kills[0].headers
    assert payload.killed
    assert rust_peer.api.wait_for(job_id, "Killed")["status"] == "Killed"


def test_rust_peer_log_has_no_traceback(rust_peer: Cluster) -> None:
    assert rust_peer.server is not None
    assert "Traceback" not in rust_peer.server.log()
