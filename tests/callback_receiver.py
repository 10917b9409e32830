"""A real HTTP server on a free 127.0.0.1 port that records the callbacks it receives.

Each request is answered with the next planned answer: a status code, or `HOLD` (the request
is recorded, then held unanswered until `release()`), then 200 once the plan is used up.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

HOLD = "hold"
#: Only to keep a broken test from hanging.
HOLD_LIMIT_S = 120.0


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: The receiver's own `scheme://host:port`.
    base: str = ""

    @property
    def url(self) -> str:
        """The callback URL as submitted (a bare `http://host:port` arrives as path `/`)."""
        return self.base if self.path == "/" else self.base + self.path

    def signed_with(self, secret: str, url: str | None = None) -> bool:
        """What a receiver checks (docs/api.md, "Callbacks"): the v2 HMAC of the time, delivery id,
        URL and body. `url`: the callback URL as submitted (default: as received)."""
        timestamp = self.headers.get("x-orchestrator-timestamp", "")
        delivery = self.headers.get("x-orchestrator-delivery", "")
        message = f"v2\n{timestamp}\n{delivery}\n{url or self.url}\n".encode() + self.body
        expected = "v2=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
        given = self.headers.get("x-orchestrator-signature", "")
        return bool(timestamp and delivery) and hmac.compare_digest(expected, given)


class CallbackReceiver:
    def __init__(self, *answers: int | str, tls: tuple[Path, Path] | None = None) -> None:
        """`tls`: (certificate, key) files to serve https with."""
        self.scheme = "https" if tls else "http"
        self.plan: deque[int | str] = deque(answers)
        self.received: list[Received] = []
        self._changed = threading.Condition()
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the http.server name
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {key.lower(): value for key, value in self.headers.items()}
                answer = receiver._record(
                    Received("POST", self.path, headers, body, base=receiver.url)
                )
                if answer == HOLD:
                    receiver._released.wait(HOLD_LIMIT_S)
                    answer = 200
                assert isinstance(answer, int)
                try:
                    self.send_response(answer)
                    if 300 <= answer < 400:
                        self.send_header("Location", "/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender is gone (killed while we held its request)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _record(self, request: Received) -> int | str:
        with self._changed:
            self.received.append(request)
            answer = self.plan.popleft() if self.plan else 200
            self._changed.notify_all()
        return answer

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host!s}:{port}"

    def wait_for(self, count: int, timeout_s: float = 90.0) -> list[Received]:
        """The first `count` requests, once they have arrived."""
        with self._changed:
            arrived = self._changed.wait_for(lambda: len(self.received) >= count, timeout_s)
            assert arrived, f"{len(self.received)} of {count} callbacks arrived: {self.received}"
            return list(self.received[:count])

    def release(self) -> None:
        self._released.set()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()


def receiving(*answers: int | str) -> Iterator[CallbackReceiver]:
    """For fixtures: a started receiver, shut down afterwards."""
    with CallbackReceiver(*answers) as receiver:
        yield receiver
