"""How run.sh is started: plain, under resource limits, or inside bubblewrap.

`SANDBOX=none` runs `bash run.sh` like the original. `rlimits` adds per-job limits (address
space, processes, file size, CPU time), set with bash's `ulimit` in the job's own process
before it starts run.sh, so they bind run.sh and everything it starts. `bwrap` also runs the
job under bubblewrap: no network (a private loopback only), a read-only view of the system,
the client's DATA_PATH hidden, and only the payload's own work directory (plus a private /tmp
kept beside it) writable. `JOB_USERS` runs each job under a uid of its own (client/uids.py
hands them out and reclaims them); `JOB_USER` runs every job as the same unprivileged user.
RLIMIT_NPROC is per uid and not enforced for root, so JOB_MAX_PROCESSES contains a fork bomb
only together with a job user (one job's processes with JOB_USERS, all jobs' with JOB_USER).

The wrapper that records run.sh's exit status runs with the client's uid; only the job's own
process drops to the job's uid (`setpriv`, exec'd, so no process more). The status goes to
`exit/code`, in a directory owned by the client, mode 0700, never bound into bubblewrap: a
job with its own uid cannot even reach it. A job with the client's uid (SANDBOX=none without
a job user, or a Slurm batch job) can, so the one reader, `recorded_exit_code`, never follows
a link, reads only a regular file, at most a few bytes, off the event loop.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shlex
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from job_orchestrator.config import ClientSettings

# run.sh's status reaches disk, even if the client is gone by then. Written in place, not
# via a temporary file and `mv`: every reader reads it only once the wrapper has exited, and
# a wrapper killed mid-write leaves a file they read as "unknown", as a missing one; the
# `mv` was a third process per job (1.3 ms of CPU, a third of the job scripts' cost).
_RECORD_EXIT = 'code=$?; echo "$code" > "$1"; exit "$code"'
_PRIVATE_ENV_PREFIXES = ("SERVICE_",)
_PRIVATE_ENV = {"CLIENT_TOKEN", "API_TOKENS_FILE"}
#: The wrapper's $0: bash prefixes its own reports (`... Killed   bash run.sh`) with it.
WRAPPER_NAME = "job-orchestrator-wrapper"
#: What the wrapper writes is "0\n" to "255\n": anything longer is not its.
_EXIT_FILE_MAX_BYTES = 8
_EXIT_STATUS = re.compile(rb"[0-9]{1,3}")
_OPEN_EXIT_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_OPEN_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


async def recorded_exit_code(exit_file: Path) -> int | None:
    """What the wrapper wrote to `exit_file` (read once it has exited); None if nothing is.

    Read in a thread: even a bounded read of a file system may block.
    """
    return await asyncio.to_thread(read_exit_file, exit_file)


def read_exit_file(exit_file: Path) -> int | None:
    """The exit status in `exit_file`, never following a link a job could have put there.

    The directory and the file are opened without following symlinks (the directory's
    parents are the client's own); only a regular file is read (a FIFO, a device or a
    directory is refused without blocking, thanks to O_NONBLOCK), only a few bytes, and only
    a plain status 0-255 is accepted. Anything else is None: "the status is unknown".
    """
    try:
        directory = os.open(exit_file.parent, _OPEN_DIRECTORY)
        try:
            descriptor = os.open(exit_file.name, _OPEN_EXIT_FILE, dir_fd=directory)
        finally:
            os.close(directory)
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                return None
            data = os.read(descriptor, _EXIT_FILE_MAX_BYTES)
        finally:
            os.close(descriptor)
    except OSError:
        return None
    text = data.strip()
    if len(data) >= _EXIT_FILE_MAX_BYTES or not _EXIT_STATUS.fullmatch(text):
        return None
    status = int(text)
    return status if status <= 255 else None


def shared_uid_warning(settings: ClientSettings) -> str | None:
    """What to tell the operator at start when jobs run with the client's own uid."""
    if settings.sandbox != "none" or settings.job_user or settings.job_users:
        return None
    if settings.executor in ("docker", "podman"):
        return None  # a container's uid is never the client's when it is root, and reaches
        # nothing of the host but the payload's own work directory
    return (
        "SANDBOX=none and no JOB_USERS: jobs run with this client's uid, so they can read its "
        "environment (CLIENT_TOKEN), signal it and read each other's files; set "
        "JOB_USERS=FIRST-LAST (client as root) for a uid per job, and SANDBOX=rlimits or bwrap"
    )


