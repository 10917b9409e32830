"""No error answer of the server or the client shows our internals (a path, a traceback).

A sweep of bad requests over every route of both processes: ids that are not a u32, bad query
strings (including our own `wait`/`known`), bad headers, bad bodies, wrong methods, unknown
paths and requests broken at the HTTP level. Every answer with a 4xx/5xx status is checked:
its body and headers must not contain a traceback, a source location or a filesystem path of
this machine (ours or the data directories). Bad input must never cause a 5xx either.
"""

from __future__ import annotations

import re
import secrets
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import job_orchestrator
from testkit.harness import Api, Cluster, cluster

FINAL = ("Completed", "Failed", "Invalid", "Killed")
USER_TOKEN = f"sweep-user-{secrets.token_hex(8)}"
CLIENT_TOKEN = f"sweep-client-{secrets.token_hex(8)}"

SERVER_ROUTES = [
    ("GET", "/"),
    ("GET", "/health"),
    ("POST", "/upload"),
    ("GET", "/download/{}"),
    ("GET", "/download_partial/{}"),
    ("POST", "/terminate/{}"),
    ("GET", "/swagger"),
    ("GET", "/swagger/"),
    ("GET", "/api-docs/openapi.json"),
    ("GET", "/metrics"),
]
CLIENT_ROUTES = [
    ("GET", "/"),
    ("GET", "/health"),
    ("GET", "/load"),
    ("POST", "/submit"),
    ("GET", "/retrieve/{}"),
    ("GET", "/retrieve_partial/{}"),
    ("POST", "/kill/{}"),
    ("GET", "/api-docs/openapi.json"),
    ("GET", "/metrics"),
]
BAD_IDS = [
    "abc",
    "-1",
    "4294967296",
    "9" * 40,
    "1.5",
    "0x1",
    "1e3",
    "+",
    "%20",
    "%00",
    "%ff%fe",
    "%C3%A9",
    "%EF%BC%91",  # a fullwidth digit one
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e",
    "a" * 5000,
]
BAD_QUERIES = [
    "wait=abc",
    "wait=-1",
    "wait=nan",
    "wait=inf",
    "wait=1e999",
    "wait=%00",
    "wait=%ff",
    "wait=1&wait=abc",
    "wait",
    "known=%ff&wait=0.01",
    "known=" + "K" * 5000,
    "%zz=%zz",
    "x=" + "y" * 5000,
]
BAD_HEADERS: list[dict[str, bytes]] = [
    {"Range": b"bytes=abc"},
    {"Range": b"bytes=999999999-"},
    {"Range": b"bytes=5-1"},
    {"Range": b"bytes=0-1,1-2,0-0"},
    {"Range": b"pages=1"},
    {"If-Range": b"garbage"},
    {"If-None-Match": b"\xff\xfe"},
    {"If-Modified-Since": b"not a date"},
    {"Authorization": b"Bearer \xff"},
    {"Authorization": b"Basic " + b"x" * 5000},
    {"Accept": b"application/xml"},
    {"Content-Type": b'multipart/form-data; boundary="unterminated'},
    {"X-Orchestrator-Timeout": b"abc"},
    {"X-Orchestrator-Timeout": b"nan"},
    {"X-Orchestrator-Timeout": b"-1"},
    {"X-Orchestrator-Timeout": b"1e999"},
    {"Idempotency-Key": b"\xff" * 300},
]
OTHER_METHODS = ["PUT", "DELETE", "PATCH", "OPTIONS"]
UNKNOWN_PATHS = [
    "/nope",
    "/download",
    "/download/",
    "/download/1/x",
    "/retrieve",
    "/swagger/%2e%2e/%2e%2e/etc/passwd",
    "/swagger/no-such-asset.js",
    "/api-docs/openapi.json/x",
    "/%ff",
]


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"sweepboundary") -> bytes:
    body = b""
    for headers, content in parts:
        body += b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n"
    return body + b"--" + boundary + b"--\r\n"


FORM = b"multipart/form-data; boundary=sweepboundary"
RUN_SH = (b'Content-Disposition: form-data; name="file"; filename="run.sh"', b"exit 0\n")
USER = (b'Content-Disposition: form-data; name="user_id"', b"1")
SERVICE = (b'Content-Disposition: form-data; name="service"', b"example")


def file_part(filename: bytes) -> tuple[bytes, bytes]:
    return b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"', b"x"


