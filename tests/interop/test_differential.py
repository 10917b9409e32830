"""The same user requests sent to the original deployment and to ours, answers compared.

Each side is a server with one client of its own kind, both with SERVICE_EXAMPLE_MAX_RUNS=1
so a job can be held Queued behind a running one. Every step runs on the original, then on
ours; the answers (status code, content type, Location/Allow, body with job ids replaced by
labels, see wire.py) must be equal except for the steps listed below. Timing-dependent
intermediate statuses are waited for, not compared.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit import eventually
from testkit.harness import Api, Node
from testkit.original import SERVICE, TRAP, Fleet, require_original
from tests.interop.wire import Seen, of, raw_post

# Differences docs/differences.md explains (the entry named after each); every one of them
# must still show, or the entry (and the line in docs/differences.md) is stale.
DELIBERATE: dict[str, str] = {
    # "/terminate": a Queued job is cancelled at once; the original answers 500 and keeps it.
    "terminate-queued": "/terminate",
    "status-after-terminate-queued": "/terminate",
    # "/terminate": the answer's status is the job's real one, not always Unknown.
    "terminate-running": "/terminate",
    # "/terminate": a finished job answers 409 and keeps its result; the original kills it.
    "terminate-completed": "/terminate",
    "status-after-terminate-completed": "/terminate",
    # "Messages": the reason a job failed, was rejected or killed is in `message`.
    "status-killed": "Messages",
    "status-failed": "Messages",
    "status-invalid": "Messages",
    "status-no-run-sh": "Messages",
    # "Result ZIP": never contains itself (the original's has a partial output.zip).
    "download-completed": "Result ZIP",
    "partial-completed": "Result ZIP",
    # "Service names": the `service` field is matched case-insensitively.
    "upload-uppercase-service": "Service names",
    # "Uploads": a body over the limit gets 413 (the original: 400).
    "upload-oversize": "Uploads",
}

# Being changed on other branches to match the original; drop each entry when it lands.
PENDING: dict[str, str] = {
    # Also, after that fix: ours lists GET / and POST /terminate/{id} and more answer codes
    # (400, 401, 413, 422), which the original's document leaves out.
    "openapi": "path parameters named {id}, typed like the original's",
    "upload-truncated-file": "`Could not save file: Chunk read failed: ...` text",
    "upload-truncated-text": "`Error reading text field: ...` text",
    "upload-big-text-field": "a 3 MiB text field is accepted",
}

# Found by this test, reported, not decided yet (harmless for browsers and clients).
ROUTED: dict[str, str] = {
    "swagger-page": "ours: text/html; charset=utf-8, the original: text/html",
}

UPLOAD_LIMIT = 400 * 1024 * 1024


@dataclass
class Side:
    name: str
    fleet: Fleet
    gates: Path
    ids: dict[int, str] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    seen: dict[str, Seen] = field(default_factory=dict)

    @property
    def server(self) -> Node:
        assert self.fleet.server is not None
        return self.fleet.server

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def api(self) -> Api:
        return self.fleet.api

    def http(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", timeout=60, trust_env=False, **kwargs)

    def job(self, label: str) -> int:
        return self.labels[label]

    def gated(self, name: str, before: str) -> str:
        # The same script text on both sides: the clients hand their environment to run.sh.
        gate = f"$INTEROP_GATES/{name}"
        return f"{TRAP}{before}\nwhile [ ! -e {gate} ]; do sleep 0.1; done\n"


Step = Callable[[Side], Seen]


def _fleet(root: Path, original: bool) -> Fleet:
    fleet = Fleet(root)
    limits = {f"SERVICE_{SERVICE.upper()}_MAX_RUNS": "1"}
    gates = {"INTEROP_GATES": str(root / "gates")}
    if original:
        fleet.original_client(gates)
        fleet.original_server(limits)
    else:
        fleet.our_client(gates)
        fleet.our_server(limits)
    return fleet


@pytest.fixture
def sides(tmp_path: Path) -> Iterator[tuple[Side, Side]]:
    require_original()
    made: list[Side] = []
    try:
        for name, original in (("original", True), ("ours", False)):
            root = tmp_path / name
            (root / "gates").mkdir(parents=True)
            made.append(Side(name, _fleet(root, original), root / "gates"))
        yield made[0], made[1]
    finally:
        for side in made:
            side.fleet.shutdown()
            # The original keeps the oversize upload's 400 MiB (UPSTREAM §12.1.12).
            shutil.rmtree(side.fleet.root / "server-data", ignore_errors=True)


# ---- request bodies ----------------------------------------------------------------------------


BOUNDARY = "interop0boundary"


def _multipart(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += content + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def _form(user: str = "1", service: str = SERVICE) -> list[tuple[str, str | None, bytes]]:
    return [("user_id", None, user.encode()), ("service", None, service.encode())]


def _post_multipart(side: Side, body: bytes) -> Seen:
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    return of(side.http("POST", "/upload", content=body, headers=headers), side.ids)


def _upload(side: Side, label: str, files: dict[str, bytes], service: str = SERVICE) -> Seen:
    parts = [("file", name, content) for name, content in files.items()]
    response = side.http(
        "POST",
        "/upload",
        content=_multipart([*_form(service=service), *parts]),
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    if response.status_code == 201:
        side.labels[label] = response.json()["id"]
        side.ids[response.json()["id"]] = label
    return of(response, side.ids)


def _openapi(side: Side) -> Seen:
    """The operations of the document: paths, methods, parameters and response codes."""
    response = side.http("GET", "/api-docs/openapi.json")
    document = response.json()
    operations = {
        f"{method.upper()} {path}": {
            "parameters": [
                (parameter["name"], parameter["in"], parameter.get("schema", {}).get("type"))
                for parameter in operation.get("parameters", [])
            ],
            "responses": sorted(operation.get("responses", {})),
        }
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }
    summary = {"openapi": document["openapi"], "operations": operations}
    return Seen(response.status_code, response.headers.get("content-type"), (), summary)


def _oversize(side: Side) -> Seen:
    """A file part past the 400 MiB body limit, streamed (never held in memory)."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    chunk = b"\0" * (1024 * 1024)
    chunks = UPLOAD_LIMIT // len(chunk) + 8

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(chunks):
            yield chunk
        yield tail

    length = len(head) + chunks * len(chunk) + len(tail)
    headers = {
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Length": str(length),
    }
    return raw_post(side.server.port, "/upload", headers, body(), side.ids)


