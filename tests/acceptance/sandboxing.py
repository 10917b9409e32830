"""What the sandbox tests share: the job users, bubblewrap's availability, open directories.

Tests that need root or bubblewrap skip with the reason (`testkit.unavailable`), except under
CI=true where a missing prerequisite is a failure (the CI machine has both).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from testkit import unavailable

#: The one unprivileged user of the JOB_USER tests (created when missing).
JOB_USER = "jo-test-job"


def bwrap_problem(user: int | None = None) -> str | None:
    """Why bubblewrap cannot be used here (None if it can), optionally as another user."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bwrap is not installed (Debian package bubblewrap)"
    checks = [
        [bwrap, "--ro-bind", "/", "/", "true"],
        # The options the client's sandbox really uses.
        [
            *(bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"),
            *("--unshare-net", "--unshare-ipc", "--unshare-uts", "true"),
        ],
    ]
    for argv in checks:
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                timeout=30,
                check=False,
                user=user,
                extra_groups=[] if user is not None else None,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"{' '.join(argv)} failed: {error}"
        if result.returncode != 0:
            stderr = result.stderr.decode(errors="replace").strip()
            return f"the kernel does not let bwrap run ({' '.join(argv)}: {stderr})"
    return None


def ensure_job_user() -> pwd.struct_passwd:
    """The unprivileged user JOB_USER jobs run as; created here when missing (needs root)."""
    if os.geteuid() != 0:
        unavailable("JOB_USER needs the client to run as root (to create and switch users)")
    try:
        return pwd.getpwnam(JOB_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", JOB_USER],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return pwd.getpwnam(JOB_USER)


@contextlib.contextmanager
def open_directory(prefix: str, mode: int = 0o755) -> Iterator[Path]:
    """A temporary directory every user may traverse (pytest's own are 0700 for root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        path.chmod(mode)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
