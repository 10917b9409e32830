"""What `Client` and `AsyncClient` share: requests to build and answers to read.

Each operation is an *exchange*: a generator that yields the requests it needs (`Call`) and
pauses (`Sleep`), receives each answer, and returns the result or raises an SDK error. The
sync and async clients only drive exchanges (send, sleep), so the protocol is written once;
the exchanges themselves are in _exchanges.
A driver sends every `Call` streamed and reads its body unless it is a ZIP, which an exchange
only ever needs the headers of (a wait, a status); downloads and logs stream on their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import httpx

from job_orchestrator.sdk._upload import CHUNK_BYTES, UploadBody, collect_files
from job_orchestrator.sdk.errors import (
    InvalidServer,
    JobFailed,
    JobNotFound,
    NotFinished,
    ServerError,
    ServerUnreachable,
    Unauthorized,
)
from job_orchestrator.sdk.models import Job
from job_orchestrator.status import Status
from job_orchestrator.wire import MESSAGE_HEADER

__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_SERVER",
    "MAX_ANSWER_BYTES",
    "Call",
    "Connection",
    "Exchange",
    "Sleep",
    "Target",
]

DEFAULT_SERVER = "http://127.0.0.1:5000"
SERVER_VARIABLE = "JO_SERVER"
TOKEN_VARIABLE = "JO_TOKEN"
#: The server's cap on `GET /download/{id}?wait=`.
MAX_WAIT_S = 60.0
#: A wait answered early without a final status (an older server ignores `?wait=`, or the
#: server is stopping) is repeated no sooner than this.
MIN_POLL_INTERVAL_S = 1.0
#: Slack on top of a held request's wait before its answer counts as late.
READ_SLACK_S = 30.0
CONNECT_TIMEOUT_S = 10.0
TRANSFER_TIMEOUT_S = 120.0
DEFAULT_PAGE_SIZE = 100
#: The most a non-ZIP answer (JSON, an error page) may hold. A page of 500 jobs is well under
#: 1 MiB; anything past this comes from a broken or hostile server and is not read into memory.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
#: How long after a wait's own deadline its held request may still answer before the wait
#: gives up (a server answers a held request at the end of the hold it was asked for).
WAIT_GRACE_S = 2.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call:
    request: httpx.Request


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


Step = Call | Sleep
Exchange = Generator[Step, httpx.Response | None, T]


def call(request: httpx.Request) -> Exchange[httpx.Response]:
    """Send `request`; the driver answers with its response, or throws ServerUnreachable in."""
    response = yield Call(request)
    assert response is not None, "a driver answers every Call with its response"
    return response


@dataclass(slots=True)
class Connection:
    """Where the server is, the token to send, and what we learnt about the server."""

    server: str
    token: str | None
    #: None until asked; False when the server has no `GET /jobs/{id}` (older versions).
    has_job_details: bool | None = field(default=None)

    @classmethod
    def resolve(
        cls, server: str | None, token: str | None, env: Mapping[str, str] | None = None
    ) -> Connection:
        """Arguments first, then JO_SERVER / JO_TOKEN (empty counts as unset), then defaults."""
        env = os.environ if env is None else env
        url = server or env.get(SERVER_VARIABLE) or DEFAULT_SERVER
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            raise InvalidServer(url) from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise InvalidServer(url)
        return cls(server=url.rstrip("/"), token=token or env.get(TOKEN_VARIABLE) or None)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        read_timeout_s: float | None = TRANSFER_TIMEOUT_S,
        **kwargs: Any,
    ) -> httpx.Request:
        headers = dict(kwargs.pop("headers", {}))
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        timeout = httpx.Timeout(TRANSFER_TIMEOUT_S, connect=CONNECT_TIMEOUT_S, read=read_timeout_s)
        return httpx.Request(
            method,
            self.server + path,
            params=params,
            headers=headers,
            extensions={"timeout": timeout.as_dict()},
            **kwargs,
        )

    def unreachable(self, error: httpx.TransportError) -> ServerUnreachable:
        reason = str(error) or type(error).__name__
        return ServerUnreachable(self.server, reason)


# ---- reading answers ---------------------------------------------------------------------


def answer_too_large(response: httpx.Response) -> ServerError:
    path = response.request.url.path
    return ServerError(
        f"the server's answer to {path} is larger than {MAX_ANSWER_BYTES} bytes (not read)",
        response.status_code,
    )


def declared_too_large(response: httpx.Response) -> bool:
    declared = content_length(response)
    return declared is not None and declared > MAX_ANSWER_BYTES


def buffered(response: httpx.Response, body: bytes) -> httpx.Response:
    """A copy of a streamed `response` holding `body`, its decoded content, read by a driver."""
    dropped = {"content-encoding", "content-length", "transfer-encoding"}
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in dropped]
    return httpx.Response(
        response.status_code, headers=headers, content=body, request=response.request
    )


def is_zip(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.startswith("application/zip")


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    if not response.headers.get("content-type", "").startswith("application/json"):
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def is_missing_route(response: httpx.Response) -> bool:
    """A 404 from the framework (no such route), not the JSON 404 of an unknown job."""
    return response.status_code == 404 and json_object(response) is None


def check(response: httpx.Response, job_id: int | None = None) -> None:
    """Raise the SDK error an answer of 400 or more stands for."""
    code = response.status_code
    if code < 400:
        return
    body = json_object(response)
    message = str(body.get("message", "")) if body else response.text.strip()[:500]
    if code in (401, 403):
        raise Unauthorized(message or "not authorized", code)
    # An unknown (or someone else's) job answers id 0; a known one without files its own id.
    if code == 404 and body is not None and job_id is not None and body.get("id") in (0, None):
        raise JobNotFound(job_id)
    if code == 404 and body is None:
        message = f"the server has no route {response.request.url.path} (an older version?)"
    raise ServerError(message, code)


def job_from_download(response: httpx.Response, job_id: int) -> Job:
    """The job as a `GET /download/{id}` answer shows it (a ZIP means Completed)."""
    check(response, job_id)
    if is_zip(response):
        return Job(job_id, Status.COMPLETED, unquote(response.headers.get(MESSAGE_HEADER, "")))
    body = json_object(response)
    if body is None:
        raise ServerError(f"unexpected answer of type {response.headers.get('content-type')}", 200)
    return Job.from_dict(body)


def _wait_text(seconds: float) -> str:
    # The server takes plain decimals only ("1e-05" is refused).
    return f"{max(0.0, min(MAX_WAIT_S, seconds)):.3f}"


def download_request(
    connection: Connection,
    job_id: int,
    *,
    wait_s: float | None = None,
    partial: bool = False,
    answer_within_s: float | None = None,
) -> httpx.Request:
    """`answer_within_s` bounds the wait for the answer of a held request (else hold + slack)."""
    if partial:
        return connection.request("GET", f"/download_partial/{job_id}")
    params = None if wait_s is None else {"wait": _wait_text(wait_s)}
    read = TRANSFER_TIMEOUT_S if wait_s is None else wait_s + READ_SLACK_S
    if answer_within_s is not None:
        read = min(read, max(answer_within_s, 0.0) + WAIT_GRACE_S)
    return connection.request("GET", f"/download/{job_id}", params=params, read_timeout_s=read)


@dataclass(slots=True)
class Target:
    """Where a download goes: written under a temporary name, renamed when complete.

    The temporary file is new and unpredictably named (created with O_EXCL|O_NOFOLLOW), so
    a symlink planted beside the destination is never followed and no other file is written.
    """

    path: Path
    temporary: Path | None = None

    @classmethod
    def of(cls, dest: str | os.PathLike[str], job_id: int, *, partial: bool) -> Target:
        path = Path(dest)
        if path.is_dir():
            path = path / (f"job-{job_id}-partial.zip" if partial else f"job-{job_id}.zip")
        return cls(path)

    def create(self) -> int:
        """Create the temporary file beside the destination; its open descriptor."""
        descriptor, name = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".part"
        )
        self.temporary = Path(name)
        # mkstemp makes it 0600; the result gets the mode any new file of the user gets.
        os.fchmod(descriptor, 0o666 & ~_umask())
        return descriptor

    def commit(self) -> None:
        assert self.temporary is not None, "create() first"
        os.replace(self.temporary, self.path)

    def discard(self) -> None:
        if self.temporary is not None:
            self.temporary.unlink(missing_ok=True)


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would race other threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def content_length(response: httpx.Response) -> int | None:
    declared = response.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else None


def result_job(response: httpx.Response, job_id: int, *, partial: bool) -> Job | None:
    """None when the answer is a ZIP to save; otherwise raise why there is none."""
    if is_zip(response) and response.status_code < 400:
        return None
    check(response, job_id)
    job = job_from_download(response, job_id)
    if partial or not job.is_final:
        raise NotFinished(job)
    raise JobFailed(job)


def upload_body(
    connection: Connection,
    files: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    service: str,
    user_id: int | None,
    callback_url: str | None = None,
) -> UploadBody:
    """The checked body of a submission (nothing is sent yet).

    Without `user_id` the field is left out when a token is set (the server takes the user
    from the token) and is `0` otherwise (the server requires one).
    """
    sources = [files] if isinstance(files, str | os.PathLike) else list(files)
    fields = {"service": service}
    if user_id is not None or not connection.token:
        fields["user_id"] = str(user_id or 0)
    if callback_url:
        fields["callback_url"] = callback_url
    return UploadBody(collect_files(sources), fields)


def logs_request(
    connection: Connection, job_id: int, *, follow: bool, offset: int = 0
) -> httpx.Request:
    params = {"follow": "1"} if follow else {}
    if offset:
        params["offset"] = str(offset)
    # A followed log may stay silent for as long as the job runs.
    read = None if follow else TRANSFER_TIMEOUT_S
    return connection.request("GET", f"/jobs/{job_id}/logs", params=params, read_timeout_s=read)