def _wait_status(side: Side, label: str, *statuses: str) -> None:
    side.api.wait_for(side.job(label), *statuses, timeout_s=60)


# ---- the sequence --------------------------------------------------------------------------


def _get(path: str) -> Step:
    return lambda side: of(side.http("GET", path, follow_redirects=False), side.ids)


def _job_get(route: str, label: str) -> Step:
    return lambda side: of(side.http("GET", f"/{route}/{side.job(label)}"), side.ids)


def _terminate(label: str) -> Step:
    return lambda side: of(side.http("POST", f"/terminate/{side.job(label)}"), side.ids)


def _swagger_page(side: Side) -> Seen:
    response = side.http("GET", "/swagger/")
    return Seen(response.status_code, response.headers.get("content-type"), (), "<page>")


def _run_sh(body: str) -> bytes:
    return f"{TRAP}{body}\n".encode()


STATIC: list[tuple[str, Step]] = [
    ("ping", _get("/")),
    ("health", _get("/health")),
    ("head-health", lambda side: of(side.http("HEAD", "/health"), side.ids)),
    ("unknown-path", _get("/nope")),
    ("wrong-method", _get("/upload")),
    ("trailing-slash", _get("/download/1/")),
    ("swagger-redirect", _get("/swagger")),
    ("swagger-page", _swagger_page),
    ("openapi", _openapi),
    ("download-abc", _get("/download/abc")),
    ("download-overflow", _get("/download/4294967296")),
    ("download-negative", _get("/download/-1")),
    ("download-plus", _get("/download/+999999")),
    ("download-unknown", _get("/download/999999")),
    ("partial-unknown", _get("/download_partial/999999")),
    ("partial-abc", _get("/download_partial/abc")),
    ("terminate-unknown", lambda side: of(side.http("POST", "/terminate/999999"), side.ids)),
    ("terminate-abc", lambda side: of(side.http("POST", "/terminate/abc"), side.ids)),
    ("terminate-get", _get("/terminate/1")),
    ("upload-no-content-type", lambda side: of(side.http("POST", "/upload", content=b"x"), {})),
    ("upload-json", lambda side: of(side.http("POST", "/upload", json={"user_id": 1}), {})),
    ("upload-missing-user", lambda side: _post_multipart(side, _multipart(_form()[1:]))),
    ("upload-bad-user", lambda side: _post_multipart(side, _multipart(_form(user=" 1")))),
    ("upload-big-user", lambda side: _post_multipart(side, _multipart(_form(user="2147483648")))),
    ("upload-missing-service", lambda side: _post_multipart(side, _multipart(_form()[:1]))),
    (
        "upload-invalid-service",
        lambda side: _post_multipart(side, _multipart(_form(service="nope"))),
    ),
    (
        "upload-garbage-multipart",
        lambda side: _post_multipart(side, b"this is not multipart at all"),
    ),
    (
        "upload-truncated-file",
        lambda side: _post_multipart(
            side, _multipart([*_form(), ("file", "run.sh", b"echo hi\n" * 100)])[:-120]
        ),
    ),
    (
        "upload-truncated-text",
        lambda side: _post_multipart(
            side, _multipart([*_form(), ("comment", None, b"x" * 4000)])[:-120]
        ),
    ),
]


