"""ClientSettings and load_client_settings; the executors' own settings are in _executors."""

from __future__ import annotations

import os
import pwd
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field

from job_orchestrator import settings_table as table
from job_orchestrator.config._common import (
    DEFAULT_UPLOAD_IDLE_TIMEOUT_S,
    CommonSettings,
    parse_bool,
    parse_unsigned,
    read_common,
    read_log_format,
    read_optional,
    read_seconds,
    read_secret,
)
from job_orchestrator.config._executors import (
    CONTAINER_EXECUTORS,
    ContainerSettings,
    SlurmSettings,
    read_containers,
    read_executor,
    read_slurm,
)
from job_orchestrator.errors import ConfigError
from job_orchestrator.settings_table import Setting

_MIB = 1024 * 1024
#: The most uids JOB_USERS may name (the pool and the start-up reclaim are sized by it).
MAX_JOB_USERS = 65536


@dataclass(frozen=True, slots=True)
class ClientSettings(CommonSettings):
    #: "local" (a process group on this machine), "slurm" (one batch job per payload), or
    #: "docker" / "podman" (one container per payload).
    executor: str = "local"
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    containers: ContainerSettings = field(default_factory=ContainerSettings)
    max_concurrent: int | None = None
    require_exit_trap: bool = False
    #: False: run.sh is not screened for unsafe commands (VALIDATE_SCRIPTS=0).
    validate_scripts: bool = True
    kill_grace_s: float = 10.0
    result_max_bytes: int | None = None
    upload_idle_timeout_s: float = DEFAULT_UPLOAD_IDLE_TIMEOUT_S
    cleaner_interval_s: float = 60.0
    adopt_hold_s: float = 60.0
    server_lease_s: float = 15.0
    client_token: str | None = None
    sandbox: str = "none"
    job_max_memory_mb: int | None = None
    job_max_processes: int | None = None
    job_max_file_mb: int | None = None
    job_max_cpu_seconds: int | None = None
    job_user: str | None = None
    #: JOB_USERS: the first and last uid of the per-job range, or None.
    job_users: tuple[int, int] | None = None
    log_format: str = "text"
    #: DISK_RESERVE_MB in bytes (0: no reserve).
    disk_reserve_bytes: int = 1024 * 1024 * 1024
    #: JOB_MAX_DISK_MB in bytes, or None.
    job_max_disk_bytes: int | None = None
    disk_check_interval_s: float = 2.0


def load_client_settings(env: Mapping[str, str] | None = None) -> ClientSettings:
    env = os.environ if env is None else env
    common = read_common(env, default_port=9000)
    max_concurrent = read_optional(env, table.MAX_CONCURRENT)
    result_mb = read_optional(env, table.RESULT_MAX_MB)
    server_lease_s = read_seconds(env, table.SERVER_LEASE)
    if server_lease_s <= 0:
        raise ConfigError("SERVER_LEASE", "must be more than 0 (no payload would ever start)")
    executor = read_executor(env)
    sandbox = _sandbox(env)
    job_user = _job_user(env)
    job_users = _job_users(env)
    settings = ClientSettings(
        port=common.port,
        host=common.host,
        data_path=common.data_path,
        max_age_s=common.max_age_s,
        log_level=common.log_level,
        log_format=read_log_format(env),
        max_concurrent=(
            parse_unsigned("MAX_CONCURRENT", max_concurrent, maximum=1 << 20) or None
            if max_concurrent
            else None
        ),
        require_exit_trap=parse_bool("REQUIRE_EXIT_TRAP", table.text(env, table.REQUIRE_EXIT_TRAP)),
        # Empty is the default (screened), not "off": a blank line in an env file must not
        # switch the screen off.
        validate_scripts=parse_bool(
            "VALIDATE_SCRIPTS", table.given_or_default(env, table.VALIDATE_SCRIPTS)
        ),
        kill_grace_s=read_seconds(env, table.KILL_GRACE),
        result_max_bytes=(
            parse_unsigned("RESULT_MAX_MB", result_mb, maximum=1 << 30) * 1024 * 1024
            if result_mb
            else None
        ),
        upload_idle_timeout_s=read_seconds(env, table.UPLOAD_IDLE_TIMEOUT),
        cleaner_interval_s=read_seconds(env, table.CLEANER_INTERVAL),
        adopt_hold_s=read_seconds(env, table.ADOPT_HOLD),
        server_lease_s=server_lease_s,
        client_token=read_secret(env, table.CLIENT_TOKEN, table.CLIENT_TOKEN_FILE),
        sandbox=sandbox,
        job_max_memory_mb=_limit(env, table.JOB_MAX_MEMORY_MB),
        job_max_processes=_limit(env, table.JOB_MAX_PROCESSES),
        job_max_file_mb=_limit(env, table.JOB_MAX_FILE_MB),
        job_max_cpu_seconds=_limit(env, table.JOB_MAX_CPU_SECONDS),
        job_user=job_user,
        job_users=job_users,
        executor=executor,
        slurm=read_slurm(env) if executor == "slurm" else SlurmSettings(),
        disk_reserve_bytes=parse_unsigned(
            "DISK_RESERVE_MB", table.given_or_default(env, table.DISK_RESERVE_MB), maximum=2**40
        )
        * _MIB,
        job_max_disk_bytes=_megabytes(_limit(env, table.JOB_MAX_DISK_MB)),
        disk_check_interval_s=_positive_seconds(env, table.DISK_CHECK_INTERVAL),
        containers=(
            read_containers(env) if executor in CONTAINER_EXECUTORS else ContainerSettings()
        ),
    )
    if executor in CONTAINER_EXECUTORS and sandbox != "none":
        raise ConfigError(
            "SANDBOX", "not with EXECUTOR=docker or podman (the container is the sandbox)"
        )
    if sandbox == "rlimits" and job_user is None and job_users is None:
        raise ConfigError(
            "SANDBOX",
            "rlimits without JOB_USERS or JOB_USER runs jobs with the client's own uid, where "
            "they read its environment (CLIENT_TOKEN) and signal it; set JOB_USERS=FIRST-LAST "
            "(the client runs as root), or SANDBOX=bwrap",
        )
    return settings


