"""Uploads in progress: where their files go until they become jobs, and how many there are.

An upload writes into ``DATA_PATH/.upload-<uuid>/`` and only becomes ``DATA_PATH/<uuid>/``
(the job's ``loc``) by one rename, just before its row is inserted. The retention pass never
takes a ``.upload-*`` directory for an orphan job directory; it removes one only when the
upload that wrote it is gone:

* every live upload holds an exclusive ``flock`` on ``.upload-<uuid>/.lock``. The kernel drops
  the lock when its process dies, even by ``kill -9``, so any server sharing ``DATA_PATH``
  (a restarted one, or another replica) can tell a live upload from a dead one at once, and
  the first retention pass after a start removes what a crash left behind;
* this process also remembers its own live uploads, because on NFS ``flock`` becomes a POSIX
  lock, which does not exclude other descriptors of the same process;
* a ``.upload-*`` directory with no lock file (an upload that died between creating its
  directory and its lock, or a file system without locks) is removed once nothing in it
  has changed for ``UNLOCKED_GRACE_S``.

The lock file is created under a temporary name, locked, then renamed into place, so a
``.lock`` that can be locked always means its upload is dead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from job_orchestrator._fs import remove_tree

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".upload-"
LOCK_NAME = ".lock"
#: How long a staging directory without a lock may sit unchanged before it is removed.
UNLOCKED_GRACE_S = 600.0


def is_staging(name: str) -> bool:
    return name.startswith(STAGING_PREFIX)


class Staging:
    """One upload's directory while its body is being read."""

    def __init__(self, data_path: Path) -> None:
        name = str(uuid.uuid4())
        self.path = data_path / f"{STAGING_PREFIX}{name}"
        #: Where the job's files live once the upload is accepted.
        self.final = data_path / name
        self._lock_fd: int | None = None

    def create(self) -> None:
        self.path.mkdir(parents=True)
        temporary = self.path / f"{LOCK_NAME}.new"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            # No locks on this file system: fall back on this process's memory and age.
            os.close(fd)
            os.unlink(temporary)
            logger.warning("no lock for upload %s: %s", self.path.name, error)
            return
        self._lock_fd = fd
        os.rename(temporary, self.path / LOCK_NAME)

    def commit(self) -> Path:
        """Move the files to their final place; the lock is kept until :meth:`close`."""
        with contextlib.suppress(FileNotFoundError):
            # Unlinking also refreshes the directory's mtime, which orphan detection reads.
            (self.path / LOCK_NAME).unlink()
        os.rename(self.path, self.final)
        # A rename keeps the mtime; without a lock file to unlink it could look old already.
        os.utime(self.final)
        return self.final

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class UploadLimits:
    """Counts this process's uploads in progress, in total and per client address."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self._max_total = max_total
        self._max_per_client = max_per_client
        self._by_client: Counter[str] = Counter()
        self._live: set[str] = set()

    @property
    def live(self) -> frozenset[str]:
        """Names of the staging directories of this process's uploads in progress."""
        return frozenset(self._live)

    def admit(self, client: str) -> bool:
        total = sum(self._by_client.values())
        if self._max_total and total >= self._max_total:
            return False
        if self._max_per_client and self._by_client[client] >= self._max_per_client:
            return False
        self._by_client[client] += 1
        return True

    def release(self, client: str) -> None:
        self._by_client[client] -= 1
        if self._by_client[client] <= 0:
            del self._by_client[client]

    @contextlib.contextmanager
    def tracking(self, staging: Staging) -> Iterator[None]:
        self._live.add(staging.path.name)
        try:
            yield
        finally:
            self._live.discard(staging.path.name)


def remove_abandoned(data_path: Path, live: frozenset[str], now: float | None = None) -> int:
    """Remove the staging directories of uploads that are no longer running; return how many."""
    now = time.time() if now is None else now
    removed = 0
    try:
        candidates = [entry for entry in data_path.iterdir() if is_staging(entry.name)]
    except FileNotFoundError:
        return 0
    for entry in candidates:
        if entry.name in live or entry.is_symlink() or not entry.is_dir():
            continue
        if _abandoned(entry, now):
            logger.info("removing abandoned upload %s", entry)
            remove_tree(entry)
            removed += 1
    return removed


def _abandoned(entry: Path, now: float) -> bool:
    try:
        fd = os.open(entry / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return _unchanged_for(entry, now, UNLOCKED_GRACE_S)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its upload is alive, here or in another process
    except OSError as error:
        if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP):
            return _unchanged_for(entry, now, UNLOCKED_GRACE_S)
        return False
    finally:
        # Closing drops a lock we took: the directory is removed right after, and a
        # lock held a moment longer would protect nothing.
        os.close(fd)
    return True


def _unchanged_for(entry: Path, now: float, grace_s: float) -> bool:
    """Whether nothing in the directory, at any depth, changed in the last `grace_s`."""
    newest = 0.0
    with contextlib.suppress(FileNotFoundError):
        newest = entry.stat().st_mtime
        for path in entry.rglob("*"):
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, path.lstat().st_mtime)
    return now - newest > grace_s