def _blocker(side: Side) -> Seen:
    files = {
        "run.sh": side.gated("blocker", "echo step-1 > progress.txt").encode(),
        "data.txt": b"data\n",
        "dir/sub.txt": b"sub\n",
    }
    return _upload(side, "blocker", files)


def _running(side: Side) -> Seen:
    _wait_status(side, "blocker", "Running")
    eventually(
        lambda: side.http("GET", f"/download_partial/{side.job('blocker')}").status_code == 200,
        what="a partial download of the running job",
    )
    return of(side.http("GET", f"/download/{side.job('blocker')}"), side.ids)


def _killed(side: Side) -> Seen:
    _wait_status(side, "blocker", "Killed")
    return of(side.http("GET", f"/download/{side.job('blocker')}"), side.ids)


def _completed(side: Side) -> Seen:
    _wait_status(side, "done", "Completed")
    return of(side.http("GET", f"/download/{side.job('done')}"), side.ids)


def _final(label: str, *statuses: str) -> Step:
    def step(side: Side) -> Seen:
        _wait_status(side, label, *statuses)
        return of(side.http("GET", f"/download/{side.job(label)}"), side.ids)

    return step


def _upload_step(label: str, files: dict[str, bytes], service: str = SERVICE) -> Step:
    return lambda side: _upload(side, label, files, service)


def _big_text(side: Side) -> Seen:
    parts = [*_form(), ("comment", None, b"c" * (3 * 1024 * 1024)), ("file", "run.sh", b"")]
    return _post_multipart(side, _multipart(parts))


JOBS: list[tuple[str, Step]] = [
    ("upload-several-files", _blocker),
    ("status-running", _running),
    ("partial-running", _job_get("download_partial", "blocker")),
    ("upload-queued", _upload_step("queued", {"run.sh": _run_sh("echo q > output.txt")})),
    ("status-queued", _job_get("download", "queued")),
    ("partial-queued", _job_get("download_partial", "queued")),
    ("terminate-queued", _terminate("queued")),
    ("status-after-terminate-queued", _job_get("download", "queued")),
    ("terminate-running", _terminate("blocker")),
    ("status-killed", _killed),
    ("upload-done", _upload_step("done", {"run.sh": _run_sh("echo ok > output.txt")})),
    ("download-completed", _completed),
    ("partial-completed", _job_get("download_partial", "done")),
    ("terminate-completed", _terminate("done")),
    ("status-after-terminate-completed", _job_get("download", "done")),
    ("upload-failing", _upload_step("failing", {"run.sh": _run_sh("exit 3")})),
    ("status-failed", _final("failing", "Failed")),
    ("upload-invalid", _upload_step("invalid", {"run.sh": _run_sh("curl http://x")})),
    ("status-invalid", _final("invalid", "Invalid")),
    ("upload-no-run-sh", _upload_step("no-run-sh", {"data.txt": b"d\n"})),
    ("status-no-run-sh", _final("no-run-sh", "Invalid")),
    ("upload-big-text-field", _big_text),
    (
        "upload-uppercase-service",
        _upload_step("upper", {"run.sh": _run_sh("true")}, service=SERVICE.upper()),
    ),
    ("upload-oversize", _oversize),
]


def test_the_original_and_ours_answer_alike(sides: tuple[Side, Side]) -> None:
    original, ours = sides
    for name, step in [*STATIC, *JOBS]:
        for side in sides:
            side.seen[name] = step(side)
    differing = {name for name in original.seen if original.seen[name] != ours.seen[name]}
    report = "\n".join(
        f"{name}:\n  original: {original.seen[name].describe()}\n"
        f"  ours:     {ours.seen[name].describe()}"
        for name in sorted(differing)
    )
    print(report)  # the full list, for docs/differences.md and the issue
    unexplained = differing - set(DELIBERATE) - set(PENDING) - set(ROUTED)
    assert not unexplained, f"unexplained differences:\n{report}"
    stale = set(DELIBERATE) - differing
    assert not stale, f"listed as deliberate but no longer different: {sorted(stale)}"
