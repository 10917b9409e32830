"""How run.sh is started: plain, under resource limits, or inside bubblewrap.

`SANDBOX=none` runs `bash run.sh` like the original. `rlimits` adds per-job limits (address
space, processes, file size, CPU time), set with bash's `ulimit` in the wrapper so they bind
run.sh and everything it starts. `bwrap` also runs the wrapper under bubblewrap: no network
(a private loopback only), a read-only view of the system, the client's DATA_PATH hidden, and
only the payload's own work directory (plus a private /tmp kept beside it) writable.
`JOB_USER` runs the job as an unprivileged user. RLIMIT_NPROC is per user and not enforced
for root, so JOB_MAX_PROCESSES contains a fork bomb only together with JOB_USER.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def recorded_exit_code(exit_file: Path) -> int | None:
    """What the wrapper wrote to `exit_file` (read once it has exited); None if nothing is."""
    with contextlib.suppress(OSError, ValueError):
        return int(exit_file.read_text().strip())
    return None


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


def wrapper_script(settings: ClientSettings) -> str:
    limits = ulimit_prefix(settings) if settings.sandbox != "none" else ""
    # The wrapper ignores SIGTERM so it outlives run.sh and the script gets KILL_GRACE to
    # run its own traps; SIGKILL still ends everything.
    return f"{limits}trap : TERM; bash run.sh; {_RECORD_EXIT}"


def command_for(settings: ClientSettings, work: Path, exit_file: Path, tmp: Path) -> list[str]:
    """The argv that runs run.sh in `work` and records its exit status in `exit_file`."""
    wrapper = ["bash", "-c", wrapper_script(settings), WRAPPER_NAME, str(exit_file)]
    if settings.sandbox != "bwrap":
        return wrapper
    bwrap = shutil.which("bwrap") or "bwrap"
    return [
        bwrap,
        *("--ro-bind", "/", "/"),
        *("--dev", "/dev"),
        *("--proc", "/proc"),
        # /tmp first: DATA_PATH may itself live below /tmp.
        *("--bind", str(tmp), "/tmp"),
        # Other payloads (and the client's own files) are not even visible.
        *("--tmpfs", str(settings.data_path)),
        *("--bind", str(work), str(work)),
        *("--bind", str(exit_file.parent), str(exit_file.parent)),
        # A PID namespace: killing the group kills its init, and with it every process of
        # the job, even one that left the process group with setsid.
        *("--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-pid"),
        *("--setenv", "TMPDIR", "/tmp"),
        *("--chdir", str(work)),
        "--",
        *wrapper,
    ]


def private_tmp(settings: ClientSettings, tmp: Path) -> None:
    """Make the payload's private /tmp if the sandbox binds one (else a mkdir saved per job)."""
    if settings.sandbox == "bwrap":
        tmp.mkdir(exist_ok=True)


def spawn_options(settings: ClientSettings) -> dict[str, Any]:
    """Extra subprocess options: drop to JOB_USER when one is configured."""
    if settings.job_user is None:
        return {}
    user = resolve_user(settings.job_user)
    return {"user": user.uid, "group": user.gid, "extra_groups": []}


def hand_over(paths: list[Path], settings: ClientSettings) -> None:
    """Give JOB_USER ownership of the payload's writable directories (recursively)."""
    if settings.job_user is None:
        return
    user = resolve_user(settings.job_user)
    for top in paths:
        for directory, _dirs, files in os.walk(top):
            os.chown(directory, user.uid, user.gid)
            for name in files:
                os.chown(os.path.join(directory, name), user.uid, user.gid, follow_symlinks=False)
