"""The body of `POST /upload`, built from files on disk and streamed in bounded chunks.

The body is the shape reqwest sends and `job_orchestrator.multipart` (like the original's
multer) reads: one `file` part per file, named by its base name, and the `user_id` and
`service` text parts. Its length is known before the first byte is sent, so the server can
refuse an upload over its limit at once and progress has a total.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio

from job_orchestrator.sdk.errors import InvalidSubmission

__all__ = ["ENTRY_POINT", "Progress", "UploadBody", "collect_files"]

ENTRY_POINT = "run.sh"
#: Bytes read from a file at a time, so memory stays bounded whatever the file size.
CHUNK_BYTES = 1024 * 1024

#: Called with (bytes done, bytes in all) as a transfer advances; the total may be unknown.
Progress = Callable[[int, int | None], None]


@dataclass(frozen=True, slots=True)
class _FilePart:
    path: Path
    size_bytes: int


def collect_files(sources: Iterable[str | os.PathLike[str]]) -> dict[str, Path]:
    """The job's files by stored name, from files and directories; checked before any upload.

    A directory contributes its regular files (not its subdirectories: the server keeps
    only base names, so nested files would lose their place). One of the files must be
    `run.sh`. Raises InvalidSubmission with the reason otherwise.
    """
    files: dict[str, Path] = {}
    for source in sources:
        path = Path(source)
        if path.is_dir():
            entries = sorted(path.iterdir())
            nested = [entry.name for entry in entries if entry.is_dir()]
            if nested:
                raise InvalidSubmission(
                    f"{path}: subdirectories cannot be uploaded (the server keeps only file "
                    f"names): {', '.join(nested[:3])}"
                )
            found = [entry for entry in entries if entry.is_file()]
            if ENTRY_POINT not in {entry.name for entry in found}:
                raise InvalidSubmission(f"{path}: no {ENTRY_POINT} in this directory")
        elif path.is_file():
            found = [path]
        else:
            raise InvalidSubmission(f"{path}: no such file or directory")
        for entry in found:
            _check_name(entry.name)
            if entry.name in files and files[entry.name] != entry:
                raise InvalidSubmission(
                    f"two files named {entry.name!r}: {files[entry.name]} and {entry}"
                )
            files[entry.name] = entry
    if not files:
        raise InvalidSubmission("no files to submit")
    if ENTRY_POINT not in files:
        raise InvalidSubmission(f"no {ENTRY_POINT} among the files: a job needs one to run")
    return files


def _check_name(name: str) -> None:
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        raise InvalidSubmission(f"{name!r}: control characters are not allowed in file names")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidSubmission(f"{name!r}: the file name is not valid UTF-8") from None


def _quoted(value: str) -> str:
    # multer unescapes only \" inside quotes (UPSTREAM §2): a backslash stays as it is.
    return value.replace('"', '\\"')


class UploadBody:
    """A multipart body of `files` plus text fields, with its exact length."""

    def __init__(self, files: dict[str, Path], fields: dict[str, str]) -> None:
        self.boundary = f"----job-orchestrator-{secrets.token_hex(16)}"
        self._pieces: list[bytes | _FilePart] = []
        for name, value in fields.items():
            self._pieces.append(
                f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                f"{value}\r\n".encode()
            )
        for name, path in files.items():
            try:
                size = path.stat().st_size
            except OSError as error:
                raise InvalidSubmission(f"{path}: {error.strerror}") from None
            self._pieces.append(
                f"--{self.boundary}\r\nContent-Disposition: form-data; "
                f'name="file"; filename="{_quoted(name)}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n".encode()
            )
            self._pieces.append(_FilePart(path, size))
            self._pieces.append(b"\r\n")
        self._pieces.append(f"--{self.boundary}--\r\n".encode())
        self.length_bytes = sum(
            piece.size_bytes if isinstance(piece, _FilePart) else len(piece)
            for piece in self._pieces
        )

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": f"multipart/form-data; boundary={self.boundary}",
            "Content-Length": str(self.length_bytes),
        }

    def chunks(self, progress: Progress | None = None) -> Iterator[bytes]:
        done = 0
        for piece in self._pieces:
            for chunk in _piece_chunks(piece):
                yield chunk
                done += len(chunk)
                if progress is not None:
                    progress(done, self.length_bytes)

    async def achunks(self, progress: Progress | None = None) -> AsyncIterator[bytes]:
        done = 0
        for piece in self._pieces:
            if isinstance(piece, bytes):
                chunks: AsyncIterator[bytes] = _single(piece)
            else:
                chunks = _afile_chunks(piece)
            async for chunk in chunks:
                yield chunk
                done += len(chunk)
                if progress is not None:
                    progress(done, self.length_bytes)


def _piece_chunks(piece: bytes | _FilePart) -> Iterator[bytes]:
    if isinstance(piece, bytes):
        yield piece
        return
    with piece.path.open("rb") as file:
        left = piece.size_bytes
        while left > 0:
            chunk = file.read(min(CHUNK_BYTES, left))
            _check_not_shrunk(piece, chunk)
            left -= len(chunk)
            yield chunk


async def _single(piece: bytes) -> AsyncIterator[bytes]:
    yield piece


async def _afile_chunks(piece: _FilePart) -> AsyncIterator[bytes]:
    async with await anyio.open_file(piece.path, "rb") as file:
        left = piece.size_bytes
        while left > 0:
            chunk = await file.read(min(CHUNK_BYTES, left))
            _check_not_shrunk(piece, chunk)
            left -= len(chunk)
            yield chunk


def _check_not_shrunk(piece: _FilePart, chunk: bytes) -> None:
    # The length was announced up front; a file that shrank since cannot fill it.
    if not chunk:
        raise InvalidSubmission(f"{piece.path}: the file shrank while it was being uploaded")