BAD_BODIES: list[tuple[bytes | None, bytes]] = [
    (None, b"user_id=1&service=example"),
    (b"text/plain", b"hello"),
    (b"application/json", b'{"user_id": 1, "service": "example"}'),
    (b"multipart/form-data", multipart([USER, SERVICE, RUN_SH])),
    (b"multipart/form-data; boundary=", b"--\r\n"),
    (b"multipart/form-data; boundary=other", multipart([USER, SERVICE, RUN_SH])),
    (FORM, multipart([USER, SERVICE, RUN_SH])[:-30]),
    (FORM, b'--sweepboundary\r\nContent-Disposition: form-data; name="a"\r\n\r\nno end'),
    (FORM, b"preamble only"),
    (FORM, b"--sweepboundary--\r\n"),
    (FORM, b"--sweepboundary\r\nno colon here\r\n\r\nx\r\n--sweepboundary--\r\n"),
    (FORM, b"--sweepboundary\r\nX-Long: " + b"h" * 20000 + b"\r\n\r\nx\r\n--sweepboundary--\r\n"),
    (FORM, multipart([(b"Content-Type: text/plain", b"no disposition")])),
    (FORM, multipart([USER, SERVICE, RUN_SH, file_part(b"bad\x00name")])),
    (FORM, multipart([USER, SERVICE, RUN_SH, file_part(b"y" * 300)])),
    (FORM, multipart([USER, SERVICE, RUN_SH, file_part(b"\xff\xfe.txt")])),
    (FORM, multipart([USER, SERVICE, file_part(b"..")])),
    (FORM, multipart([(b'Content-Disposition: form-data; name="user_id"', b"1 "), SERVICE])),
    (FORM, multipart([USER, (b'Content-Disposition: form-data; name="service"', b"nope")])),
    (FORM, multipart([(b'Content-Disposition: form-data; name="user_id"', b"\xff"), SERVICE])),
]
# Requests that break HTTP itself (answered by uvicorn before any route).
RAW_REQUESTS = [
    b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /submit HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Type: multipart/form-data; boundary=b\r\n\r\nzz\r\nnot a chunk\r\n",
    b"GET /download/1 HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"POST /kill/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    b"GET /\x01\x02 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /retrieve/%ff%fe?wait=%ff HTTP/1.1\r\nHost: x\r\nX-Bytes: \xff\xfe\r\n\r\n",
    b"BREW /download/1 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /download/1 HTTP/9.9\r\nHost: x\r\n\r\n",
    b"garbage\r\n\r\n",
]


@dataclass(frozen=True)
class Answer:
    request: str
    status: int
    text: str


def leak_markers() -> list[str]:
    """Strings that only our internals would put in an answer."""
    package = Path(job_orchestrator.__file__).resolve().parent
    return [
        "Traceback",
        'File "',
        ".py",
        "site-packages",
        str(package),
        str(package.parent),
        sys.prefix,
        str(Path.home()),
        str(Path.cwd()),
    ]


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~%-])/[\w.+-]+(?:/[\w.+-]+)+")
_SOURCE_LINE = re.compile(r"\bline \d+")


def leaks(answer: Answer, extra: list[str]) -> list[str]:
    found = [marker for marker in [*leak_markers(), *extra] if marker in answer.text]
    if _SOURCE_LINE.search(answer.text):
        found.append("a source line")
    for match in _ABSOLUTE_PATH.finditer(answer.text):
        top = match.group().split("/")[1]
        if Path("/", top).is_dir():  # /tmp/..., /usr/..., /home/...: a path of this machine
            found.append(match.group())
    return found


def describe(response: httpx.Response) -> str:
    headers = "\n".join(f"{name}: {value}" for name, value in response.headers.items())
    return f"{headers}\n\n{response.content.decode('utf-8', 'replace')}"


class Sweeper:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=60, trust_env=False)
        self.answers: list[Answer] = []

    def send(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, bytes] | None = None,
        content: bytes | None = None,
    ) -> None:
        request = self.http.build_request(method, path, headers=headers, content=content)
        # Keep the path exactly as written (no normalisation of dot segments or escapes).
        request.url = request.url.copy_with(raw_path=path.encode("ascii"))
        response = self.http.send(request)
        label = f"{method} {path[:120]} {headers or ''}"
        self.answers.append(Answer(label, response.status_code, describe(response)))

    def send_raw(self, data: bytes) -> None:
        url = httpx.URL(self.base_url)
        assert url.host == "127.0.0.1"
        assert url.port is not None
        with socket.create_connection((url.host, url.port), timeout=30) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        status_line = received.split(b"\r\n", 1)[0].split(b" ")
        status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
        text = received.decode("utf-8", "replace")
        self.answers.append(Answer(f"raw {data[:60]!r}", status, text))

    def close(self) -> None:
        self.http.close()


