"""A walk of a directory tree that never follows a symlink out of it, even while it changes.

The tree belongs to a job that may still be running and may swap any directory for a symlink
at any moment (``renameat2(RENAME_EXCHANGE)``), while the walk runs as root. So nothing is
ever opened by a path of more than one component: every directory is opened relative to its
parent's descriptor with ``O_NOFOLLOW | O_DIRECTORY``, every file with ``O_NOFOLLOW`` and
checked with ``fstat``. A symlink inside the tree to a regular file inside it is read through
``openat2(RESOLVE_BENEATH)`` from the root's descriptor, so the kernel refuses any resolution
that leaves the tree; where ``openat2`` is unavailable such symlinks are left out.

Whatever is left out is recorded in a `Skipped` with its reason, so the caller can tell the
user that the archive is incomplete.
"""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import stat
import threading
from collections.abc import Collection, Generator, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["MAX_DEPTH", "Entry", "Skipped", "WalkCancelledError", "walk"]

#: Directory levels below the root that are archived. Each level holds one open descriptor
#: for the length of the walk; deeper directories are left out (and reported).
MAX_DEPTH = 256
#: Longest entry name a ZIP header can hold.
_MAX_NAME_BYTES = 0xFFFF
#: How many skipped names are kept (all of them are counted).
_NAMED_SKIPS = 100

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in after the lstat opens at once instead of blocking forever.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class WalkCancelledError(Exception):
    """The walk was cancelled (the requester went away, the client is stopping)."""


@dataclass
class Skipped:
    """Entries left out of a walk: all counted, the first few named with their reason."""

    count: int = 0
    named: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, reason: str) -> None:
        self.count += 1
        if len(self.named) < _NAMED_SKIPS:
            self.named.append((name, reason))


class Entry(NamedTuple):
    """One entry to archive. ``fd`` is an open regular file (the caller closes it), or None
    for a directory (``name`` ends with ``/``) and for files when only sizes were asked for."""

    name: str
    info: os.stat_result
    fd: int | None


def walk(
    root_fd: int,
    root_path: str,
    skipped: Skipped,
    *,
    exclude_names: Collection[str] = (),
    skip_inodes: Collection[tuple[int, int]] = (),
    open_files: bool = True,
    cancel: threading.Event | None = None,
) -> Generator[Entry, None, None]:
    """Yield every entry under the directory ``root_fd`` (whose real path is ``root_path``).

    Directories come before their contents; siblings are sorted by name. ``exclude_names``
    are top-level names to leave out silently, symlinks into them too; so are files whose
    ``(st_dev, st_ino)`` is in ``skip_inodes`` (the archive being written).

    Raises:
        WalkCancelledError: ``cancel`` was set.
    """
    excluded = frozenset(exclude_names)
    inodes = frozenset(skip_inodes)
    # An explicit stack instead of recursion: a job can build a tree deeper than Python's
    # recursion limit.
    stack: list[tuple[int, str, Iterator[str]]] = [
        (root_fd, "", iter(_names(root_fd, "", skipped, excluded)))
    ]
    try:
        while stack:
            if cancel is not None and cancel.is_set():
                raise WalkCancelledError
            dir_fd, prefix, names = stack[-1]
            entry = next(names, None)
            if entry is None:
                stack.pop()
                if dir_fd != root_fd:
                    os.close(dir_fd)
                continue
            name = prefix + entry
            if len(name.encode()) + 1 > _MAX_NAME_BYTES:
                skipped.add(name, "name too long for a ZIP archive")
                continue
            try:
                info = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since it was listed
            except OSError as exc:
                skipped.add(name, exc.strerror or str(exc))
                continue
            if stat.S_ISDIR(info.st_mode):
                if len(stack) > MAX_DEPTH:
                    skipped.add(name + "/", f"deeper than {MAX_DEPTH} levels")
                    continue
                child = _open_at(dir_fd, entry, _DIR_FLAGS, name + "/", skipped)
                if child is None:
                    continue
                yield Entry(name + "/", os.fstat(child), None)
                stack.append((child, name + "/", iter(_names(child, name, skipped, frozenset()))))
            elif stat.S_ISREG(info.st_mode):
                if open_files:
                    fd = _open_at(dir_fd, entry, _FILE_FLAGS, name, skipped)
                    if fd is not None:
                        found = _regular(fd, name, skipped, inodes)
                        if found is not None:
                            yield Entry(name, found, fd)
                elif (info.st_dev, info.st_ino) not in inodes:
                    yield Entry(name, info, None)
            elif stat.S_ISLNK(info.st_mode):
                fd = _open_link(root_fd, root_path, dir_fd, entry, name, skipped, excluded)
                if fd is not None:
                    found = _regular(fd, name, skipped, inodes)
                    if found is not None:
                        if open_files:
                            yield Entry(name, found, fd)
                        else:
                            os.close(fd)
                            yield Entry(name, found, None)
            else:
                skipped.add(name, "not a regular file or directory")
    finally:
        for dir_fd, _prefix, _names_left in stack:
            if dir_fd != root_fd:
                os.close(dir_fd)


