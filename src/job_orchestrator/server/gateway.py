"""HTTP calls from the server to its clients (executor nodes), with errors classified.

Every call has a timeout. Connection failures, timeouts and 5xx answers raise
TransientClientError (worth retrying); of those, failures before a connection existed
(refused, DNS, connect timeout) raise UndeliveredError, since the client cannot have seen the
request. 4xx answers and unreadable replies raise
PermanentClientError, and a 404 for a payload we handed over raises PayloadLostError.
Requests carry only what the original client understands plus headers it ignores
(`Idempotency-Key`), so a Rust client can be driven unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx

from job_orchestrator.config import NodeConfig
from job_orchestrator.errors import (
    PartialTooLargeError,
    PayloadLostError,
    PermanentClientError,
    TransientClientError,
    UndeliveredError,
)
from job_orchestrator.server.jobfiles import temporary_name
from job_orchestrator.server.metrics import ServerMetrics, observed_call
from job_orchestrator.status import Status
from job_orchestrator.wire import (
    CAPACITY_HEADER,
    CLOCK_HEADER,
    EXIT_CODE_HEADER,
    IDEMPOTENCY_HEADER,
    LOG_STATUS_HEADER,
    LONG_POLL_HEADER,
    MESSAGE_HEADER,
    STARTED_AGE_HEADER,
    TIMEOUT_HEADER,
)

_CHUNK_BYTES = 1024 * 1024


def join_url(base: str, payload_id: int) -> str:
    """`{url}/{id}` as upstream, without the `//` a trailing slash used to produce."""
    return f"{base.rstrip('/')}/{payload_id}"


def node_base_url(node: NodeConfig) -> str:
    """`http://client:9000/submit` -> `http://client:9000` (where /health and /load live)."""
    return base_url(node.upload_url)


def base_url(upload_url: str) -> str:
    """A client's upload URL without its last path segment."""
    url = upload_url.rstrip("/")
    scheme_end = url.find("://") + 3
    slash = url.rfind("/")
    return url[:slash] if slash >= scheme_end else url


def node_logs_url(node: NodeConfig) -> str:
    """`http://client:9000/retrieve` -> `http://client:9000/logs` (our client's /logs/{id})."""
    url = node.download_url.rstrip("/")
    slash = url.rfind("/")
    return f"{url[: slash + 1]}logs" if slash != -1 else f"{url}/logs"


@dataclass(frozen=True, slots=True)
class LogAnswer:
    """A client's /logs answer: its body, and whether that body ends the log."""

    #: The payload was final before the client read the log: the body is all the rest.
    final: bool
    chunks: AsyncIterator[bytes]


@dataclass(frozen=True, slots=True)
class NodeReport:
    max_concurrent: int | None
    load_percent: float | None


@dataclass(frozen=True, slots=True)
class RetrieveResult:
    status: Status
    message: str
    long_polled: bool
    #: run.sh's exit status, from our client's header (the original's client sends none).
    exit_code: int | None = None
    #: When run.sh started, on this server's clock (our client's age header; else None).
    started_at: float | None = None


def _exit_code(response: httpx.Response) -> int | None:
    raw = response.headers.get(EXIT_CODE_HEADER, "")
    return int(raw) if re.fullmatch(r"-?[0-9]{1,10}", raw) and abs(int(raw)) < 2**31 else None


def _started_at(response: httpx.Response) -> float | None:
    try:
        age_s = float(response.headers.get(STARTED_AGE_HEADER, ""))
    except ValueError:
        return None
    return time.time() - age_s if 0 <= age_s < float("inf") else None


def _raise_for_status(response: httpx.Response, what: str) -> None:
    if response.status_code == 404:
        raise PayloadLostError(f"{what}: client answered 404 (payload not found)")
    # 408: our client timed the dispatch body out (UPLOAD_IDLE_TIMEOUT); 429: it is busy.
    if response.status_code >= 500 or response.status_code in (408, 429):
        raise TransientClientError(f"{what}: client answered {response.status_code}")
    if not 200 <= response.status_code < 300:
        raise PermanentClientError(f"{what}: client answered {response.status_code}")


def _is_zip(response: httpx.Response) -> bool:
    return response.status_code == 200 and "application/zip" in response.headers.get(
        "content-type", ""
    )


def _payload_json(body: bytes, what: str) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError:
        raise PermanentClientError(f"{what}: client sent a reply that is not JSON") from None
    if not isinstance(payload, dict):
        raise PermanentClientError(f"{what}: client sent an unexpected JSON reply")
    return payload


