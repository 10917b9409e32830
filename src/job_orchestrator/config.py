"""Typed settings read from the environment.

Names and defaults follow the original (SPEC §1) and are declared in settings_table, the
only way a loader here reads a variable; every value is validated at start-up and a bad one
raises ConfigError naming the variable (the CLI turns it into exit status 2).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import pwd
import re
import shlex
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from job_orchestrator import settings_table as table
from job_orchestrator import wire
from job_orchestrator.credentials import parse_api_tokens, parse_public_keys
from job_orchestrator.errors import ConfigError
from job_orchestrator.settings_table import Setting

logger = logging.getLogger(__name__)

DEFAULT_MAX_AGE_S = int(table.MAX_AGE.literal)
DEFAULT_RUNS_PER_USER = int(table.SERVICE_RUNS_PER_USER.literal)
DEFAULT_MAX_RUNS = int(table.SERVICE_MAX_RUNS.literal)
UPLOAD_LIMIT_BYTES = int(table.UPLOAD_MAX_MB.literal) * 1024 * 1024
DEFAULT_UPLOAD_IDLE_TIMEOUT_S = float(table.UPLOAD_IDLE_TIMEOUT.literal)
DEFAULT_UPLOAD_MAX_CONCURRENT = int(table.UPLOAD_MAX_CONCURRENT.literal)
DEFAULT_UPLOAD_MAX_PER_CLIENT = int(table.UPLOAD_MAX_PER_CLIENT.literal)
DEFAULT_CALLBACK_DEADLINE_S = float(table.CALLBACK_DEADLINE.literal)
DEFAULT_CALLBACK_TIMEOUT_S = float(table.CALLBACK_TIMEOUT.literal)
_MIB = 1024 * 1024
#: A secret file larger than this is a mistake (a log, a device), not a secret.
SECRET_FILE_MAX_BYTES = 64 * 1024
#: The word of CALLBACK_ALLOW that stands for every public (globally routable) address.
CALLBACK_ALLOW_PUBLIC = "public"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# No suffix ends with "_" + another, so the order of the table cannot change which matches.
_SERVICE_SUFFIXES = tuple(
    setting.name.removeprefix(table.SERVICE_PATTERN_PREFIX) for setting in table.SERVICE_SETTINGS
)


def parse_unsigned(variable: str, raw: str, *, maximum: int) -> int:
    """Digits with an optional '+', no whitespace: what Rust's `u16/u64::from_str` accept."""
    value = wire.parse_unsigned(raw, maximum)
    if value is None:
        if wire.parse_unsigned(raw, 2**64) is not None:
            raise ConfigError(variable, f"{int(raw)} is larger than the maximum {maximum}")
        raise ConfigError(variable, f"expected a non-negative integer, got {raw!r}")
    return value


