"""Streaming ZIP creation for job results, confined to the job directory.

Exceptions::

    ArchiveError                 the archive could not be built (missing source, I/O error)
    ├── ResultTooLargeError      the files add up to more than the allowed size
    └── ArchiveCancelledError    the build was cancelled (requester gone, client stopping)

Unlike upstream (UPSTREAM §8.2): the archive goes to a hidden temporary file that is renamed
into place, so it never contains itself and a failure never leaves a partial archive; the
tree is walked with directory descriptors so no symlink is followed out of it even while the
job rearranges it (_safewalk.py); entries that cannot be archived safely (symlinks leaving the
directory, dangling symlinks, FIFOs, sockets, devices, non-UTF-8 names, trees deeper than
MAX_DEPTH) are left out, counted and named instead of failing the result; a size limit is
checked on apparent sizes before anything is compressed; files are streamed, never read whole
into memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import zipfile
from collections.abc import Collection, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from job_orchestrator._safewalk import MAX_DEPTH, Entry, Skipped, WalkCancelledError, walk
from job_orchestrator._zip_entries import Writeback, incompressible, new_file_info, zip_info

__all__ = [
    "MANIFEST_NAME",
    "MAX_DEPTH",
    "TEMP_SUFFIX",
    "ArchiveCancelledError",
    "ArchiveError",
    "ArchiveSummary",
    "ResultTooLargeError",
    "stream_directory_zip",
    "write_directory_zip",
]

logger = logging.getLogger(__name__)

#: Lists what was left out of an archive; written only when something was.
MANIFEST_NAME = ".orchestrator-skipped.txt"
#: Temporary archives are named ``.<destination name>.<random>`` + TEMP_SUFFIX.
TEMP_SUFFIX = ".tmp"

_MIB = 1024 * 1024
_CHUNK_BYTES = _MIB
# The root itself may not be a symlink either: its parent belongs to the client.
_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ArchiveError(Exception):
    """The archive could not be built."""


class ResultTooLargeError(ArchiveError):
    """The files to archive exceed ``max_total_bytes``."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        whole_mb = limit_bytes % _MIB == 0
        limit = f"{limit_bytes // _MIB} MB" if whole_mb else f"{limit_bytes} bytes"
        super().__init__(f"result exceeds RESULT_MAX_MB limit of {limit}")


class ArchiveCancelledError(ArchiveError):
    """The build was cancelled before it completed."""


@dataclass(frozen=True)
class ArchiveSummary:
    """What went into an archive: file entries, and what was left out (counted, named)."""

    files: int
    skipped: int = 0
    skipped_named: tuple[tuple[str, str], ...] = ()

    def describe(self, shown: int = 5) -> str:
        """One line for a job's message: how many entries were left out, and the first few."""
        if not self.skipped:
            return ""
        names = ", ".join(
            f"{_shorten(name)} ({reason})" for name, reason in self.skipped_named[:shown]
        )
        more = "" if self.skipped <= shown else ", ..."
        return (
            f"result incomplete: {_entries(self.skipped)} left out ({MANIFEST_NAME} in the "
            f"archive lists them): {names}{more}"
        )


def _shorten(name: str, keep: int = 80) -> str:
    # The message travels in an HTTP header: a name may be 64 KiB long, the line may not.
    return name if len(name) <= keep else f"{name[: keep // 2]}...{name[-keep // 2 :]}"


def _entries(count: int) -> str:
    return f"{count} entry" if count == 1 else f"{count} entries"


