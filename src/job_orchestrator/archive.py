"""Streaming ZIP creation for job results, confined to the job directory.

Exceptions::

    ArchiveError                 the archive could not be built (missing source, I/O error)
    └── ResultTooLargeError      the files add up to more than the allowed size

Unlike upstream (UPSTREAM §8.2): the archive goes to a hidden temporary file that is renamed
into place, so it never contains itself and a failure never leaves a partial archive; entries
that cannot be archived safely (symlinks leaving the directory, dangling symlinks, FIFOs,
sockets, devices, non-UTF-8 names) are skipped with a warning instead of failing the result;
containment is checked on resolved paths, not by looking for ``..`` in names; files are
streamed, never read whole into memory.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import time
import zipfile
import zlib
from collections.abc import Collection, Iterator
from pathlib import Path

__all__ = ["ArchiveError", "ResultTooLargeError", "iter_directory_entries", "write_directory_zip"]

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024
_CHUNK_BYTES = _MIB
_STORED_SUFFIXES = frozenset({".zip", ".gz", ".bz2", ".xz", ".zst", ".png", ".jpg"})
_ZIP_MIN_TIME = (1980, 1, 1, 0, 0, 0)
_ZIP_MAX_TIME = (2107, 12, 31, 23, 59, 59)
# MS-DOS directory attribute, set alongside the Unix mode so Windows tools see a folder.
_DOS_DIRECTORY = 0x10


class ArchiveError(Exception):
    """The archive could not be built."""


class ResultTooLargeError(ArchiveError):
    """The files to archive exceed ``max_total_bytes``."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        whole_mb = limit_bytes % _MIB == 0
        limit = f"{limit_bytes // _MIB} MB" if whole_mb else f"{limit_bytes} bytes"
        super().__init__(f"result exceeds RESULT_MAX_MB limit of {limit}")


def iter_directory_entries(
    source_dir: Path, *, exclude_names: Collection[str] = ()
) -> Iterator[tuple[Path, str]]:
    """Yield ``(absolute path, archive name)`` for every entry to archive under ``source_dir``.

    Directories come before their contents and are named with a trailing ``/``; siblings are
    sorted by name, so two walks of the same tree yield the same names. For a symlink to a
    regular file inside the tree, the path is the resolved target. ``exclude_names`` are
    top-level names to leave out; symlinks into them are left out as well.

    Raises:
        ArchiveError: ``source_dir`` is missing or not a directory.
    """
    try:
        root = source_dir.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise ArchiveError(f"cannot archive {source_dir}: {exc}") from exc
    if not root.is_dir():
        raise ArchiveError(f"cannot archive {source_dir}: not a directory")
    excluded = frozenset(exclude_names)
    excluded_paths = [root / name for name in excluded]

    # An explicit stack of directory listings instead of recursion: a job can create a tree
    # deeper than Python's recursion limit.
    stack = [iter(_sorted_children(root, "", excluded))]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
            continue
        path, name = child
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning("skipping %r: %s", name, exc)
            continue
        if stat.S_ISDIR(info.st_mode):
            yield path, name + "/"
            stack.append(iter(_sorted_children(path, name + "/", frozenset())))
        elif stat.S_ISREG(info.st_mode):
            yield path, name
        elif stat.S_ISLNK(info.st_mode):
            target = _symlink_target(path, name, root, excluded_paths)
            if target is not None:
                yield target, name
        else:
            logger.warning("skipping %r: not a regular file or directory", name)


def _sorted_children(
    directory: Path, prefix: str, excluded: frozenset[str]
) -> list[tuple[Path, str]]:
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except OSError as exc:
        logger.warning("skipping contents of %r: %s", prefix or ".", exc)
        return []
    children = []
    for entry in names:
        if entry in excluded:
            continue
        try:
            entry.encode("utf-8")
        except UnicodeEncodeError:
            # os.listdir smuggles undecodable bytes in as surrogates; ZIP names must be UTF-8.
            logger.warning("skipping %r: name is not valid UTF-8", prefix + entry)
            continue
        children.append((directory / entry, prefix + entry))
    return children


def _symlink_target(link: Path, name: str, root: Path, excluded: list[Path]) -> Path | None:
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop on Python 3.11/3.12
        logger.warning("skipping symlink %r: cannot resolve it (%s)", name, exc)
        return None
    if not target.is_relative_to(root) or any(target.is_relative_to(p) for p in excluded):
        logger.warning("skipping symlink %r: it points outside the archived directory", name)
        return None
    try:
        info = target.stat()
    except OSError as exc:
        logger.warning("skipping symlink %r: %s", name, exc)
        return None
    if stat.S_ISREG(info.st_mode):
        return target
    # Directory symlinks are not followed: the real directory is archived anyway if it is in
    # the tree, and following them is how walks end up in loops.
    logger.warning("skipping symlink %r: it does not point to a regular file", name)
    return None