def parse_seconds(variable: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(variable, f"expected a number of seconds, got {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ConfigError(variable, f"expected a finite non-negative number, got {raw!r}")
    return value


def parse_bool(variable: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(variable, f"expected 1/0, true/false or yes/no, got {raw!r}")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One client (executor node) of a service, as the three URLs the server calls."""

    upload_url: str
    download_url: str
    terminate_url: str

    @property
    def partial_url(self) -> str:
        return derive_partial_url(self.download_url)


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    name: str
    nodes: tuple[NodeConfig, ...]
    runs_per_user: int = DEFAULT_RUNS_PER_USER
    max_runs: int = DEFAULT_MAX_RUNS
    timeout_s: float | None = None
    client_token: str | None = None
    #: The image our container clients run its payloads in (None: the client's own).
    container_image: str | None = None


@dataclass(frozen=True, slots=True)
class CommonSettings:
    port: int
    host: str
    data_path: Path
    max_age_s: int
    log_level: str


@dataclass(frozen=True, slots=True)
class ServerSettings(CommonSettings):
    db_path: str
    services: Mapping[str, ServiceConfig] = field(default_factory=dict)
    upload_limit_bytes: int = UPLOAD_LIMIT_BYTES
    #: Seconds an upload body may send nothing before it is answered 408; 0 waits forever.
    upload_idle_timeout_s: float = DEFAULT_UPLOAD_IDLE_TIMEOUT_S
    #: Uploads in progress at once (0: no limit), in total and from one client address.
    upload_max_concurrent: int = DEFAULT_UPLOAD_MAX_CONCURRENT
    upload_max_per_client: int = DEFAULT_UPLOAD_MAX_PER_CLIENT
    #: Held requests at once (0: no limit), per user and in total: log follows, `?wait=`.
    log_follow_max_per_user: int = 8
    log_follow_max_total: int = 64
    wait_max_per_user: int = 16
    wait_max_total: int = 128
    #: Largest copy of a job's log kept on the server, in MiB (0: no limit).
    log_keep_max_mb: int = 100
    #: Queued jobs one user may have, over all services (0: no limit).
    queue_max_per_user: int = 1000
    client_timeout_s: float = 30.0
    partial_keep_timeout_s: float = 300.0
    retry_deadline_s: float = 6 * 3600.0
    poll_interval_s: float = 1.0
    long_poll_s: float = 25.0
    #: How long a status other than the known one must hold before our client answers a
    #: long-poll with it (0: at once); a short job then costs one held request, not one each.
    status_settle_s: float = 0.2
    dispatch_attempts: int = 3
    safety_tick_s: float = 5.0
    cleaner_interval_s: float = 60.0
    node_check_interval_s: float = 5.0
    failover_after_s: float = 30.0
    api_tokens_file: Path | None = None
    #: Users (of API_TOKENS_FILE) whose tokens open /status; with tokens set, nobody else's do.
    admin_users: frozenset[int] = frozenset()
    #: Portal-signed JWTs (docs/portals.md): the key file, re-read when it changes; None: off.
    jwt_public_keys: Path | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_user_claim: str = "sub"
    jwt_admin_claim: str | None = None
    #: Bearer token /metrics requires; None: /metrics is open (like /health).
    metrics_token: str | None = None
    log_format: str = "text"
    #: HMAC-SHA256 key of completion callbacks; None: a callback_url is refused at upload.
    callback_secret: str | None = None
    #: Where callbacks may go: any public address (when true) and these networks.
    callback_allow_public: bool = True
    callback_allow_networks: tuple[IPNetwork, ...] = ()
    #: How long after its first attempt a callback is retried before it is given up.
    callback_deadline_s: float = DEFAULT_CALLBACK_DEADLINE_S
    #: The bound of one delivery attempt (name resolution, connection, answer).
    callback_timeout_s: float = DEFAULT_CALLBACK_TIMEOUT_S
    #: This replica's name among those sharing the database; None: "<hostname>:<port>".
    replica_id: str | None = None
    #: Seconds without a heartbeat after which a replica's jobs are taken over by another.
    lease_s: float = 15.0


@dataclass(frozen=True, slots=True)
class SlurmSettings:
    """EXECUTOR=slurm: where and how payloads are submitted as batch jobs."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    #: More sbatch options (SLURM_EXTRA_ARGS, split like a shell would).
    extra_args: tuple[str, ...] = ()
    #: Seconds between two squeue calls (for all jobs) while jobs are in Slurm.
    poll_interval_s: float = 0.5

    def sbatch_options(self) -> list[str]:
        options = [
            f"--{name}={value}"
            for name, value in (
                ("partition", self.partition),
                ("account", self.account),
                ("qos", self.qos),
            )
            if value
        ]
        return [*options, *self.extra_args]


@dataclass(frozen=True, slots=True)
class ContainerSettings:
    """EXECUTOR=docker or podman: the image, network and limits of the payloads' containers."""

    image: str = ""
    #: Patterns (fnmatch) of the images a server may name for a payload; CONTAINER_IMAGE always.
    images: tuple[str, ...] = ()
    network: str = "none"
    shm_mb: int = 256
    #: More `create` options (CONTAINER_OPTIONS, split like a shell would).
    options: tuple[str, ...] = ()
    #: CLIENT_ID as given; None: made at the first start and kept in DATA_PATH.
    client_id: str | None = None
    max_cpus: float | None = None
    #: JOB_ENV: the names of the client's variables a container gets.
    env: tuple[str, ...] = ()


CONTAINER_EXECUTORS = frozenset({"docker", "podman"})
#: What CLIENT_ID may be: it is part of container names, which engines restrict.
CLIENT_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,39}")


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


def derive_partial_url(download_url: str) -> str:
    """UPSTREAM §3.4: replace the last path segment of DOWNLOAD_URL with `retrieve_partial`."""
    slash = download_url.rfind("/")
    if slash == -1:
        return f"{download_url}/retrieve_partial"
    return f"{download_url[: slash + 1]}retrieve_partial"


def _common(env: Mapping[str, str], default_port: int) -> CommonSettings:
    port_text = table.raw(env, table.PORT)
    port = default_port if port_text is None else parse_unsigned("PORT", port_text, maximum=65535)
    max_age = parse_unsigned("MAX_AGE", table.text(env, table.MAX_AGE), maximum=2**64 - 1)
    log_level = table.text(env, table.LOG_LEVEL).upper()
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError("LOG_LEVEL", f"expected DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
    data_path = table.raw(env, table.DATA_PATH)
    return CommonSettings(
        port=port,
        host=table.text(env, table.HOST),
        data_path=Path(str(Path.cwd() / "data") if data_path is None else data_path).absolute(),
        max_age_s=max_age,
        log_level=log_level,
    )


def _log_format(env: Mapping[str, str]) -> str:
    log_format = table.text(env, table.LOG_FORMAT).strip().lower() or table.LOG_FORMAT.literal
    if log_format not in {"text", "json"}:
        raise ConfigError("LOG_FORMAT", f"expected text or json, got {log_format!r}")
    return log_format


def _optional(env: Mapping[str, str], setting: Setting) -> str | None:
    """A setting without a default: its text, None when unset or empty."""
    return table.raw(env, setting) or None


def secret_value(
    variable: str, value: str | None, file_variable: str, path: str | None
) -> str | None:
    """`variable`'s value, or the content of the file `file_variable` names; None: neither.

    A secret given as a file is in no process environment (a process's environment is
    readable, in /proc/<pid>/environ, by everything running with its uid). Trailing
    newlines of the file are dropped; an empty value counts as unset. Both given, or a file
    that cannot be read or is empty, stops the start naming the variable; no message here
    ever holds the secret.
    """
    if not path:
        return value or None
    if value:
        raise ConfigError(file_variable, f"set either {variable} or {file_variable}, not both")
    try:
        with open(path, "rb") as file:
            content = file.read(SECRET_FILE_MAX_BYTES + 1)
    except OSError as error:
        raise ConfigError(file_variable, f"cannot read {path!r}: {error.strerror}") from None
    if len(content) > SECRET_FILE_MAX_BYTES:
        raise ConfigError(file_variable, f"{path!r} is larger than {SECRET_FILE_MAX_BYTES} bytes")
    try:
        secret = content.decode().rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(file_variable, f"{path!r} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(file_variable, f"{path!r} is empty")
    return secret


def _secret(env: Mapping[str, str], setting: Setting, file_setting: Setting) -> str | None:
    """A secret setting given directly or as `<NAME>_FILE` (see `secret_value`)."""
    return secret_value(
        setting.name, table.raw(env, setting), file_setting.name, table.raw(env, file_setting)
    )


def load_server_settings(env: Mapping[str, str] | None = None) -> ServerSettings:
    env = os.environ if env is None else env
    common = _common(env, default_port=5000)
    upload_mb = parse_unsigned(
        "UPLOAD_MAX_MB", table.given_or_default(env, table.UPLOAD_MAX_MB), maximum=1 << 20
    )
    allow_public, allow_networks = parse_callback_allow(table.text(env, table.CALLBACK_ALLOW))
    callback_timeout_s = _seconds(env, table.CALLBACK_TIMEOUT)
    if callback_timeout_s <= 0:
        raise ConfigError("CALLBACK_TIMEOUT", "must be more than 0")
    return ServerSettings(
        port=common.port,
        host=common.host,
        data_path=common.data_path,
        max_age_s=common.max_age_s,
        log_level=common.log_level,
        log_format=_log_format(env),
        db_path=server_db_path(env),
        services=load_services(
            env, default_token=_secret(env, table.CLIENT_TOKEN, table.CLIENT_TOKEN_FILE)
        ),
        api_tokens_file=_tokens_file(env),
        admin_users=_user_ids("ADMIN_USERS", _optional(env, table.ADMIN_USERS)),
        jwt_public_keys=_jwt_keys_file(env),
        jwt_audience=_optional(env, table.JWT_AUDIENCE),
        jwt_issuer=_optional(env, table.JWT_ISSUER),
        jwt_user_claim=table.given_or_default(env, table.JWT_USER_CLAIM),
        jwt_admin_claim=_optional(env, table.JWT_ADMIN_CLAIM),
        metrics_token=_secret(env, table.METRICS_TOKEN, table.METRICS_TOKEN_FILE),
        upload_limit_bytes=upload_mb * 1024 * 1024,
        upload_idle_timeout_s=_seconds(env, table.UPLOAD_IDLE_TIMEOUT),
        upload_max_concurrent=_count(env, table.UPLOAD_MAX_CONCURRENT),
        upload_max_per_client=_count(env, table.UPLOAD_MAX_PER_CLIENT),
        log_follow_max_per_user=_count(env, table.LOG_FOLLOW_MAX_PER_USER),
        log_follow_max_total=_count(env, table.LOG_FOLLOW_MAX_TOTAL),
        wait_max_per_user=_count(env, table.WAIT_MAX_PER_USER),
        wait_max_total=_count(env, table.WAIT_MAX_TOTAL),
        log_keep_max_mb=_count(env, table.LOG_KEEP_MAX_MB),
        queue_max_per_user=_count(env, table.QUEUE_MAX_PER_USER),
        client_timeout_s=_seconds(env, table.CLIENT_TIMEOUT),
        partial_keep_timeout_s=_seconds(env, table.PARTIAL_KEEP_TIMEOUT),
        retry_deadline_s=_seconds(env, table.RETRY_DEADLINE),
        poll_interval_s=_seconds(env, table.POLL_INTERVAL),
        long_poll_s=_seconds(env, table.LONG_POLL),
        status_settle_s=_seconds(env, table.STATUS_SETTLE),
        cleaner_interval_s=_seconds(env, table.CLEANER_INTERVAL),
        node_check_interval_s=_seconds(env, table.NODE_CHECK_INTERVAL),
        failover_after_s=_seconds(env, table.FAILOVER_AFTER),
        callback_secret=_callback_secret(env),
        callback_allow_public=allow_public,
        callback_allow_networks=allow_networks,
        callback_deadline_s=_seconds(env, table.CALLBACK_DEADLINE),
        callback_timeout_s=callback_timeout_s,
        replica_id=_optional(env, table.REPLICA_ID),
        lease_s=_lease_s(env),
    )


def _callback_secret(env: Mapping[str, str]) -> str | None:
    secret = _secret(env, table.CALLBACK_SECRET, table.CALLBACK_SECRET_FILE)
    if secret is not None and len(secret) < 16:
        given = table.CALLBACK_SECRET_FILE if table.raw(env, table.CALLBACK_SECRET_FILE) else None
        raise ConfigError((given or table.CALLBACK_SECRET).name, "must have at least 16 characters")
    return secret


def parse_callback_allow(raw: str) -> tuple[bool, tuple[IPNetwork, ...]]:
    """CALLBACK_ALLOW -> (public addresses allowed, networks allowed besides).

    Comma-separated CIDR networks (a bare address is its own /32 or /128) and the word
    `public`; empty or unset means `public` alone.
    """
    entries = [entry.strip() for entry in raw.split(",") if entry.strip()]
    if not entries:
        return True, ()
    public = False
    networks: list[IPNetwork] = []
    for entry in entries:
        if entry.lower() == CALLBACK_ALLOW_PUBLIC:
            public = True
            continue
        try:
            # Host bits are dropped (10.1.2.3/8 is 10.0.0.0/8): a common way to write it.
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(
                "CALLBACK_ALLOW",
                f"expected CIDR networks (such as 127.0.0.0/8) or {CALLBACK_ALLOW_PUBLIC!r}, "
                f"got {entry!r}",
            ) from None
    return public, tuple(networks)


def server_db_path(env: Mapping[str, str]) -> str:
    """DB_PATH (or DB_PATH_FILE: a PostgreSQL URL may hold a password), else the default."""
    db_path = _secret(env, table.DB_PATH, table.DB_PATH_FILE)
    return str(Path.cwd() / "db.sqlite") if db_path is None else db_path


def _lease_s(env: Mapping[str, str]) -> float:
    lease_s = _seconds(env, table.LEASE_S)
    if lease_s <= 0:
        raise ConfigError("LEASE_S", "must be more than 0 (every job would change hands)")
    return lease_s


def load_client_settings(env: Mapping[str, str] | None = None) -> ClientSettings:
    env = os.environ if env is None else env
    common = _common(env, default_port=9000)
    max_concurrent = _optional(env, table.MAX_CONCURRENT)
    result_mb = _optional(env, table.RESULT_MAX_MB)
    server_lease_s = _seconds(env, table.SERVER_LEASE)
    if server_lease_s <= 0:
        raise ConfigError("SERVER_LEASE", "must be more than 0 (no payload would ever start)")
    executor = _executor(env)
    sandbox = _sandbox(env)
    job_user = _job_user(env)
    job_users = _job_users(env)
    settings = ClientSettings(
        port=common.port,
        host=common.host,
        data_path=common.data_path,
        max_age_s=common.max_age_s,
        log_level=common.log_level,
        log_format=_log_format(env),
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
        kill_grace_s=_seconds(env, table.KILL_GRACE),
        result_max_bytes=(
            parse_unsigned("RESULT_MAX_MB", result_mb, maximum=1 << 30) * 1024 * 1024
            if result_mb
            else None
        ),
        upload_idle_timeout_s=_seconds(env, table.UPLOAD_IDLE_TIMEOUT),
        cleaner_interval_s=_seconds(env, table.CLEANER_INTERVAL),
        adopt_hold_s=_seconds(env, table.ADOPT_HOLD),
        server_lease_s=server_lease_s,
        client_token=_secret(env, table.CLIENT_TOKEN, table.CLIENT_TOKEN_FILE),
        sandbox=sandbox,
        job_max_memory_mb=_limit(env, table.JOB_MAX_MEMORY_MB),
        job_max_processes=_limit(env, table.JOB_MAX_PROCESSES),
        job_max_file_mb=_limit(env, table.JOB_MAX_FILE_MB),
        job_max_cpu_seconds=_limit(env, table.JOB_MAX_CPU_SECONDS),
        job_user=job_user,
        job_users=job_users,
        executor=executor,
        slurm=_slurm(env) if executor == "slurm" else SlurmSettings(),
        disk_reserve_bytes=parse_unsigned(
            "DISK_RESERVE_MB", table.given_or_default(env, table.DISK_RESERVE_MB), maximum=2**40
        )
        * _MIB,
        job_max_disk_bytes=_megabytes(_limit(env, table.JOB_MAX_DISK_MB)),
        disk_check_interval_s=_positive_seconds(env, table.DISK_CHECK_INTERVAL),
        containers=(_containers(env) if executor in CONTAINER_EXECUTORS else ContainerSettings()),
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


def _executor(env: Mapping[str, str]) -> str:
    executor = table.text(env, table.EXECUTOR).strip().lower() or table.EXECUTOR.literal
    if executor not in {"local", "slurm", *CONTAINER_EXECUTORS}:
        raise ConfigError("EXECUTOR", f"expected local, slurm, docker or podman, got {executor!r}")
    if executor in CONTAINER_EXECUTORS and shutil.which(executor) is None:
        raise ConfigError("EXECUTOR", f"{executor} needs the {executor} command on the PATH")
    if executor == "slurm":
        if shutil.which("sbatch") is None:
            raise ConfigError("EXECUTOR", "slurm needs sbatch, squeue and scancel on the PATH")
        if _optional(env, table.JOB_USER) is not None:
            raise ConfigError("JOB_USER", "not supported with EXECUTOR=slurm (jobs run as you)")
        if _optional(env, table.JOB_USERS) is not None:
            raise ConfigError("JOB_USERS", "not supported with EXECUTOR=slurm (jobs run as you)")
    return executor


def _slurm(env: Mapping[str, str]) -> SlurmSettings:
    extra = table.raw(env, table.SLURM_EXTRA_ARGS) or ""
    try:
        extra_args = tuple(shlex.split(extra))
    except ValueError as error:
        raise ConfigError(
            "SLURM_EXTRA_ARGS", f"not a shell-quoted list ({error}): {extra!r}"
        ) from None
    poll_interval_s = _seconds(env, table.SLURM_POLL_INTERVAL)
    if not 0 < poll_interval_s <= 10:
        raise ConfigError("SLURM_POLL_INTERVAL", "expected more than 0 and at most 10 seconds")
    return SlurmSettings(
        poll_interval_s=poll_interval_s,
        partition=_optional(env, table.SLURM_PARTITION),
        account=_optional(env, table.SLURM_ACCOUNT),
        qos=_optional(env, table.SLURM_QOS),
        extra_args=extra_args,
    )


def _containers(env: Mapping[str, str]) -> ContainerSettings:
    """EXECUTOR=docker or podman: whether the engine answers is checked at start (cli.py)."""
    image = (_optional(env, table.CONTAINER_IMAGE) or "").strip()
    if not image:
        raise ConfigError("CONTAINER_IMAGE", "required with EXECUTOR=docker or podman")
    images = tuple(
        part.strip() for part in (_optional(env, table.CONTAINER_IMAGES) or "").split(",")
    )
    network = table.text(env, table.CONTAINER_NETWORK).strip() or "none"
    if network in {"host", "bridge", "default"} or network.startswith("container:"):
        # The host's network (or a shared one) is not confinement; a network the operator
        # made for jobs is named explicitly.
        raise ConfigError("CONTAINER_NETWORK", f"{network!r} is not allowed; use none or a name")
    options = table.raw(env, table.CONTAINER_OPTIONS) or ""
    try:
        split_options = tuple(shlex.split(options))
    except ValueError as error:
        raise ConfigError("CONTAINER_OPTIONS", f"not a shell-quoted list ({error})") from None
    client_id = _optional(env, table.CLIENT_ID)
    if client_id is not None and not CLIENT_ID_PATTERN.fullmatch(client_id):
        raise ConfigError(
            "CLIENT_ID", "expected 1-40 of a-z 0-9 _ . - (starting with a letter or digit)"
        )
    max_cpus = _optional(env, table.JOB_MAX_CPUS)
    cpus = None
    if max_cpus is not None:
        cpus = parse_seconds("JOB_MAX_CPUS", max_cpus)  # a finite non-negative number
        if cpus < 0.01:
            raise ConfigError("JOB_MAX_CPUS", "must be at least 0.01 (leave it unset for no limit)")
    names = tuple(
        name.strip() for name in (_optional(env, table.JOB_ENV) or "").split(",") if name.strip()
    )
    return ContainerSettings(
        image=image,
        images=tuple(pattern for pattern in images if pattern),
        network=network,
        shm_mb=parse_unsigned(
            "CONTAINER_SHM_MB", table.text(env, table.CONTAINER_SHM_MB), maximum=1 << 20
        )
        or 64,
        options=split_options,
        client_id=client_id,
        max_cpus=cpus,
        env=names,
    )


def _sandbox(env: Mapping[str, str]) -> str:
    sandbox = table.text(env, table.SANDBOX).strip().lower() or table.SANDBOX.literal
    if sandbox not in {"none", "rlimits", "bwrap"}:
        raise ConfigError("SANDBOX", f"expected none, rlimits or bwrap, got {sandbox!r}")
    if sandbox == "bwrap" and shutil.which("bwrap") is None:
        raise ConfigError("SANDBOX", "bwrap is not installed (Debian package bubblewrap)")
    return sandbox


def _limit(env: Mapping[str, str], setting: Setting) -> int | None:
    given = _optional(env, setting)
    if given is None:
        return None
    value = parse_unsigned(setting.name, given, maximum=2**40)
    if value == 0:
        raise ConfigError(setting.name, "must be at least 1 (leave it unset for no limit)")
    return value


def _job_user(env: Mapping[str, str]) -> str | None:
    name = _optional(env, table.JOB_USER)
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


#: The most uids JOB_USERS may name (the pool and the start-up reclaim are sized by it).
MAX_JOB_USERS = 65536


def _job_users(env: Mapping[str, str]) -> tuple[int, int] | None:
    text = _optional(env, table.JOB_USERS)
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
    if _optional(env, table.JOB_USER) is not None:
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


def _count(env: Mapping[str, str], setting: Setting) -> int:
    return parse_unsigned(setting.name, table.given_or_default(env, setting), maximum=1 << 20)


def _seconds(env: Mapping[str, str], setting: Setting) -> float:
    return parse_seconds(setting.name, table.given_or_default(env, setting))


def _positive_seconds(env: Mapping[str, str], setting: Setting) -> float:
    seconds = _seconds(env, setting)
    if seconds <= 0:
        raise ConfigError(setting.name, "must be more than 0")
    return seconds


def _megabytes(value: int | None) -> int | None:
    return None if value is None else value * _MIB


def _split_service_key(key: str) -> tuple[str, str] | None:
    """`SERVICE_MY_APP_UPLOAD_URL` -> ("my_app", "UPLOAD_URL"); None for unknown suffixes."""
    rest = key[len("SERVICE_") :]
    for suffix in _SERVICE_SUFFIXES:
        if rest.endswith("_" + suffix) and len(rest) > len(suffix) + 1:
            return rest[: -len(suffix) - 1].lower(), suffix
    return None


def _url_list(variable: str, raw: str) -> list[str]:
    urls = [part.strip() for part in raw.split(",") if part.strip()]
    if not urls:
        raise ConfigError(variable, "expected one or more URLs")
    for url in urls:
        if not re.match(r"https?://", url):
            raise ConfigError(variable, f"expected an http:// or https:// URL, got {url!r}")
    return urls


def _user_ids(variable: str, raw: str | None) -> frozenset[int]:
    """A comma-separated list of user ids (32-bit integers, as user_id fields)."""
    if raw is None:
        return frozenset()
    ids = set()
    for part in raw.split(","):
        user_id = wire.parse_i32(part.strip())
        if user_id is None:
            raise ConfigError(variable, f"expected comma-separated user ids, got {part.strip()!r}")
        ids.add(user_id)
    return frozenset(ids)


def _tokens_file(env: Mapping[str, str]) -> Path | None:
    return _credential_file(env, table.API_TOKENS_FILE, parse_api_tokens)


def _jwt_keys_file(env: Mapping[str, str]) -> Path | None:
    path = _credential_file(env, table.JWT_PUBLIC_KEYS, parse_public_keys)
    if path is not None and _optional(env, table.JWT_AUDIENCE) is None:
        # Without it a JWT the portal signed for another service would be taken here too.
        raise ConfigError("JWT_AUDIENCE", "must be set with JWT_PUBLIC_KEYS")
    return path


def _credential_file(
    env: Mapping[str, str], setting: Setting, parse: Callable[[str, str], object]
) -> Path | None:
    """The file's path, after a first parse: a malformed file stops the start, saying where."""
    given = _optional(env, setting)
    if given is None:
        return None
    path = Path(given)
    try:
        content = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigError(setting.name, f"cannot read {given!r}: {reason}") from None
    parse(content, setting.name)
    return path


def load_services(
    env: Mapping[str, str], default_token: str | None = None
) -> dict[str, ServiceConfig]:
    raw: dict[str, dict[str, tuple[str, str]]] = {}
    for key in sorted(env):
        if not key.startswith("SERVICE_"):
            continue
        split = _split_service_key(key)
        if split is None:
            logger.warning("ignoring %s: not a known SERVICE_<NAME>_<SETTING> variable", key)
            continue
        name, suffix = split
        raw.setdefault(name, {})[suffix] = (key, env[key])
    return {
        name: service
        for name, values in sorted(raw.items())
        if (service := _build_service(name, values, default_token)) is not None
    }


def _build_service(
    name: str, values: Mapping[str, tuple[str, str]], default_token: str | None
) -> ServiceConfig | None:
    def urls(suffix: str) -> list[str] | None:
        if suffix not in values:
            return None
        variable, text = values[suffix]
        return _url_list(variable, text)

    uploads, downloads, terminates = urls("UPLOAD_URL"), urls("DOWNLOAD_URL"), urls("TERMINATE_URL")
    if "CLIENTS" in values:
        bases = [url.rstrip("/") for url in _url_list(*values["CLIENTS"])]
        uploads = uploads or [f"{base}/submit" for base in bases]
        downloads = downloads or [f"{base}/retrieve" for base in bases]
        terminates = terminates or [f"{base}/kill" for base in bases]
    prefix = f"SERVICE_{name.upper()}"
    if uploads is None or downloads is None:
        logger.warning(
            "ignoring service %r: it needs %s_UPLOAD_URL and %s_DOWNLOAD_URL (or %s_CLIENTS)",
            name,
            prefix,
            prefix,
            prefix,
        )
        return None
    if terminates is None:
        terminates = [_sibling_url(url, "kill") for url in downloads]
        logger.warning("%s_TERMINATE_URL not set; using %s", prefix, ",".join(terminates))
    if not len(uploads) == len(downloads) == len(terminates):
        raise ConfigError(
            f"{prefix}_UPLOAD_URL",
            "UPLOAD_URL, DOWNLOAD_URL and TERMINATE_URL must list the same number of clients",
        )

    def count(suffix: str, default: int) -> int:
        if suffix not in values:
            return default
        return parse_unsigned(*values[suffix], maximum=65535)

    timeout = parse_seconds(*values["TIMEOUT"]) if "TIMEOUT" in values else None
    return ServiceConfig(
        name=name,
        nodes=tuple(
            NodeConfig(upload_url=up, download_url=down, terminate_url=kill)
            for up, down, kill in zip(uploads, downloads, terminates, strict=True)
        ),
        runs_per_user=count("RUNS_PER_USER", DEFAULT_RUNS_PER_USER),
        max_runs=count("MAX_RUNS", DEFAULT_MAX_RUNS),
        timeout_s=timeout or None,
        client_token=_service_token(prefix, values, default_token),
        container_image=_container_image(values),
    )


def _container_image(values: Mapping[str, tuple[str, str]]) -> str | None:
    if "CONTAINER_IMAGE" not in values:
        return None
    variable, image = values["CONTAINER_IMAGE"]
    image = image.strip()
    if not image or len(image) > 255 or any(c.isspace() for c in image):
        raise ConfigError(variable, f"not an image name: {image!r}")
    return image


def _service_token(
    prefix: str, values: Mapping[str, tuple[str, str]], default_token: str | None
) -> str | None:
    """The service's own token or token file; an empty `_CLIENT_TOKEN` means none at all."""
    if "CLIENT_TOKEN" not in values and "CLIENT_TOKEN_FILE" not in values:
        return default_token
    variable, value = values.get("CLIENT_TOKEN", (f"{prefix}_CLIENT_TOKEN", ""))
    file_variable, path = values.get("CLIENT_TOKEN_FILE", (f"{prefix}_CLIENT_TOKEN_FILE", ""))
    return secret_value(variable, value, file_variable, path)


def _sibling_url(url: str, last_segment: str) -> str:
    slash = url.rfind("/")
    return f"{url[: slash + 1]}{last_segment}" if slash != -1 else f"{url}/{last_segment}"
