"""What the differential test sees of one HTTP answer, and raw requests httpx will not send.

An answer is reduced to what a program can depend on: the status code, the content type, the
`Location` and `Allow` headers, and the body (JSON parsed; a ZIP as its member names and the
contents of the small text members; other text as is). Job ids are replaced by the label of
the upload that created them, so the two servers' sequences compare even if their ids differ.
"""

from __future__ import annotations

import io
import json
import select
import socket
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

#: Headers a client acts on; the others (date, server, content-length) are transport detail.
COMPARED_HEADERS = ("location", "allow")


@dataclass(frozen=True)
class Seen:
    status: int
    content_type: str | None
    headers: tuple[tuple[str, str], ...]
    body: Any

    def describe(self) -> str:
        body = json.dumps(self.body, sort_keys=True, default=str)
        if len(body) > 300:
            body = body[:300] + "..."
        headers = "".join(f" {name}: {value}" for name, value in self.headers)
        return f"{self.status} {self.content_type}{headers} {body}"


def _zip_body(content: bytes) -> dict[str, Any]:
    archive = zipfile.ZipFile(io.BytesIO(content))
    members: dict[str, Any] = {}
    for info in archive.infolist():
        if info.is_dir() or info.filename.endswith(".zip") or info.file_size > 4096:
            members[info.filename] = "<not compared>"
        else:
            members[info.filename] = archive.read(info).decode(errors="replace")
    return {"zip": members}


def seen(
    status: int, headers: httpx.Headers | dict[str, str], content: bytes, ids: dict[int, str]
) -> Seen:
    lowered = {name.lower(): value for name, value in headers.items()}
    content_type = lowered.get("content-type")
    body: Any
    if not content:  # HEAD, or a bare status
        body = ""
    elif content_type == "application/zip":
        body = _zip_body(content)
    elif content_type == "application/json":
        body = json.loads(content)
        if isinstance(body, dict) and isinstance(body.get("id"), int) and body["id"] in ids:
            body = {**body, "id": ids[body["id"]]}
    else:
        body = content.decode(errors="replace")
    kept = tuple((name, lowered[name]) for name in COMPARED_HEADERS if name in lowered)
    return Seen(status, content_type, kept, body)


def of(response: httpx.Response, ids: dict[int, str]) -> Seen:
    return seen(response.status_code, response.headers, response.content, ids)


def raw_post(
    port: int, path: str, headers: dict[str, str], body: Iterator[bytes], ids: dict[int, str]
) -> Seen:
    """POST a streamed body, stopping as soon as the server answers (as it may, mid-body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        sock.sendall((head + "Connection: close\r\n\r\n").encode())
        for chunk in body:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(chunk)
            except OSError:  # the server answered and closed while we were still sending
                break
        received = b""
        while b"\r\n\r\n" not in received or not _complete(received):
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            received += data
    head_bytes, _, content = received.partition(b"\r\n\r\n")
    lines = head_bytes.decode(errors="replace").split("\r\n")
    status = int(lines[0].split()[1])
    answer_headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        answer_headers[name.strip().lower()] = value.strip()
    if answer_headers.get("transfer-encoding") == "chunked":
        content = _dechunk(content)
    return seen(status, answer_headers, content, ids)


def _complete(received: bytes) -> bool:
    head, _, content = received.partition(b"\r\n\r\n")
    for line in head.decode(errors="replace").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return len(content) >= int(value)
    return False  # chunked or unknown: read until the server closes


def _dechunk(content: bytes) -> bytes:
    out = b""
    while content:
        size_line, _, rest = content.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        content = rest[size + 2 :]
    return out