def write_directory_zip(
    source_dir: Path,
    destination: Path,
    *,
    exclude_names: Collection[str] = (),
    max_total_bytes: int | None = None,
) -> int:
    """Zip the tree under ``source_dir`` into ``destination`` and return the file entry count.

    The archive is written to a hidden temporary file next to ``destination`` and renamed
    over it only once complete, so a failure never leaves a partial archive and an existing
    file at ``destination`` is replaced atomically. Neither ``destination`` nor the temporary
    file is ever archived, even when they live inside ``source_dir``.

    Raises:
        ResultTooLargeError: the uncompressed file sizes add up to more than
            ``max_total_bytes``.
        ArchiveError: ``source_dir`` is missing or not a directory, or an I/O error occurred.
    """
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent
        )
    except OSError as exc:
        raise ArchiveError(f"cannot create archive next to {destination}: {exc}") from exc
    tmp_path = Path(tmp_name)
    # Entry paths are resolved, so compare against resolved parents; the final component is
    # kept as is because os.replace acts on the name itself, not on a symlink's target.
    skip_paths = {
        destination.parent.resolve() / destination.name,
        tmp_path.parent.resolve() / tmp_path.name,
    }
    try:
        with os.fdopen(fd, "wb") as raw:
            with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                count = _fill_zip(zf, source_dir, exclude_names, skip_paths, max_total_bytes)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp_path, destination)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ArchiveError(f"cannot write archive {destination}: {exc}") from exc
        raise
    return count


def _fill_zip(
    zf: zipfile.ZipFile,
    source_dir: Path,
    exclude_names: Collection[str],
    skip_paths: set[Path],
    limit: int | None,
) -> int:
    count = used = 0
    for path, name in iter_directory_entries(source_dir, exclude_names=exclude_names):
        if path in skip_paths:
            continue
        if name.endswith("/"):
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            zf.writestr(_zip_info(name, info), b"")
            continue
        written = _write_file(zf, path, name, used, limit)
        if written is not None:
            count += 1
            used += written
    return count


def _write_file(
    zf: zipfile.ZipFile, path: Path, name: str, used: int, limit: int | None
) -> int | None:
    """Stream one file into ``zf``; return its size, or None if it was skipped."""
    try:
        # O_NOFOLLOW/O_NONBLOCK: if the file was swapped for a symlink or a FIFO since the
        # walk looked at it, fail or return at once instead of escaping or blocking forever.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("skipping %r: %s", name, exc)
        return None
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            logger.warning("skipping %r: not a regular file", name)
            return None
        if limit is not None and used + info.st_size > limit:
            raise ResultTooLargeError(limit)
        zinfo = _zip_info(name, info)
        head = src.read(_CHUNK_BYTES)
        zinfo.compress_type = (
            zipfile.ZIP_STORED if _incompressible(name, head) else zipfile.ZIP_DEFLATED
        )
        # Level 1: results are written once and read a few times, so speed beats the last
        # few percent of size. (A ZipInfo passed to open() keeps its own private level.)
        zinfo._compresslevel = 1  # type: ignore[attr-defined]
        zinfo.file_size = info.st_size  # lets zipfile pick ZIP64 up front for huge files
        size = 0
        with zf.open(zinfo, "w") as dst:
            # Counted as read, not trusted from stat: the file may still be growing.
            chunk = head
            while chunk:
                size += len(chunk)
                if limit is not None and used + size > limit:
                    raise ResultTooLargeError(limit)
                dst.write(chunk)
                chunk = src.read(_CHUNK_BYTES)
        return size


def _incompressible(name: str, head: bytes) -> bool:
    """Already-compressed data (by name, or by a trial on its first chunk) is stored as is:
    deflating it costs CPU (about 12 MB/s here) and gains nothing."""
    if Path(name).suffix.lower() in _STORED_SUFFIXES:
        return True
    return len(head) >= 64 * 1024 and len(zlib.compress(head[: 256 * 1024], 1)) > 0.95 * min(
        len(head), 256 * 1024
    )


def _zip_info(name: str, info: os.stat_result) -> zipfile.ZipInfo:
    zinfo = zipfile.ZipInfo(name, date_time=_zip_time(info.st_mtime))
    zinfo.create_system = 3  # Unix, so extractors honour the mode in external_attr
    zinfo.external_attr = (stat.S_IFMT(info.st_mode) | stat.S_IMODE(info.st_mode)) << 16
    if stat.S_ISDIR(info.st_mode):
        zinfo.external_attr |= _DOS_DIRECTORY
    return zinfo


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    # ZIP timestamps are local time limited to 1980..2107; out-of-range mtimes are clamped.
    try:
        local = time.localtime(mtime)
    except (OverflowError, OSError, ValueError):
        return _ZIP_MIN_TIME if mtime < 0 else _ZIP_MAX_TIME
    stamp = (local.tm_year, local.tm_mon, local.tm_mday, local.tm_hour, local.tm_min, local.tm_sec)
    return max(_ZIP_MIN_TIME, min(stamp, _ZIP_MAX_TIME))