def write_directory_zip(
    source_dir: Path,
    destination: Path,
    *,
    exclude_names: Collection[str] = (),
    max_total_bytes: int | None = None,
    manifest: bool = False,
    cancel: threading.Event | None = None,
) -> ArchiveSummary:
    """Zip the tree under ``source_dir`` into ``destination``; say what went in and what not.

    The archive is written to a hidden temporary file next to ``destination`` and renamed
    over it only once complete, so a failure never leaves a partial archive and an existing
    file at ``destination`` is replaced atomically. Neither ``destination`` nor the temporary
    file is ever archived, even when they live inside ``source_dir``. No symlink is followed
    out of ``source_dir`` (see _safewalk.py). With ``max_total_bytes``, the apparent sizes of
    the files are added up before anything is compressed. With ``manifest``, entries left out
    are listed in a top-level ``MANIFEST_NAME`` file (a name then reserved for it).

    Raises:
        ResultTooLargeError: the uncompressed file sizes add up to more than
            ``max_total_bytes``.
        ArchiveCancelledError: ``cancel`` was set.
        ArchiveError: ``source_dir`` is missing or not a directory, or an I/O error occurred.
    """
    try:
        root_fd = os.open(source_dir, _ROOT_FLAGS)
    except OSError as exc:
        raise ArchiveError(f"cannot archive {source_dir}: {exc.strerror or exc}") from exc
    try:
        return _write(
            root_fd, source_dir, destination, exclude_names, max_total_bytes, manifest, cancel
        )
    finally:
        os.close(root_fd)


def stream_directory_zip(
    source_dir: Path,
    sink: BinaryIO,
    *,
    max_total_bytes: int | None = None,
    manifest: bool = False,
    cancel: threading.Event | None = None,
) -> ArchiveSummary:
    """Zip the tree under ``source_dir`` into ``sink``, a stream that need not be seekable
    (a pipe): nothing is written to disk, so it works on a full file system. Entries carry
    data descriptors when ``sink`` cannot seek. Same walk, limits and errors as
    `write_directory_zip`; on an error ``sink`` holds a truncated archive."""
    try:
        root_fd = os.open(source_dir, _ROOT_FLAGS)
    except OSError as exc:
        raise ArchiveError(f"cannot archive {source_dir}: {exc.strerror or exc}") from exc
    skipped = Skipped()
    try:
        count = _fill(root_fd, sink, set(), set(), max_total_bytes, manifest, cancel, skipped, None)
    except WalkCancelledError:
        raise ArchiveCancelledError(f"archive of {source_dir} cancelled") from None
    except OSError as exc:
        raise ArchiveError(f"cannot stream the archive of {source_dir}: {exc}") from exc
    finally:
        os.close(root_fd)
    return ArchiveSummary(count, skipped.count, tuple(skipped.named))


def _write(
    root_fd: int,
    source_dir: Path,
    destination: Path,
    exclude_names: Collection[str],
    limit: int | None,
    manifest: bool,
    cancel: threading.Event | None,
) -> ArchiveSummary:
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{destination.name}.", suffix=TEMP_SUFFIX, dir=destination.parent
        )
    except OSError as exc:
        raise ArchiveError(f"cannot create archive next to {destination}: {exc}") from exc
    tmp_path = Path(tmp_name)
    skip_inodes = {_inode(os.fstat(fd))}
    with contextlib.suppress(OSError):
        skip_inodes.add(_inode(destination.stat()))
    skipped = Skipped()
    try:
        with os.fdopen(fd, "wb") as raw:
            count = _fill(
                root_fd,
                raw,
                set(exclude_names),
                skip_inodes,
                limit,
                manifest,
                cancel,
                skipped,
                Writeback(raw.fileno()),
            )
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp_path, destination)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, WalkCancelledError):
            raise ArchiveCancelledError(f"archive of {source_dir} cancelled") from None
        if isinstance(exc, OSError):
            raise ArchiveError(f"cannot write archive {destination}: {exc}") from exc
        raise
    for name, reason in skipped.named:
        logger.warning("left out of %s: %r: %s", destination.name, name, reason)
    if skipped.count > len(skipped.named):
        logger.warning(
            "left out of %s: %d more", destination.name, skipped.count - len(skipped.named)
        )
    return ArchiveSummary(count, skipped.count, tuple(skipped.named))