def _names(dir_fd: int, name: str, skipped: Skipped, excluded: frozenset[str]) -> list[str]:
    try:
        names = sorted(os.listdir(dir_fd))
    except OSError as exc:
        skipped.add(f"{name}/" if name else "./", f"cannot list: {exc.strerror or exc}")
        return []
    kept = []
    prefix = f"{name}/" if name else ""
    for entry in names:
        if entry in excluded:
            continue
        try:
            entry.encode("utf-8")
        except UnicodeEncodeError:
            # os.listdir smuggles undecodable bytes in as surrogates; ZIP names must be UTF-8.
            shown = (prefix + entry).encode("utf-8", "backslashreplace").decode()
            skipped.add(shown, "name is not valid UTF-8")
            continue
        kept.append(entry)
    return kept


def _open_at(dir_fd: int, entry: str, flags: int, name: str, skipped: Skipped) -> int | None:
    try:
        return os.open(entry, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            skipped.add(name, "replaced while it was being archived")
        else:
            skipped.add(name, exc.strerror or str(exc))
        return None


def _regular(
    fd: int, name: str, skipped: Skipped, inodes: frozenset[tuple[int, int]]
) -> os.stat_result | None:
    """fstat an open file; close it and return None unless it is a regular file to keep."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        skipped.add(name, "not a regular file")
        return None
    if (info.st_dev, info.st_ino) in inodes:
        os.close(fd)
        return None
    return info


def _open_link(
    root_fd: int,
    root_path: str,
    dir_fd: int,
    entry: str,
    name: str,
    skipped: Skipped,
    excluded: frozenset[str],
) -> int | None:
    """Open the regular file a symlink points to, if it lies inside the tree."""
    try:
        target = os.readlink(entry, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        skipped.add(name, exc.strerror or str(exc))
        return None
    if posixpath.isabs(target):
        # Jobs see their work directory at its real path, so absolute links into it are
        # taken relative to the root; every other absolute link points outside.
        if target != root_path and not target.startswith(root_path.rstrip("/") + "/"):
            skipped.add(name, "symlink points outside the archived directory")
            return None
        beneath = posixpath.relpath(target, root_path)
    else:
        beneath = posixpath.join(posixpath.dirname(name), target)
    # O_NOFOLLOW is not set: a chain of links is followed, but never out of the root.
    fd = _openat2_beneath(root_fd, beneath, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if isinstance(fd, str):
        skipped.add(name, fd)
        return None
    if excluded:
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            real = ""
        inside = posixpath.relpath(real, root_path).split("/")[0] if real else ""
        if not real or inside in excluded:
            os.close(fd)
            return None
    return fd


# ---- openat2 -------------------------------------------------------------------------------


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


# The same number on every Linux architecture (syscalls added after 5.1 share one table).
_SYS_OPENAT2 = 437
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _openat2_beneath(dir_fd: int, path: str, flags: int) -> int | str:
    """An fd for ``path`` resolved strictly beneath ``dir_fd``, or why it cannot be opened."""
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_XDEV)
    fd = _syscall(
        _SYS_OPENAT2,
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd >= 0:
        return int(fd)
    code = ctypes.get_errno()
    if code == errno.EXDEV:
        return "symlink points outside the archived directory"
    if code == errno.ENOENT:
        return "dangling symlink"
    if code == errno.ELOOP:
        return "symlink loop"
    if code in (errno.ENOSYS, errno.EPERM):
        return "symlink cannot be resolved safely here (no openat2)"
    return f"cannot resolve symlink: {os.strerror(code)}"
