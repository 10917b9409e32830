"""Result ZIPs as responses, without a thread hop per file operation when they are small.

Used by the client (/retrieve) and the server (/download). Starlette's FileResponse stats,
opens, reads and closes its file on anyio's worker threads: four hand-offs for a ZIP of a few
hundred bytes, a large share of the CPU per trivial job. A small result is read here at once
(on the event loop: one short read of a local file) and sent from memory; the headers stay
FileResponse's own (length, ETag, Last-Modified, Accept-Ranges, Content-Disposition), and
Range requests are still answered from the file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from starlette.background import BackgroundTask
from starlette.responses import FileResponse
from starlette.types import Send

#: Results up to this size are sent from memory; bigger ones stream from the file.
PRELOAD_MAX_BYTES = 256 * 1024


class _PreloadedFileResponse(FileResponse):
    def __init__(
        self,
        path: Path,
        content: bytes,
        stat_result: os.stat_result,
        *,
        headers: Mapping[str, str] | None,
        background: BackgroundTask | None,
        filename: str | None,
    ) -> None:
        super().__init__(
            path,
            media_type="application/zip",
            headers=headers,
            background=background,
            filename=filename,
            stat_result=stat_result,
        )
        self._content = content

    async def _handle_simple(self, send: Send, send_header_only: bool, send_pathsend: bool) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        body = b"" if send_header_only else self._content
        await send({"type": "http.response.body", "body": body, "more_body": False})


def zip_response(
    path: Path,
    *,
    headers: Mapping[str, str] | None = None,
    background: BackgroundTask | None = None,
    filename: str | None = None,
) -> FileResponse:
    """The ZIP at `path` (which must be a regular file) as a response.

    Raises OSError if it cannot be opened. `filename` sets Content-Disposition.
    """
    with path.open("rb") as handle:
        info = os.fstat(handle.fileno())
        if stat.S_ISREG(info.st_mode) and info.st_size <= PRELOAD_MAX_BYTES:
            content = handle.read(PRELOAD_MAX_BYTES + 1)
            if len(content) == info.st_size:
                return _PreloadedFileResponse(
                    path, content, info, headers=headers, background=background, filename=filename
                )
    return FileResponse(
        path,
        media_type="application/zip",
        headers=headers,
        background=background,
        filename=filename,
        stat_result=info,
    )