def job_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The client's environment without the orchestrator's own secrets and service URLs."""
    return {
        key: value
        for key, value in environ.items()
        if key not in _PRIVATE_ENV and not key.startswith(_PRIVATE_ENV_PREFIXES)
    }


@dataclass(frozen=True, slots=True)
class JobUser:
    name: str
    uid: int
    gid: int


def resolve_user(name: str) -> JobUser:
    """A user name or numeric uid -> JobUser; raises KeyError if there is no such user."""
    entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    return JobUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def ulimit_prefix(settings: ClientSettings) -> str:
    """`ulimit` calls (soft and hard) for the configured per-job limits."""
    limits = [
        ("-v", settings.job_max_memory_mb, 1024),  # KiB of address space
        ("-u", settings.job_max_processes, 1),
        ("-f", settings.job_max_file_mb, 1024),  # KiB per file written
        ("-t", settings.job_max_cpu_seconds, 1),
    ]
    calls = [f"ulimit -S -H {flag} {value * scale}" for flag, value, scale in limits if value]
    if settings.job_max_cpu_seconds:
        # Hard one second above soft: the kernel sends SIGXCPU first (a named, catchable
        # signal), and SIGKILL only if the job ignores it.
        seconds = settings.job_max_cpu_seconds
        calls[-1] = f"ulimit -S -t {seconds} && ulimit -H -t {seconds + 1}"
    return "".join(f"{call} || exit 125; " for call in calls)


def job_argv(settings: ClientSettings, work: Path, tmp: Path, user: JobUser | None) -> list[str]:
    """What the wrapper starts: drop to the job's uid, enter bubblewrap, set limits, run run.sh.

    The limits are set by the job's own shell, after the drop and inside bubblewrap, so they
    bind the job and nothing of the client: set before the drop, RLIMIT_NPROC would make the
    drop's exec fail while the uid still counts processes (a shared JOB_USER's other jobs).
    """
    limits = ulimit_prefix(settings) if settings.sandbox != "none" else ""
    argv = ["bash", "-c", f"{limits}exec bash run.sh"] if limits else ["bash", "run.sh"]
    if settings.sandbox == "bwrap":
        argv = [*_bwrap_options(settings, work, tmp), "--", *argv]
    if user is not None:
        # Real, effective and saved ids (setpriv copies the effective uid to the saved one),
        # no supplementary groups, and no way back up through a setuid binary.
        setpriv = shutil.which("setpriv") or "setpriv"
        drop = [setpriv, f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups"]
        argv = [*drop, "--no-new-privs", "--", *argv]
    return argv


def wrapper_script(job: list[str]) -> str:
    """The wrapper: runs the job, then records its exit status in the file named by `$1`.

    It ignores SIGTERM so it outlives run.sh and the script gets KILL_GRACE to run its own
    traps (a trap set to a command is reset in the job it starts); SIGKILL ends everything.
    Its own stderr goes to /dev/null and the job's to the log (fd 3, then closed): bash's
    report of a job ended by a signal (`... Terminated  setpriv ... bwrap ...`) would put the
    client's paths and the uid in the user's log; the status names the signal anyway.
    """
    return f"trap : TERM; exec 3>&2 2> /dev/null; {shlex.join(job)} 2>&3 3>&-; {_RECORD_EXIT}"


def command_for(
    settings: ClientSettings, work: Path, exit_file: Path, tmp: Path, user: JobUser | None
) -> list[str]:
    """The argv that runs run.sh in `work` and records its exit status in `exit_file`.

    It runs with the client's uid and in `work`; `user` is whom the job runs as (None: the
    client's uid).
    """
    script = wrapper_script(job_argv(settings, work, tmp, user))
    return ["bash", "-c", script, WRAPPER_NAME, str(exit_file)]


def _bwrap_options(settings: ClientSettings, work: Path, tmp: Path) -> list[str]:
    bwrap = shutil.which("bwrap") or "bwrap"
    return [
        bwrap,
        *("--ro-bind", "/", "/"),
        *("--dev", "/dev"),
        *("--proc", "/proc"),
        # /tmp first: DATA_PATH may itself live below /tmp.
        *("--bind", str(tmp), "/tmp"),
        # Other payloads (and the client's own files, the exit status among them) are not
        # even visible.
        *("--tmpfs", str(settings.data_path)),
        *("--bind", str(work), str(work)),
        # A PID namespace: killing the group kills its init, and with it every process of
        # the job, even one that left the process group with setsid.
        *("--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-pid"),
        *("--setenv", "TMPDIR", "/tmp"),
        *("--chdir", str(work)),
    ]


def private_tmp(settings: ClientSettings, tmp: Path) -> None:
    """Make the payload's private /tmp if the sandbox binds one (else a mkdir saved per job)."""
    if settings.sandbox == "bwrap":
        tmp.mkdir(exist_ok=True)


def configured_user(settings: ClientSettings) -> JobUser | None:
    """JOB_USER, the one user every job runs as; None: jobs run with the client's uid."""
    return resolve_user(settings.job_user) if settings.job_user is not None else None


def user_for(settings: ClientSettings, uid: int | None) -> JobUser | None:
    """Whom a payload runs as: its own uid of JOB_USERS (gid = uid), else JOB_USER, else
    None (the client's uid)."""
    if uid is not None:
        return JobUser(str(uid), uid, uid)
    return configured_user(settings)


def prepare_own_uid(root: Path, work: Path, tmp: Path, user: JobUser) -> None:
    """The layout of a payload with a uid of its own: the payload root the client's and
    traverse-only (0711), `work/` and `tmp/` the job's and private (0700)."""
    tmp.mkdir(exist_ok=True)
    hand_over([work, tmp], user)
    root.chmod(0o711)
    work.chmod(0o700)
    tmp.chmod(0o700)


def own_uid_environment(environ: Mapping[str, str], work: Path, tmp: Path) -> dict[str, str]:
    """A job with a uid of its own: its home is its work directory, its TMPDIR its own."""
    return {**environ, "HOME": str(work), "TMPDIR": str(tmp)}


def hand_over(paths: list[Path], user: JobUser) -> None:
    """Give the job's user its writable directories (recursively, never following links)."""
    for top in paths:
        for directory, _dirs, files in os.walk(top):
            os.chown(directory, user.uid, user.gid, follow_symlinks=False)
            for name in files:
                os.chown(os.path.join(directory, name), user.uid, user.gid, follow_symlinks=False)
