"""The transport of the server's calls to its clients: one aiohttp session, timeouts, and
failures classified as our errors (node_answers.py `classified_failure`).

The HTTP library is aiohttp, not httpx: httpcore's pool scans (and polls the socket of) every
pooled connection on every request, which made it the server's largest cost with 64
long-polls open to one client (bench/README.md). Unlike httpx, aiohttp sends a GET once more
when its connection closes before any answer (a kept-alive connection the client was just
closing, RFC 9112 9.3.1.1); never a POST, never after an answer began.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from job_orchestrator._filestream import CHUNK_BYTES
from job_orchestrator.server.metrics import ServerMetrics
from job_orchestrator.server.node_answers import classified_failure
from job_orchestrator.wire import CLOCK_HEADER, DISPATCH_KEY_HEADER

#: Idle connections are closed before our client's uvicorn closes them (after 5 s), so a
#: request rarely meets a connection the client is closing.
_KEEPALIVE_S = 4.0
#: h11 (httpx) accepted 16 KiB of response headers; a long X-Orchestrator-Message must fit.
_MAX_HEADER_BYTES = 16 * 1024


class NodeTransport:
    """How the server's calls to its nodes travel: one aiohttp session (one unlimited
    keep-alive pool) for all calls to all nodes, each call's timeouts, and its failures
    classified (node_answers.py). `NodeGateway` (gateway.py) makes the calls over it.

    Built inside the running loop (aiohttp binds a session to it): the app's lifespan.
    """

    def __init__(self, *, timeout_s: float, metrics: ServerMetrics | None = None) -> None:
        self.metrics = metrics
        self._timeout_s = timeout_s
        self._instance = secrets.token_hex(8)
        self._plain_timeout = self.timeout_for(0.0)
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0, limit_per_host=0, keepalive_timeout=_KEEPALIVE_S
            ),
            timeout=self._plain_timeout,
            # Answers are stored and relayed byte for byte: ask for them uncompressed.
            headers={"Accept-Encoding": "identity"},
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            max_line_size=_MAX_HEADER_BYTES,
            max_field_size=_MAX_HEADER_BYTES,
            # Room for what arrives while a big ZIP's last chunk is written (aiohttp stops
            # reading the socket at twice this); the 64 KiB default stalled it at once.
            read_bufsize=CHUNK_BYTES,
        )

    async def close(self) -> None:
        await self._http.close()

    def timeout_for(self, wait_s: float) -> aiohttp.ClientTimeout:
        """No total: a big ZIP may take long. Each read (of a long-poll: plus its wait) may not."""
        connect = min(self._timeout_s, 10.0)
        return aiohttp.ClientTimeout(
            total=None, connect=connect, sock_connect=connect, sock_read=self._timeout_s + wait_s
        )

    def _request(
        self, method: str, url: str, *, wait_s: float = 0.0, **options: Any
    ) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        # httpx followed no redirects; a 3xx stays an answer (PermanentClientError).
        return self._http.request(
            method,
            url,
            allow_redirects=False,
            timeout=self.timeout_for(wait_s) if wait_s else self._plain_timeout,
            **options,
        )

    def _stamp(self) -> dict[str, str]:
        """`X-Orchestrator-Clock`: when this server process sent the request, on its own
        clock, so our client can tell a fresh request from one that sat in its socket (the
        lease: client/lease.py)."""
        return {CLOCK_HEADER: f"{self._instance} {time.monotonic():.6f}"}

    @staticmethod
    def _headers(token: str | None, key: str | None = None) -> dict[str, str]:
        """Authorization, and on a request about a payload the job's dispatch key."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if key:
            headers[DISPATCH_KEY_HEADER] = key
        return headers

    @contextlib.asynccontextmanager
    async def _call(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            classified = classified_failure(what, error)
            if classified is error:
                raise  # our own disk (writing a result): the caller's to judge
            raise classified from error