def sweep(
    base_url: str,
    routes: list[tuple[str, str]],
    good_id: int,
    *,
    headers: dict[str, bytes] | None = None,
) -> list[Answer]:
    """Every kind of bad request against every route; return all the answers."""
    sweeper = Sweeper(base_url)
    auth = headers or {}
    try:
        for method, route in routes:
            has_id = "{}" in route
            path = route.format(good_id)
            for raw_id in BAD_IDS if has_id else []:
                sweeper.send(method, route.format(raw_id), headers=auth)
            for query in BAD_QUERIES:
                sweeper.send(method, f"{path}?{query}", headers=auth)
            for bad in BAD_HEADERS:
                sweeper.send(method, path, headers={**auth, **bad})
            wrong = ["POST" if method == "GET" else "GET", *OTHER_METHODS]
            for other in wrong:
                sweeper.send(other, path, headers=auth)
            if method == "POST":
                for content_type, body in BAD_BODIES:
                    typed = {"Content-Type": content_type} if content_type else {}
                    sweeper.send(method, path, headers={**auth, **typed}, content=body)
        for path in UNKNOWN_PATHS:
            sweeper.send("GET", path, headers=auth)
        for data in RAW_REQUESTS:
            sweeper.send_raw(data)
    finally:
        sweeper.close()
    return sweeper.answers


def check(answers: list[Answer], cl: Cluster) -> None:
    extra = [str(cl.root), str(cl.root.resolve())]
    errors = [answer for answer in answers if answer.status >= 400 or answer.status == 0]
    assert len(errors) > 100, "the sweep should mostly hit error paths"
    offenders = [
        f"{answer.request} -> {answer.status}: {found}\n{answer.text[:600]}"
        for answer in errors
        if (found := leaks(answer, extra))
    ]
    assert offenders == [], "\n\n".join(offenders)
    server_errors = [
        f"{a.request} -> {a.status}\n{a.text[:600]}" for a in errors if a.status >= 500
    ]
    assert server_errors == [], "\n\n".join(server_errors)
    for node in [cl.server, *cl.clients]:
        assert node is not None
        assert "Traceback" not in node.log(), node.log()[-5000:]


def seed(api: Api) -> None:
    """One finished job, so that id 1 exists on the server and on the client."""
    job_id = api.submit("echo ok > ok.txt\n")
    assert job_id == 1
    assert api.wait_for(job_id, *FINAL)["status"] == "Completed"


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("sweep")) as running:
        seed(running.api)
        yield running


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("sweep-auth")
    tokens = root / "tokens.txt"
    tokens.write_text(f"{USER_TOKEN} 1\n")
    with cluster(
        root,
        client_env={"CLIENT_TOKEN": CLIENT_TOKEN},
        server_env={"API_TOKENS_FILE": str(tokens), "CLIENT_TOKEN": CLIENT_TOKEN},
    ) as running:
        assert running.server is not None
        seed(Api(running.server.url, USER_TOKEN))
        yield running


def test_the_detector_sees_a_traceback_and_a_path(tmp_path: Path) -> None:
    """The check itself: what a leaked FastAPI validation error looked like (issue 16.5)."""
    leaked = Answer(
        "GET /retrieve/1?wait=abc",
        400,
        "Invalid request: 1 validation error:\n"
        f'  File "{Path(job_orchestrator.__file__).parent}/client/app.py", line 269, in retrieve',
    )
    assert len(leaks(leaked, [])) >= 3
    assert leaks(Answer("x", 400, f"saved under {tmp_path}/client0/1"), [])
    assert leaks(Answer("x", 400, "Invalid URL: Cannot parse `abc` to a `u32`"), []) == []
    assert leaks(Answer("x", 400, "Invalid `boundary` for `multipart/form-data` request"), []) == []


def test_server_error_answers_show_no_internals(plain: Cluster) -> None:
    assert plain.server is not None
    check(sweep(plain.server.url, SERVER_ROUTES, 1), plain)


def test_client_error_answers_show_no_internals(plain: Cluster) -> None:
    check(sweep(plain.clients[0].url, CLIENT_ROUTES, 1), plain)


@pytest.mark.parametrize(
    "authorization",
    [b"", b"Bearer", b"Bearer wrong", b"bearer \xff", b"Basic abc", b"Bearer " + b"x" * 5000],
)
def test_refused_callers_see_no_internals(guarded: Cluster, authorization: bytes) -> None:
    assert guarded.server is not None
    headers = {"Authorization": authorization} if authorization else {}
    answers = sweep(guarded.server.url, SERVER_ROUTES, 1, headers=headers)
    answers += sweep(guarded.clients[0].url, CLIENT_ROUTES, 1, headers=headers)
    check(answers, guarded)


def test_authorised_bad_requests_show_no_internals(guarded: Cluster) -> None:
    assert guarded.server is not None
    as_user = {"Authorization": f"Bearer {USER_TOKEN}".encode()}
    as_server = {"Authorization": f"Bearer {CLIENT_TOKEN}".encode()}
    answers = sweep(guarded.server.url, SERVER_ROUTES, 1, headers=as_user)
    answers += sweep(guarded.clients[0].url, CLIENT_ROUTES, 1, headers=as_server)
    check(answers, guarded)