def _fill(
    root_fd: int,
    raw: BinaryIO,
    excluded: set[str],
    skip_inodes: set[tuple[int, int]],
    limit: int | None,
    manifest: bool,
    cancel: threading.Event | None,
    skipped: Skipped,
    writeback: Writeback | None,
) -> int:
    """Write the ZIP of the tree at ``root_fd`` into ``raw``; return the number of files."""
    root_path = os.readlink(f"/proc/self/fd/{root_fd}")
    if manifest:
        excluded.add(MANIFEST_NAME)
    if limit is not None:
        _check_size(root_fd, root_path, excluded, skip_inodes, limit, cancel)
    if manifest:
        with contextlib.suppress(FileNotFoundError):
            os.stat(MANIFEST_NAME, dir_fd=root_fd, follow_symlinks=False)
            skipped.add(MANIFEST_NAME, "name reserved for this list")
    with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        entries = walk(
            root_fd,
            root_path,
            skipped,
            exclude_names=excluded,
            skip_inodes=skip_inodes,
            cancel=cancel,
        )
        count = _fill_zip(zf, entries, limit, cancel, writeback)
        if manifest and skipped.count:
            zf.writestr(new_file_info(MANIFEST_NAME), _manifest_text(skipped))
    return count


def _inode(info: os.stat_result) -> tuple[int, int]:
    return (info.st_dev, info.st_ino)


def _check_size(
    root_fd: int,
    root_path: str,
    excluded: Collection[str],
    skip_inodes: Collection[tuple[int, int]],
    limit: int,
    cancel: threading.Event | None,
) -> None:
    """Fail before compressing anything if the apparent sizes (sparse files count in full)
    already add up to more than ``limit``. The build still counts: the tree may grow."""
    total = 0
    for entry in walk(
        root_fd,
        root_path,
        Skipped(),
        exclude_names=excluded,
        skip_inodes=skip_inodes,
        open_files=False,
        cancel=cancel,
    ):
        total += 0 if entry.name.endswith("/") else entry.info.st_size
        if total > limit:
            raise ResultTooLargeError(limit)


def _fill_zip(
    zf: zipfile.ZipFile,
    entries: Generator[Entry, None, None],
    limit: int | None,
    cancel: threading.Event | None,
    writeback: Writeback | None,
) -> int:
    count = used = 0
    try:
        for entry in entries:
            if entry.fd is None:
                zf.writestr(zip_info(entry.name, entry.info), b"")
                continue
            with os.fdopen(entry.fd, "rb") as src:
                used += _write_file(zf, src, entry.name, entry.info, used, limit, cancel, writeback)
            count += 1
    finally:
        entries.close()
    return count


def _write_file(
    zf: zipfile.ZipFile,
    src: BinaryIO,
    name: str,
    info: os.stat_result,
    used: int,
    limit: int | None,
    cancel: threading.Event | None,
    writeback: Writeback | None,
) -> int:
    """Stream one open file into ``zf``; return its size."""
    if limit is not None and used + info.st_size > limit:
        raise ResultTooLargeError(limit)
    zinfo = zip_info(name, info)
    head = src.read(_CHUNK_BYTES)
    zinfo.compress_type = zipfile.ZIP_STORED if incompressible(name, head) else zipfile.ZIP_DEFLATED
    # Level 1: results are written once and read a few times, so speed beats the last
    # few percent of size. (A ZipInfo passed to open() keeps its own private level.)
    zinfo._compresslevel = 1  # type: ignore[attr-defined]
    zinfo.file_size = info.st_size  # lets zipfile pick ZIP64 up front for huge files
    size = 0
    with zf.open(zinfo, "w") as dst:
        # Counted as read, not trusted from stat: the file may still be growing.
        chunk = head
        while chunk:
            if cancel is not None and cancel.is_set():
                raise WalkCancelledError
            size += len(chunk)
            if limit is not None and used + size > limit:
                raise ResultTooLargeError(limit)
            dst.write(chunk)
            if writeback is not None:
                writeback.wrote(len(chunk))
            chunk = src.read(_CHUNK_BYTES)
    return size


def _manifest_text(skipped: Skipped) -> str:
    lines = [
        f"{_entries(skipped.count)} of the job's directory not in this archive:",
        *(f"{name}\t{reason}" for name, reason in skipped.named),
    ]
    if skipped.count > len(skipped.named):
        lines.append(f"... and {skipped.count - len(skipped.named)} more")
    return "\n".join(lines) + "\n"
