"""A server that speaks the user API's routes badly on purpose, on a free loopback port.

A real HTTP server (http.server in a thread), not a patch of the SDK: it holds requests
forever, sends answers far too large, and repeats page cursors, so the tests can check what
the SDK and the CLI do with a broken or hostile server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

#: What /jobs/{id} streams: this many bytes of JSON (far past the SDK's bound).
HUGE_ANSWER_BYTES = 256 * 1024 * 1024
_CHUNK = b" " * (1024 * 1024)


@dataclass
class Hostility:
    """What the server did, read by the tests."""

    url: str = ""
    #: Bytes of the huge answer the server managed to send before the reader hung up.
    huge_bytes_sent: int = 0
    pages_served: int = 0
    release: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    hostility: Hostility

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/jobs":
            self._page()
        elif path.startswith("/jobs/"):
            self._huge(declared=path.endswith("/7"))
        elif path.startswith("/download/"):
            self._hold()
        else:
            self._json(404, {"id": 0, "status": "", "message": "no such route"})

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _page(self) -> None:
        """Every page names the same next cursor: a client that trusts it loops forever."""
        self.hostility.pages_served += 1
        job = {"id": self.hostility.pages_served, "status": "Completed", "message": ""}
        self._json(200, {"jobs": [job], "next_cursor": "again"})

    def _huge(self, *, declared: bool) -> None:
        """A JSON answer of HUGE_ANSWER_BYTES, with its length declared or chunked."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if declared:
            self.send_header("Content-Length", str(HUGE_ANSWER_BYTES))
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._send(b'{"id": 8, "status": "Running", "message": "', chunked=not declared)
            while self.hostility.huge_bytes_sent < HUGE_ANSWER_BYTES:
                self._send(_CHUNK, chunked=not declared)
        except OSError:
            return  # the reader hung up: what it read is counted

    def _send(self, data: bytes, *, chunked: bool) -> None:
        if chunked:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.wfile.write(data)
        self.hostility.huge_bytes_sent += len(data)

    def _hold(self) -> None:
        """Never answer a wait (until the test ends)."""
        self.hostility.release.wait(120)
        self._json(200, {"id": 1, "status": "Running", "message": ""})


@contextmanager
def hostile_server() -> Iterator[Hostility]:
    hostility = Hostility()
    handler = type("Handler", (_Handler,), {"hostility": hostility})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    hostility.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="hostile-server", daemon=True)
    thread.start()
    try:
        yield hostility
    finally:
        hostility.release.set()
        server.shutdown()
        server.server_close()
