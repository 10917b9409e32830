"""What the server sends its clients: their URLs, derived as upstream does, and the dispatch body.

Apart from the gateway (which does the sending) so the views can derive a node's URLs too.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from urllib.parse import quote

from job_orchestrator._filestream import read_ahead
from job_orchestrator.config import NodeConfig


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


_PLAIN_NAME = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")


class MultipartBody:
    """A multipart/form-data body streamed from disk, shaped as the original server's.

    Every part carries `filename` (what the original client keys files by); names outside
    the URL path-segment set are sent as `name*=utf-8''...`, as reqwest does. Quotes and
    backslashes in file names are backslash-escaped (httpx would percent-encode them, which
    no receiver decodes). Sent with its exact Content-Length, never chunked.
    """

    def __init__(
        self, files: list[tuple[str, Path]], fields: Mapping[str, str] | None = None
    ) -> None:
        self._boundary = "-".join(secrets.token_hex(8) for _ in range(4))
        self._parts = [(self._part_header(name, path.name), path) for name, path in files]
        # Text parts (no filename): after the files, each whole in one chunk.
        self._fields = b"".join(
            f"--{self._boundary}\r\nContent-Disposition: form-data; "
            f'name="{name}"\r\n\r\n{value}\r\n'.encode()
            for name, value in (fields or {}).items()
        )
        self._closing = f"--{self._boundary}--\r\n".encode()
        self.content_type = f"multipart/form-data; boundary={self._boundary}"
        self.length = (
            len(self._fields)
            + len(self._closing)
            + sum(len(header) + path.stat().st_size + 2 for header, path in self._parts)
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
            # The next chunk is read on a thread while aiohttp sends this one.
            chunks = read_ahead(path)
            try:
                async for chunk in chunks:
                    if chunk:
                        yield chunk
            finally:
                await chunks.aclose()
            yield b"\r\n"
        if self._fields:
            yield self._fields
        yield self._closing


def regular_files(root: Path) -> list[tuple[str, Path]]:
    """(relative name, path) of every regular file under root, in a stable order."""
    return [
        (path.relative_to(root).as_posix(), path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    ]


async def paced(
    chunks: AsyncIterator[bytes], stall: asyncio.Timeout, idle_s: float
) -> AsyncIterator[bytes]:
    """`chunks`, each to be written within idle_s (aiohttp has no write timeout, httpx had).

    aiohttp asks for the next chunk once the last one is written, so each request for one
    moves the deadline on; sock_read takes over once the body is sent.
    """
    loop = asyncio.get_running_loop()
    async for chunk in chunks:
        stall.reschedule(loop.time() + idle_s)
        yield chunk
    stall.reschedule(None)
