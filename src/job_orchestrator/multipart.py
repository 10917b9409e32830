"""Streaming ``multipart/form-data`` reader that writes file parts straight to disk.

Shared by the server's ``/upload`` and the client's ``/submit``. Part classification follows
upstream (multer 3.1, UPSTREAM §2): a part is a file iff its Content-Disposition has a
``filename`` parameter (``filename*`` alone does not count); inside quotes only ``\\"`` is
unescaped; a value that is not valid UTF-8 counts as absent. Unlike upstream we also accept
``name*=utf-8''<percent-encoded>`` (RFC 5987), which is how reqwest sends nested names such as
``sub/x.txt``.

Text parts are kept (all of them, or only those the caller names) up to ``max_field_bytes``
each; longer ones, and those not asked for, are counted against the body limit and dropped.
So a text field of any size is accepted, as upstream (multer has no per-field limit) does,
and none costs more memory than that cap.

Errors::

    MultipartError              str(e) is the user-facing message
    ├── BoundaryError           Content-Type missing, not multipart/form-data, or no boundary
    ├── MalformedBodyError      truncated or garbled body; ``inside`` says where it ended
    │   └── TooManyPartsError   more than ``max_parts`` parts
    ├── BodyTooLargeError       the body exceeds ``max_body_bytes``
    ├── BodyIdleError           no data arrived for ``idle_timeout_s``
    └── UnsafePartNameError     a file name that must not be stored

``OSError`` from creating or writing a file propagates unchanged, so callers can tell a disk
failure (500) from a bad request (400).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState

from job_orchestrator._filestream import ThreadedWriter
from job_orchestrator._multipart_headers import form_data_boundary, parse_disposition
from job_orchestrator.filenames import UnsafeFileNameError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = [
    "BodyIdleError",
    "BodyTooLargeError",
    "BoundaryError",
    "MalformedBodyError",
    "MultipartError",
    "MultipartForm",
    "SavedFile",
    "TooManyPartsError",
    "UnsafePartNameError",
    "boundary_from_content_type",
    "read_multipart",
]

INVALID_BOUNDARY_MESSAGE = "Invalid `boundary` for `multipart/form-data` request"
PARSE_ERROR_MESSAGE = "Error parsing `multipart/form-data` request"

# multer's MAX_HEADERS; python-multipart's default of 8 would reject parts upstream accepted.
_MAX_HEADERS_PER_PART = 32
# Leaves room for a percent-encoded `name*` of a long nested path (3 bytes per character).
_MAX_HEADER_BYTES = 16 * 1024


class MultipartError(Exception):
    """Base; str(e) is the user-facing message."""


class BoundaryError(MultipartError):
    def __init__(self) -> None:
        super().__init__(INVALID_BOUNDARY_MESSAGE)


#: Where a body ended early: inside a file part's data, a text part's data, or elsewhere.
Inside = Literal["file", "text"] | None


class MalformedBodyError(MultipartError):
    """``detail`` says what the parser disliked, for logs; the message stays upstream's.

    ``inside`` is ``"file"`` or ``"text"`` when the body ended within that part's data
    (upstream then reports a chunk or text read failure instead of a multipart error).
    """

    def __init__(
        self, message: str = PARSE_ERROR_MESSAGE, *, detail: str = "", inside: Inside = None
    ) -> None:
        super().__init__(message)
        self.detail = detail or message
        self.inside = inside


class TooManyPartsError(MalformedBodyError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request has more than {limit} parts")
        self.limit = limit


class BodyTooLargeError(MultipartError):
    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"request body exceeds the limit of {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


class BodyIdleError(MultipartError):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"no data received for {timeout_s:g} s")
        self.timeout_s = timeout_s


class UnsafePartNameError(MultipartError):
    pass


@dataclass(frozen=True, slots=True)
class SavedFile:
    field_name: str
    filename: str
    relative_path: PurePosixPath
    size_bytes: int


@dataclass(slots=True)
class MultipartForm:
    fields: dict[str, str]
    files: list[SavedFile]
    #: Kept fields whose (last) value was longer than ``max_field_bytes``; not in ``fields``.
    oversized: set[str]


def boundary_from_content_type(content_type: str | None) -> bytes:
    boundary = form_data_boundary(content_type)
    if boundary is None:
        raise BoundaryError
    return boundary


class _FormReader:
    """Parser callbacks; state of the part currently being read."""

    def __init__(
        self,
        dest_dir: Path,
        name_for_file: Callable[[str, str], PurePosixPath],
        keep_fields: Collection[str] | None,
        max_field_bytes: int,
        max_parts: int,
    ) -> None:
        self._root = dest_dir.resolve(strict=True)
        self._name_for_file = name_for_file
        self._keep_fields = keep_fields
        self._max_field_bytes = max_field_bytes
        self._max_parts = max_parts
        self.fields: dict[str, str] = {}
        self.oversized: set[str] = set()
        #: The kind of part whose data is being read, if any.
        self.inside: Inside = None
        # Keyed by path so that a file overwritten on disk is also replaced here.
        self.saved: dict[PurePosixPath, SavedFile] = {}
        self.ended = False
        self._parts = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._disposition: bytes | None = None
        self._field_name = ""
        self._filename = ""
        self._text: bytearray | None = None
        self._text_too_long = False
        #: The open file part's writer (its data written on threads), if a file part is open.
        self.writer: ThreadedWriter | None = None
        self._path = PurePosixPath()
        self._size = 0

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > self._max_parts:
            raise TooManyPartsError(self._max_parts)
        self._disposition = None
        self._text = None

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        # Like http::HeaderMap::get, the first Content-Disposition of a part counts.
        if self._disposition is None and self._header_field.lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        name, filename = parse_disposition(self._disposition or b"")
        self._field_name = "unnamed" if name is None else name
        if filename is None:
            self.inside = "text"
            keep = self._keep_fields is None or self._field_name in self._keep_fields
            self._text = bytearray() if keep else None
            self._text_too_long = False
            return
        self._filename = filename
        self._path = self._checked_path(self._field_name, filename)
        target = self._root / self._path
        target.parent.mkdir(parents=True, exist_ok=True)
        # "wb" truncates, so a later part with the same name replaces the earlier one.
        self.writer = ThreadedWriter(target.open("wb"))
        self._size = 0
        self.inside = "file"

    def _checked_path(self, field_name: str, filename: str) -> PurePosixPath:
        try:
            rel = self._name_for_file(field_name, filename)
        except UnsafeFileNameError as exc:
            raise UnsafePartNameError(str(exc)) from exc
        text = str(rel)
        if "\0" in text or rel.is_absolute() or ".." in rel.parts or text == ".":
            raise UnsafePartNameError(f"unsafe file name {filename!r}")
        # Resolving catches symlinks already inside dest_dir that point elsewhere.
        if not (self._root / rel).resolve().is_relative_to(self._root):
            raise UnsafePartNameError(f"unsafe file name {filename!r}")
        return rel

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.writer is not None:
            # Queued, not written: read_multipart hands full batches to a thread.
            piece = memoryview(data)[start:end]
            self.writer.queue(piece if isinstance(data, bytes) else bytes(piece))
            self._size += end - start
        elif self._text is not None and not self._text_too_long:
            if len(self._text) + end - start > self._max_field_bytes:
                # Dropped, not refused: upstream reads any length, and a value this long is
                # invalid for every field we keep.
                self._text_too_long = True
                self._text.clear()
            else:
                self._text += data[start:end]

    def _on_part_end(self) -> None:
        if self.writer is not None:
            # Cleared first so a failing close (a deferred write error) is not retried.
            writer, self.writer = self.writer, None
            try:
                # Here, not later: a part of the same name may open this path next. At most
                # the batch in flight and one more (2 MiB) are left to write.
                writer.finish_now()
            finally:
                writer.sink.close()
            self.saved.pop(self._path, None)
            self.saved[self._path] = SavedFile(
                self._field_name, self._filename, self._path, self._size
            )
        elif self._text is not None:
            # The last occurrence of a name wins, whether it fits or not.
            if self._text_too_long:
                self.fields.pop(self._field_name, None)
                self.oversized.add(self._field_name)
            else:
                self.fields[self._field_name] = self._text.decode("utf-8", errors="replace")
                self.oversized.discard(self._field_name)
            self._text = None
        self.inside = None

    def _on_end(self) -> None:
        self.ended = True

    async def drain(self) -> None:
        """Between parser calls: a full batch of the open file goes to its writer thread
        (the parser's callbacks cannot wait for the batch before it)."""
        if self.writer is not None and self.writer.batch_full:
            await self.writer.flush()

    async def abandon(self) -> None:
        """On failure: wait for a write in flight, then close the file still open."""
        if self.writer is not None:
            writer, self.writer = self.writer, None
            await writer.abandon()
            writer.sink.close()


async def read_multipart(
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    dest_dir: Path,
    *,
    name_for_file: Callable[[str, str], PurePosixPath],
    keep_fields: Collection[str] | None = None,
    max_body_bytes: int | None = None,
    max_field_bytes: int = 64 * 1024,
    max_parts: int = 10_000,
    idle_timeout_s: float | None = None,
) -> MultipartForm:
    """Read a whole ``multipart/form-data`` body, storing file parts under ``dest_dir``.

    ``dest_dir`` must already exist. Each file part is stored at
    ``dest_dir / name_for_file(field_name, filename)`` (parent directories are created) and
    written as its bytes arrive, so memory use does not grow with file size. A later file
    with the same relative path overwrites the earlier one and replaces it in ``files``.
    Text parts named in ``keep_fields`` (all, if ``None``) are decoded as UTF-8 with
    replacement, up to ``max_field_bytes`` each; a longer one is left out of ``fields`` and
    named in ``oversized``. Other text parts are read and dropped. For duplicate names the
    last one wins.

    On any error the open file is closed but nothing is deleted: files already written stay
    in ``dest_dir``, and the caller is expected to remove ``dest_dir``.

    Raises:
        BoundaryError: before reading anything, if ``content_type`` is unusable.
        MalformedBodyError: the body is garbled or ends before the closing boundary.
        BodyTooLargeError: more than ``max_body_bytes`` arrived; the chunk that crossed the
            limit is not processed.
        BodyIdleError: no chunk arrived for ``idle_timeout_s`` seconds.
        UnsafePartNameError: ``name_for_file`` refused a name or returned a path that would
            leave ``dest_dir``.
        OSError: a file or directory could not be created or written.
    """
    boundary = boundary_from_content_type(content_type)
    reader = _FormReader(dest_dir, name_for_file, keep_fields, max_field_bytes, max_parts)
    parser = MultipartParser(
        boundary,
        reader.callbacks(),
        max_header_count=_MAX_HEADERS_PER_PART,
        max_header_size=_MAX_HEADER_BYTES,
    )
    received = 0
    iterator = aiter(chunks)
    try:
        while True:
            try:
                async with asyncio.timeout(idle_timeout_s):
                    chunk = await anext(iterator)
            except StopAsyncIteration:
                break
            except TimeoutError:
                assert idle_timeout_s is not None
                raise BodyIdleError(idle_timeout_s) from None
            received += len(chunk)
            if max_body_bytes is not None and received > max_body_bytes:
                raise BodyTooLargeError(max_body_bytes)
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                # Parse errors arise only between parts' data (headers, boundaries), where
                # upstream reports a multipart error whatever part came before.
                raise MalformedBodyError(detail=str(exc)) from exc
            await reader.drain()
        parser.finalize()
        await reader.drain()
        if not reader.ended:
            raise MalformedBodyError(
                detail="body ended before the closing boundary",
                inside=_ended_inside(parser, reader),
            )
    except BaseException:
        await reader.abandon()
        raise
    return MultipartForm(
        fields=reader.fields, files=list(reader.saved.values()), oversized=reader.oversized
    )


def _ended_inside(parser: MultipartParser, reader: _FormReader) -> Inside:
    """Where a body that stopped early stopped, in multer's terms.

    multer ends a part's data at the first ``CRLF--boundary``; python-multipart waits for
    the CRLF or ``--`` after it before it ends the part. A body that stops in between has
    finished its last part for multer, so that is a multipart error, not a read failure.
    """
    if parser.state != MultipartState.PART_DATA or parser.index >= len(parser.boundary):
        return None
    return reader.inside