class NodeGateway:
    """One pooled httpx client for all calls to all nodes."""

    def __init__(self, *, timeout_s: float, metrics: ServerMetrics | None = None) -> None:
        self.metrics = metrics
        self._timeout_s = timeout_s
        self._instance = secrets.token_hex(8)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
            trust_env=False,
        )

    async def close(self) -> None:
        await self._http.aclose()

    @staticmethod
    def _headers(token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    @contextlib.asynccontextmanager
    async def _call(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            # No connection was made (or none was free), so nothing was sent.
            raise UndeliveredError(f"{what}: {type(error).__name__}: {error}") from error
        except httpx.TimeoutException as error:
            raise TransientClientError(f"{what}: timed out ({type(error).__name__})") from error
        except httpx.TransportError as error:
            raise TransientClientError(f"{what}: {type(error).__name__}: {error}") from error

    @observed_call("submit")
    async def submit(
        self,
        node: NodeConfig,
        files_dir: Path,
        *,
        dispatch_key: str,
        token: str | None,
        timeout_s: float | None = None,
    ) -> int:
        """POST every regular file under files_dir as a multipart part; return the payload id."""
        what = f"dispatch to {node.upload_url}"
        files = await asyncio.to_thread(_regular_files, files_dir)
        body = MultipartBody(files)
        async with self._call(what):
            response = await self._http.post(
                node.upload_url,
                content=body.stream(),
                headers={
                    "Content-Type": body.content_type,
                    "Content-Length": str(body.length),
                    IDEMPOTENCY_HEADER: dispatch_key,
                    **({TIMEOUT_HEADER: f"{timeout_s:g}"} if timeout_s else {}),
                    **self._headers(token),
                },
            )
        if response.status_code == 404:
            raise PermanentClientError(f"{what}: client answered 404")
        _raise_for_status(response, what)
        payload_id = _payload_json(response.content, what).get("id")
        if not isinstance(payload_id, int) or isinstance(payload_id, bool) or payload_id <= 0:
            raise PermanentClientError(f"{what}: client reply has no valid payload id")
        return payload_id

    @observed_call("retrieve")
    async def retrieve(
        self,
        node: NodeConfig,
        payload_id: int,
        zip_destination: Path,
        *,
        wait_s: float,
        known: Status,
        token: str | None,
        settle_s: float = 0.0,
    ) -> RetrieveResult:
        """Ask for a payload; a Completed one is streamed into zip_destination (atomically).

        `wait`/`known` ask our client to hold the request until the status differs from
        `known`, and `settle` until that status has held so long; the original client
        ignores them and answers at once.
        """
        what = f"retrieve {payload_id} from {node.download_url}"
        params = None
        if wait_s > 0:
            params = {"wait": f"{wait_s:g}", "known": known.wire}
            if settle_s > 0:
                params["settle"] = f"{settle_s:g}"
        timeout = httpx.Timeout(self._timeout_s + wait_s, connect=min(self._timeout_s, 10.0))
        async with (
            self._call(what),
            self._http.stream(
                "GET",
                join_url(node.download_url, payload_id),
                params=params,
                # Lets the client tell a fresh request from one that sat in its socket.
                headers={
                    CLOCK_HEADER: f"{self._instance} {time.monotonic():.6f}",
                    **self._headers(token),
                },
                timeout=timeout,
            ) as response,
        ):
            _raise_for_status(response, what)
            # Dated on arrival of the headers, before the body streams in.
            started_at = _started_at(response)
            if _is_zip(response):
                await _stream_to_file(response, zip_destination)
                # A Completed result may still say what was left out of it.
                message = unquote(response.headers.get(MESSAGE_HEADER, ""))
                return RetrieveResult(
                    Status.COMPLETED,
                    message,
                    long_polled=False,
                    exit_code=_exit_code(response),
                    started_at=started_at,
                )
            body = await response.aread()
        payload = _payload_json(body, what)
        try:
            status = Status.from_wire(str(payload.get("status")))
        except ValueError:
            raise PermanentClientError(
                f"{what}: unknown status {payload.get('status')!r}"
            ) from None
        return RetrieveResult(
            status=status,
            message=unquote(response.headers.get(MESSAGE_HEADER, "")),
            long_polled=response.headers.get(LONG_POLL_HEADER) == "1",
            exit_code=_exit_code(response),
            started_at=started_at,
        )

    @observed_call("retrieve_partial")
    async def fetch_partial(
        self, node: NodeConfig, payload_id: int, destination: Path, *, token: str | None
    ) -> None:
        """Store the client's partial ZIP at destination (atomically)."""
        async with self.open_partial(node, payload_id, token=token) as response:
            await _stream_to_file(response, destination)

    @contextlib.asynccontextmanager
    async def open_partial(
        self, node: NodeConfig, payload_id: int, *, token: str | None
    ) -> AsyncIterator[httpx.Response]:
        """The client's partial ZIP as an open streaming response (for proxying)."""
        what = f"partial retrieve {payload_id} from {node.partial_url}"
        async with (
            self._call(what),
            self._http.stream(
                "GET", join_url(node.partial_url, payload_id), headers=self._headers(token)
            ) as response,
        ):
            if response.status_code == 413:
                reason = unquote(response.headers.get(MESSAGE_HEADER, "")) or "files too large"
                raise PartialTooLargeError(reason)
            _raise_for_status(response, what)
            if not _is_zip(response):
                raise PermanentClientError(f"{what}: client did not send a ZIP")
            yield response

    @contextlib.asynccontextmanager
    async def open_log(
        self, node: NodeConfig, payload_id: int, *, offset: int, wait_s: float, token: str | None
    ) -> AsyncIterator[LogAnswer]:
        """Our client's log of a payload from `offset`, streamed for up to `wait_s`.

        The original client has no /logs route: it answers 404, raised as PayloadLostError
        like an unknown payload. Errors while the body streams are classified the same way.
        """
        url = node_logs_url(node)
        what = f"log of {payload_id} from {url}"
        params = {"offset": str(offset), **({"wait": f"{wait_s:g}"} if wait_s > 0 else {})}
        timeout = httpx.Timeout(self._timeout_s + wait_s, connect=min(self._timeout_s, 10.0))
        async with (
            self._call(what),
            self._http.stream(
                "GET",
                join_url(url, payload_id),
                params=params,
                headers=self._headers(token),
                timeout=timeout,
            ) as response,
        ):
            _raise_for_status(response, what)
            try:
                status = Status.from_wire(response.headers.get(LOG_STATUS_HEADER, ""))
            except ValueError:
                raise PermanentClientError(f"{what}: the answer is not a log") from None
            yield LogAnswer(status.is_terminal(), response.aiter_bytes())

    @observed_call("check")
    async def check(self, node: NodeConfig, *, token: str | None) -> NodeReport:
        """The node's /health (with its declared capacity) and /load; raises if it is down."""
        base = node_base_url(node)
        async with self._call(f"health check of {base}"):
            health = await self._http.get(f"{base}/health", headers=self._headers(token))
        if health.status_code >= 500:
            raise TransientClientError(f"health check of {base}: answered {health.status_code}")
        if health.status_code != 200:
            # It answers HTTP, so it is up; its /health just is not where we derived it
            # (a URL behind a path prefix, say). Nothing more to learn from it.
            return NodeReport(max_concurrent=None, load_percent=None)
        capacity = health.headers.get(CAPACITY_HEADER, "")
        load: float | None = None
        with contextlib.suppress(httpx.HTTPError, ValueError):
            answer = await self._http.get(f"{base}/load", headers=self._headers(token))
            if answer.status_code == 200:
                load = float(answer.json())
        return NodeReport(
            max_concurrent=int(capacity) if capacity.isdigit() and int(capacity) > 0 else None,
            load_percent=load,
        )

    @observed_call("kill")
    async def kill(self, node: NodeConfig, payload_id: int, *, token: str | None) -> None:
        what = f"kill {payload_id} at {node.terminate_url}"
        async with self._call(what):
            response = await self._http.post(
                join_url(node.terminate_url, payload_id), headers=self._headers(token)
            )
        _raise_for_status(response, what)


_PLAIN_NAME = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")


class MultipartBody:
    """A multipart/form-data body streamed from disk, shaped as the original server's.

    Every part carries `filename` (what the original client keys files by); names outside
    the URL path-segment set are sent as `name*=utf-8''...`, as reqwest does. Quotes and
    backslashes in file names are backslash-escaped (httpx would percent-encode them, which
    no receiver decodes).
    """

    def __init__(self, files: list[tuple[str, Path]]) -> None:
        self._boundary = "-".join(secrets.token_hex(8) for _ in range(4))
        self._parts = [(self._part_header(name, path.name), path) for name, path in files]
        self._closing = f"--{self._boundary}--\r\n".encode()
        self.content_type = f"multipart/form-data; boundary={self._boundary}"
        self.length = len(self._closing) + sum(
            len(header) + path.stat().st_size + 2 for header, path in self._parts
        )

    def _part_header(self, name: str, filename: str) -> bytes:
        name_param = (
            f'name="{name}"'
            if _PLAIN_NAME.fullmatch(name)
            else f"name*=utf-8''{quote(name, safe='')}"
        )
        escaped = (
            filename.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("\r", "%0D")
            .replace("\n", "%0A")
        )
        return (
            f"--{self._boundary}\r\n"
            f'Content-Disposition: form-data; {name_param}; filename="{escaped}"\r\n\r\n'
        ).encode()

    async def stream(self) -> AsyncIterator[bytes]:
        for header, path in self._parts:
            yield header
            with path.open("rb") as source:
                while chunk := await asyncio.to_thread(source.read, _CHUNK_BYTES):
                    yield chunk
            yield b"\r\n"
        yield self._closing


def _regular_files(root: Path) -> list[tuple[str, Path]]:
    """(relative name, path) of every regular file under root, in a stable order."""
    return [
        (path.relative_to(root).as_posix(), path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    ]


async def _stream_to_file(response: httpx.Response, destination: Path) -> None:
    # Two collectors of one job (a replica taking over a job its owner still follows) each
    # write their own file; the rename makes one whole copy win.
    partial = temporary_name(destination)
    try:
        with partial.open("wb") as sink:
            async for chunk in response.aiter_bytes(_CHUNK_BYTES):
                sink.write(chunk)
        os.replace(partial, destination)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
