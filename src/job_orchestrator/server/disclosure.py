"""What users who are not admins may learn of the orchestrator's own machinery.

With authentication on, a caller who is not an admin (ADMIN_USERS, JWT_ADMIN_CLAIM) sees
each client by a name (`<service>-<n>`: the n-th client of the first service that lists it),
never its URL, and no payload ids: in job details and listings (`client`, `queue.detail`,
`message`), in error bodies (a 502 naming the call that failed) and in the
`X-Orchestrator-Message` header. The
stored messages keep every detail, for admins, the status page and the log: answers are
rewritten on their way out, by `DisclosureMiddleware`, which is why the engine's messages can
say what happened in full and no route has to remember to hide anything.

Only JSON bodies and the message header are rewritten; result ZIPs and run.sh's log are the
job's own. Without authentication every caller may act as anyone, so nothing is hidden.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from job_orchestrator.config import ServerSettings
from job_orchestrator.server.node_wire import base_url
from job_orchestrator.server.requesting import Principal, caller_of
from job_orchestrator.wire import MESSAGE_HEADER

#: A client's URL in a message (any path on it), found by its base `scheme://host:port`.
_URL_TAIL = rb"(?:/[^\s\"'<>,;:)]*)?"
#: A URL named as a client that is no longer configured (no name to give it).
_FORMER_CLIENT = re.compile(rb"client https?://[^\s\"'<>,;)]+")
#: A payload id, as the gateway's calls name one ("retrieve 17 from ...", "kill 17 at ...").
_PAYLOAD_ID = re.compile(rb"\b(retrieve|log of|kill|payload) \d+\b")
_MESSAGE_HEADER = MESSAGE_HEADER.lower().encode()
#: What api.py leaves unquoted in the message header (its `quote(..., safe=...)`).
_HEADER_SAFE = " :/,.;()'-_="


class ClientNames:
    """Rewrites the text of an answer: client URLs become names, payload ids go."""

    def __init__(self, named_urls: Iterable[tuple[str, str]]) -> None:
        #: Each client as messages spell it: its base URL (with any path after it), its
        #: `host:port` (connection errors) and `('host', port)` (the socket's own errors).
        self._names: dict[bytes, bytes] = {}
        patterns: dict[bytes, bytes] = {}
        for url, name in named_urls:
            base = base_url(url)
            parsed = urlsplit(base)
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            host = parsed.hostname or ""
            spellings = {
                base.encode(): re.escape(base.encode()) + _URL_TAIL,
                f"{host}:{port}".encode(): rb"(?<![\w.-])"
                + re.escape(f"{host}:{port}".encode())
                + rb"(?!\d)",
                f"('{host}', {port})".encode(): re.escape(f"('{host}', {port})".encode()),
            }
            for spelling, pattern in spellings.items():
                self._names.setdefault(spelling, name.encode())
                patterns.setdefault(spelling, pattern)
        # Longest first: one spelling may begin another (a port of more digits).
        ordered = sorted(patterns, key=len, reverse=True)
        self._spellings = ordered
        self._urls = (
            re.compile(b"|".join(b"(" + patterns[spelling] + b")" for spelling in ordered))
            if ordered
            else None
        )

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ClientNames:
        return cls(
            (url, f"{service.name}-{index}")
            for service in settings.services.values()
            for index, node in enumerate(service.nodes, start=1)
            for url in (node.upload_url, node.download_url, node.terminate_url)
        )

    def rewrite(self, text: bytes) -> bytes:
        if self._urls is not None:
            text = self._urls.sub(self._name_of, text)
        text = _FORMER_CLIENT.sub(b"client former-client", text)
        return _PAYLOAD_ID.sub(rb"\1", text)

    def _name_of(self, found: re.Match[bytes]) -> bytes:
        assert found.lastindex is not None
        return self._names[self._spellings[found.lastindex - 1]]

    def rewrite_header(self, value: bytes) -> bytes:
        """The percent-encoded message header, rewritten as its decoded text."""
        text = unquote(value.decode("latin-1"))
        rewritten = self.rewrite(text.encode()).decode()
        return quote(rewritten, safe=_HEADER_SAFE).encode("latin-1")


class DisclosureMiddleware:
    """Applies ClientNames to every answer to a caller who is not an admin (see the module)."""

    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app = app
        self.names = ClientNames.from_settings(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._hides_from(scope):
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _RewritingSend(send, self.names))

    def _hides_from(self, scope: Scope) -> bool:
        caller = caller_of(scope)  # ANYONE (authentication off) is an admin
        return not (isinstance(caller, Principal) and caller.admin)


class _RewritingSend:
    """Holds a JSON answer until its body is complete, then sends it rewritten."""

    def __init__(self, send: Send, names: ClientNames) -> None:
        self._send = send
        self._names = names
        self._start: Message | None = None
        self._body = bytearray()

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (key, self._names.rewrite_header(value) if key == _MESSAGE_HEADER else value)
                for key, value in message.get("headers", [])
            ]
            message = {**message, "headers": headers}
            if _is_json(headers):
                self._start = message
                return
        elif message["type"] == "http.response.body" and self._start is not None:
            self._body += message.get("body", b"")
            if message.get("more_body", False):
                return
            body = self._names.rewrite(bytes(self._body))
            length = str(len(body)).encode()
            headers = [
                (key, length if key == b"content-length" else value)
                for key, value in self._start["headers"]
            ]
            await self._send({**self._start, "headers": headers})
            message = {"type": "http.response.body", "body": body, "more_body": False}
        await self._send(message)


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        key == b"content-type" and value.startswith(b"application/json") for key, value in headers
    )
