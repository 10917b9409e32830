"""File descriptors: the limit raised at start, and running out of them told apart.

Shared by the server and the client. systemd (and many shells) start a process with a soft
`RLIMIT_NOFILE` of 1024 while allowing far more; every held HTTP request costs at least one
descriptor, so both programs take the hard limit at start.

Running out (`EMFILE`: this process; `ENFILE`: the whole system) is this process's own
trouble: a request that meets it is answered 503 with `Retry-After`, and a connection to a
client that fails with it says nothing about that client's health.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
from pathlib import Path

logger = logging.getLogger(__name__)

#: errno values meaning "no descriptor left" (per process, system-wide).
EXHAUSTED_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
#: Seconds a request refused for want of descriptors is told to wait.
RETRY_AFTER_S = 5
_NR_OPEN = Path("/proc/sys/fs/nr_open")


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; log and return the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        # Linux refuses a soft limit above fs.nr_open, whatever the hard limit says.
        try:
            target = int(_NR_OPEN.read_text())
        except (OSError, ValueError):
            target = soft
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as error:
            logger.warning("could not raise the open files limit from %d: %s", soft, error)
            target = soft
    else:
        target = soft
    logger.info(
        "open files limit (RLIMIT_NOFILE): %d (was %d, hard limit %s)",
        target,
        soft,
        "unlimited" if hard == resource.RLIM_INFINITY else hard,
    )
    return target


def is_exhaustion(error: BaseException | None) -> bool:
    """Whether `error`, or an error it wraps, says that no descriptor was left."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in EXHAUSTED_ERRNOS:
            return True
        # aiohttp's ClientConnectorError keeps the socket's OSError as `os_error`.
        wrapped = getattr(error, "os_error", None)
        if isinstance(wrapped, OSError) and wrapped.errno in EXHAUSTED_ERRNOS:
            return True
        error = error.__cause__ or error.__context__
    return False


def exhausted_now() -> bool:
    """Whether this process has (almost) no descriptor left at this moment.

    For errors that do not carry an errno (SQLite's "unable to open database file").
    Listing /proc/self/fd needs a descriptor itself, so failing to list it says yes.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        open_count = len(os.listdir("/proc/self/fd"))
    except OSError as error:
        return error.errno in EXHAUSTED_ERRNOS
    # Two spare: the listing's own descriptor, and one freed since the failure.
    return open_count >= soft - 2