def _sandbox(env: Mapping[str, str]) -> str:
    sandbox = table.text(env, table.SANDBOX).strip().lower() or table.SANDBOX.literal
    if sandbox not in {"none", "rlimits", "bwrap"}:
        raise ConfigError("SANDBOX", f"expected none, rlimits or bwrap, got {sandbox!r}")
    if sandbox == "bwrap" and shutil.which("bwrap") is None:
        raise ConfigError("SANDBOX", "bwrap is not installed (Debian package bubblewrap)")
    return sandbox


def _limit(env: Mapping[str, str], setting: Setting) -> int | None:
    given = read_optional(env, setting)
    if given is None:
        return None
    value = parse_unsigned(setting.name, given, maximum=2**40)
    if value == 0:
        raise ConfigError(setting.name, "must be at least 1 (leave it unset for no limit)")
    return value


def _job_user(env: Mapping[str, str]) -> str | None:
    name = read_optional(env, table.JOB_USER)
    if name is None:
        return None
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise ConfigError("JOB_USER", f"no such user: {name!r}") from None
    if entry.pw_uid == 0:
        raise ConfigError("JOB_USER", "must be an unprivileged user, not root")
    if os.geteuid() != 0:
        raise ConfigError("JOB_USER", "the client must run as root to switch users")
    _require_setpriv("JOB_USER")
    return name


def _job_users(env: Mapping[str, str]) -> tuple[int, int] | None:
    text = read_optional(env, table.JOB_USERS)
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d{1,10})\s*-\s*(\d{1,10})\s*", text)
    if match is None:
        raise ConfigError("JOB_USERS", f"expected FIRST-LAST (two numeric uids), got {text!r}")
    first, last = int(match[1]), int(match[2])
    if not 0 < first <= last < 2**32 - 1:
        raise ConfigError("JOB_USERS", f"expected 1 <= FIRST <= LAST < 4294967295, got {text!r}")
    if last - first + 1 > MAX_JOB_USERS:
        raise ConfigError("JOB_USERS", f"at most {MAX_JOB_USERS} uids, got {last - first + 1}")
    if read_optional(env, table.JOB_USER) is not None:
        raise ConfigError("JOB_USERS", "set JOB_USERS or JOB_USER, not both")
    if os.geteuid() != 0:
        raise ConfigError("JOB_USERS", "the client must run as root to give jobs their uids")
    if first <= os.getuid() <= last:
        raise ConfigError("JOB_USERS", f"the range holds the client's own uid {os.getuid()}")
    _require_setpriv("JOB_USERS")
    return first, last


def _require_setpriv(variable: str) -> None:
    if shutil.which("setpriv") is None:
        raise ConfigError(variable, "needs setpriv on the PATH (Debian package util-linux)")


def _positive_seconds(env: Mapping[str, str], setting: Setting) -> float:
    seconds = read_seconds(env, setting)
    if seconds <= 0:
        raise ConfigError(setting.name, "must be more than 0")
    return seconds


def _megabytes(value: int | None) -> int | None:
    return None if value is None else value * _MIB
