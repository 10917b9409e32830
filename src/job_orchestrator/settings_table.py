"""Every environment setting of the server and the client, declared once (datasette's SETTINGS).

The loaders in config.py read a setting only through its `Setting` (see `raw`), so nothing
is read that is not declared here; tests/unit/test_docs.py checks that this table and the
generated settings reference (docs/settings.md) agree, name by name and default by default.

What a `Setting` is, and `raw` (the one way to read one), live in `_setting`.
"""

from __future__ import annotations

from job_orchestrator._setting import (
    SERVICE_PATTERN_PREFIX,
    AppliesTo,
    Setting,
    describe,
    given_or_default,
    raw,
    text,
)

__all__ = [
    "SERVICE_PATTERN_PREFIX",
    "SERVICE_SETTINGS",
    "SETTINGS",
    "Setting",
    "describe",
    "given_or_default",
    "raw",
    "text",
]

_DECLARED: list[Setting] = []


def _declare(
    name: str,
    default: str | None,
    help: str,
    applies_to: AppliesTo,
    group: str,
    shown: str | None = None,
) -> Setting:
    setting = Setting(name, default, help, applies_to, group, shown)
    _DECLARED.append(setting)
    return setting


def _declare_file(secret: Setting) -> Setting:
    """`<secret>_FILE`: the secret read from a file at start, so it is in no environment."""
    return _declare(
        f"{secret.name}_FILE",
        None,
        f"file holding {secret.name} (trailing newlines dropped); not with {secret.name}",
        secret.applies_to,
        secret.group,
    )


# --- common to server and client -------------------------------------------------------------
PORT = _declare(
    "PORT", None, "TCP port to listen on", "both", "common", shown="server `5000`, client `9000`"
)
HOST = _declare("HOST", "0.0.0.0", "address to bind", "both", "common")
DATA_PATH = _declare(
    "DATA_PATH",
    None,
    "where job (server) or payload (client) directories live",
    "both",
    "common",
    shown="`<cwd>/data`",
)
MAX_AGE = _declare(
    "MAX_AGE",
    "864000",
    "seconds a finished job's files are kept; 0 cleans at the next pass",
    "both",
    "common",
)
CLEANER_INTERVAL = _declare(
    "CLEANER_INTERVAL", "60", "seconds between retention passes", "both", "common"
)
UPLOAD_IDLE_TIMEOUT = _declare(
    "UPLOAD_IDLE_TIMEOUT",
    "60",
    "seconds an upload body may send nothing before it is answered 408; 0 waits forever",
    "both",
    "common",
)
CLIENT_TOKEN = _declare(
    "CLIENT_TOKEN", None, "shared secret between server and clients", "both", "common"
)
CLIENT_TOKEN_FILE = _declare_file(CLIENT_TOKEN)
LOG_LEVEL = _declare(
    "LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING, ERROR or CRITICAL", "both", "common"
)
LOG_FORMAT = _declare(
    "LOG_FORMAT",
    "text",
    "text (human-readable lines) or json (one object per line)",
    "both",
    "common",
)

# --- server ----------------------------------------------------------------------------------
DB_PATH = _declare(
    "DB_PATH",
    None,
    "the SQLite database file, or a PostgreSQL URL postgresql+asyncpg://...",
    "server",
    "server",
    shown="`<cwd>/db.sqlite`",
)
DB_PATH_FILE = _declare_file(DB_PATH)
API_TOKENS_FILE = _declare(
    "API_TOKENS_FILE",
    None,
    "file of `token user_id` lines; when set, users must authenticate",
    "server",
    "server",
)
ADMIN_USERS = _declare(
    "ADMIN_USERS",
    None,
    "comma-separated user ids whose tokens open GET /status",
    "server",
    "server",
)
# Portal-signed JWTs (docs/portals.md).
JWT_PUBLIC_KEYS = _declare(
    "JWT_PUBLIC_KEYS",
    None,
    "file of PEM public keys or a JWKS document; when set, JWTs they verify authenticate",
    "server",
    "server",
)
JWT_AUDIENCE = _declare(
    "JWT_AUDIENCE",
    None,
    "the `aud` a JWT must hold (required with JWT_PUBLIC_KEYS)",
    "server",
    "server",
)
JWT_ISSUER = _declare(
    "JWT_ISSUER",
    None,
    "the `iss` a JWT must hold; unset, any",
    "server",
    "server",
)
JWT_USER_CLAIM = _declare(
    "JWT_USER_CLAIM",
    "sub",
    "the JWT claim holding the numeric user id",
    "server",
    "server",
)
JWT_ADMIN_CLAIM = _declare(
    "JWT_ADMIN_CLAIM",
    None,
    "a JWT claim that, when true, opens GET /status; unset, only ADMIN_USERS do",
    "server",
    "server",
)
METRICS_TOKEN = _declare(
    "METRICS_TOKEN",
    None,
    "bearer token GET /metrics requires; unset, /metrics is open",
    "server",
    "server",
)
METRICS_TOKEN_FILE = _declare_file(METRICS_TOKEN)
UPLOAD_MAX_MB = _declare(
    "UPLOAD_MAX_MB",
    "400",
    "largest accepted upload body; beyond it /upload answers 413",
    "server",
    "server",
)
UPLOAD_MAX_CONCURRENT = _declare(
    "UPLOAD_MAX_CONCURRENT",
    "128",
    "uploads in progress at once on this server; 0: no limit",
    "server",
    "server",
)
UPLOAD_MAX_PER_CLIENT = _declare(
    "UPLOAD_MAX_PER_CLIENT",
    "32",
    "uploads in progress at once from one address; 0: no limit",
    "server",
    "server",
)
# Held requests, sized for a server held to 1024 descriptors (systemd's default soft limit),
# as measured in /proc/<pid>/fd: a follow of a running job costs 2 (the caller's connection,
# the relay's to the client), a wait 1, an upload in progress 3 (connection, staging lock,
# the file being written). At these defaults: 64 x 2 + 128 x 1 + 128 uploads x 3 = 640, plus
# about 20 at rest and one per job on a client (MAX_RUNS, 10 a service): over 300 stay free
# for plain requests while every cap is full. One user: 8 x 2 + 16 = 32. (docs/api.md, "Held
# requests and file descriptors".)
LOG_FOLLOW_MAX_PER_USER = _declare(
    "LOG_FOLLOW_MAX_PER_USER",
    "8",
    "`/jobs/{id}/logs?follow=1` held at once for one user; more: 429; `0`: no limit",
    "server",
    "server",
)
LOG_FOLLOW_MAX_TOTAL = _declare(
    "LOG_FOLLOW_MAX_TOTAL",
    "64",
    "log follows held at once on this server; more: 429; `0`: no limit",
    "server",
    "server",
)
WAIT_MAX_PER_USER = _declare(
    "WAIT_MAX_PER_USER",
    "16",
    "`/download/{id}?wait=` held at once for one user; more: 429; `0`: no limit",
    "server",
    "server",
)
WAIT_MAX_TOTAL = _declare(
    "WAIT_MAX_TOTAL",
    "128",
    "`?wait=` requests held at once on this server; more: 429; `0`: no limit",
    "server",
    "server",
)
QUEUE_MAX_PER_USER = _declare(
    "QUEUE_MAX_PER_USER",
    "1000",
    "Queued jobs one user may have (all services); more uploads: 429; `0`: no limit",
    "server",
    "server",
)
LOG_KEEP_MAX_MB = _declare(
    "LOG_KEEP_MAX_MB",
    "100",
    "largest copy of a job's log the server keeps; the copy then ends with a note; `0`: no limit",
    "server",
    "server",
)

# --- services (patterns: <NAME> is the service name) -----------------------------------------
SERVICE_UPLOAD_URL = _declare(
    "SERVICE_<NAME>_UPLOAD_URL",
    None,
    "client submit URL(s), comma-separated",
    "server",
    "services",
)
SERVICE_DOWNLOAD_URL = _declare(
    "SERVICE_<NAME>_DOWNLOAD_URL",
    None,
    "client retrieve URL(s), in the same order",
    "server",
    "services",
)
SERVICE_TERMINATE_URL = _declare(
    "SERVICE_<NAME>_TERMINATE_URL",
    None,
    "client kill URL(s)",
    "server",
    "services",
    shown="derived from `DOWNLOAD_URL`",
)
SERVICE_CLIENTS = _declare(
    "SERVICE_<NAME>_CLIENTS",
    None,
    "client base URLs; /submit, /retrieve, /kill are derived",
    "server",
    "services",
)
SERVICE_RUNS_PER_USER = _declare(
    "SERVICE_<NAME>_RUNS_PER_USER",
    "5",
    "active jobs one user may have in this service",
    "server",
    "services",
)
SERVICE_MAX_RUNS = _declare(
    "SERVICE_<NAME>_MAX_RUNS",
    "10",
    "active jobs the whole service may have",
    "server",
    "services",
)
SERVICE_TIMEOUT = _declare(
    "SERVICE_<NAME>_TIMEOUT",
    None,
    "wall-time limit of a job in seconds",
    "server",
    "services",
    shown="unlimited",
)
SERVICE_CLIENT_TOKEN = _declare(
    "SERVICE_<NAME>_CLIENT_TOKEN",
    None,
    "bearer token sent to this service's clients",
    "server",
    "services",
    shown="`CLIENT_TOKEN`",
)
SERVICE_CLIENT_TOKEN_FILE = _declare_file(SERVICE_CLIENT_TOKEN)
SERVICE_CONTAINER_IMAGE = _declare(
    "SERVICE_<NAME>_CONTAINER_IMAGE",
    None,
    "image the service's jobs run in on clients with EXECUTOR=docker or podman (sent at "
    "dispatch; the client must list it in CONTAINER_IMAGES); unset: the client's "
    "CONTAINER_IMAGE",
    "server",
    "services",
)

# --- queue and calls to the clients ----------------------------------------------------------
CLIENT_TIMEOUT = _declare(
    "CLIENT_TIMEOUT",
    "30",
    "seconds for one server-to-client call (plus the long-poll time)",
    "server",
    "queue",
)
PARTIAL_KEEP_TIMEOUT = _declare(
    "PARTIAL_KEEP_TIMEOUT",
    "300",
    "seconds the server spends copying a failed or killed job's files from its client (the "
    "copy /download_partial serves later); a copy not done by then is dropped",
    "server",
    "queue",
)
RETRY_DEADLINE = _declare(
    "RETRY_DEADLINE",
    "21600",
    "how long an unreachable client is retried before its jobs fail",
    "server",
    "queue",
)
LONG_POLL = _declare(
    "LONG_POLL",
    "25",
    "seconds a result request may wait on the client for a change",
    "server",
    "queue",
)
STATUS_SETTLE = _declare(
    "STATUS_SETTLE",
    "0.2",
    "seconds a new status must hold on our client before a long-poll reports it",
    "server",
    "queue",
)
POLL_INTERVAL = _declare(
    "POLL_INTERVAL",
    "1",
    "seconds between polls of clients that do not long-poll",
    "server",
    "queue",
)
NODE_CHECK_INTERVAL = _declare(
    "NODE_CHECK_INTERVAL",
    "5",
    "seconds between background health/load checks of the clients",
    "server",
    "queue",
)
FAILOVER_AFTER = _declare(
    "FAILOVER_AFTER",
    "30",
    "seconds a client may be down before its unstarted jobs move (at least its lease + 5 s)",
    "server",
    "queue",
)

# --- callbacks -------------------------------------------------------------------------------
CALLBACK_SECRET = _declare(
    "CALLBACK_SECRET",
    None,
    "HMAC-SHA256 key (16+ characters) signing callbacks",
    "server",
    "callbacks",
)
CALLBACK_SECRET_FILE = _declare_file(CALLBACK_SECRET)
CALLBACK_ALLOW = _declare(
    "CALLBACK_ALLOW",
    "public",
    "where callbacks may go: CIDR networks and/or the word public",
    "server",
    "callbacks",
)
CALLBACK_DEADLINE = _declare(
    "CALLBACK_DEADLINE",
    "86400",
    "seconds a callback is retried before it is given up",
    "server",
    "callbacks",
)
CALLBACK_TIMEOUT = _declare(
    "CALLBACK_TIMEOUT", "10", "seconds one callback attempt may take", "server", "callbacks"
)

# --- replicas --------------------------------------------------------------------------------
REPLICA_ID = _declare(
    "REPLICA_ID",
    None,
    "this server's unique, stable name among replicas of one database",
    "server",
    "replicas",
    shown="`<hostname>:<port>`",
)
LEASE_S = _declare(
    "LEASE_S",
    "15",
    "seconds a replica may miss its heartbeat before its jobs are taken over",
    "server",
    "replicas",
)

# --- client ----------------------------------------------------------------------------------
MAX_CONCURRENT = _declare(
    "MAX_CONCURRENT",
    None,
    "scripts run at once on this node; more wait as Prepared",
    "client",
    "client",
    shown="unlimited",
)
KILL_GRACE = _declare(
    "KILL_GRACE",
    "10",
    "seconds between SIGTERM and SIGKILL to a killed job's process group",
    "client",
    "client",
)
REQUIRE_EXIT_TRAP = _declare(
    "REQUIRE_EXIT_TRAP",
    "0",
    "1 to reject scripts without the original's exit trap",
    "client",
    "client",
)
# --- issue 25: the validator's switch, for operators whose jobs are contained otherwise ----
VALIDATE_SCRIPTS = _declare(
    "VALIDATE_SCRIPTS",
    "1",
    "0 to run scripts the validator would reject as unsafe (a missing run.sh still fails)",
    "client",
    "client",
)
RESULT_MAX_MB = _declare(
    "RESULT_MAX_MB",
    None,
    "largest archive the client builds (result or partial copy)",
    "client",
    "client",
    shown="unlimited",
)
ADOPT_HOLD = _declare(
    "ADOPT_HOLD",
    "60",
    "seconds an unstarted payload found at start-up waits to be asked for",
    "client",
    "client",
)
SERVER_LEASE = _declare(
    "SERVER_LEASE",
    "15",
    "a payload starts only if the server asked about it this recently",
    "client",
    "client",
)
EXECUTOR = _declare(
    "EXECUTOR",
    "local",
    "local (a process group here), slurm (one batch job per payload), docker or podman (one "
    "container per payload)",
    "client",
    "client",
)

# --- disk ------------------------------------------------------------------------------------
DISK_RESERVE_MB = _declare(
    "DISK_RESERVE_MB",
    "1024",
    "free space kept on DATA_PATH's file system: below it new payloads are refused (507) and "
    "a job still writing is stopped (Failed, disk full); 0 turns this off",
    "client",
    "disk",
)
JOB_MAX_DISK_MB = _declare(
    "JOB_MAX_DISK_MB",
    None,
    "disk space one payload's directory may take (checked every DISK_CHECK_INTERVAL); past "
    "it the job is stopped and Failed",
    "client",
    "disk",
    shown="unlimited",
)
DISK_CHECK_INTERVAL = _declare(
    "DISK_CHECK_INTERVAL",
    "2",
    "seconds between checks of the free space (and of job sizes, with JOB_MAX_DISK_MB)",
    "client",
    "disk",
)

# --- sandbox ---------------------------------------------------------------------------------
SANDBOX = _declare("SANDBOX", "none", "none, rlimits or bwrap", "client", "sandbox")
JOB_MAX_MEMORY_MB = _declare(
    "JOB_MAX_MEMORY_MB",
    None,
    "address-space limit of a job; with containers the memory limit of the container",
    "client",
    "sandbox",
    shown="unlimited",
)
JOB_MAX_PROCESSES = _declare(
    "JOB_MAX_PROCESSES",
    None,
    "process limit (RLIMIT_NPROC, per uid: one job's with JOB_USERS, all jobs' with JOB_USER; "
    "with containers the container's pids limit)",
    "client",
    "sandbox",
    shown="unlimited",
)
JOB_MAX_FILE_MB = _declare(
    "JOB_MAX_FILE_MB",
    None,
    "largest file a job may write",
    "client",
    "sandbox",
    shown="unlimited",
)
JOB_MAX_CPU_SECONDS = _declare(
    "JOB_MAX_CPU_SECONDS",
    None,
    "CPU time of each process of a job",
    "client",
    "sandbox",
    shown="unlimited",
)
JOB_USER = _declare(
    "JOB_USER",
    None,
    "run every job as this one unprivileged user (the client must run as root); weaker than "
    "JOB_USERS: jobs share the uid, so they can reach each other's files and processes",
    "client",
    "sandbox",
)
JOB_USERS = _declare(
    "JOB_USERS",
    None,
    "FIRST-LAST: a range of numeric uids no account uses; every running job gets one of its "
    "own (gid = uid), reclaimed when it ends; jobs wait Prepared while none is free (the "
    "client must run as root; not with JOB_USER or EXECUTOR=slurm)",
    "client",
    "sandbox",
)

# --- Slurm (EXECUTOR=slurm) ------------------------------------------------------------------
SLURM_PARTITION = _declare(
    "SLURM_PARTITION",
    None,
    "--partition of the jobs",
    "client",
    "slurm",
    shown="cluster default",
)
SLURM_ACCOUNT = _declare(
    "SLURM_ACCOUNT", None, "--account of the jobs", "client", "slurm", shown="user default"
)
SLURM_QOS = _declare("SLURM_QOS", None, "--qos of the jobs", "client", "slurm")
SLURM_POLL_INTERVAL = _declare(
    "SLURM_POLL_INTERVAL",
    "0.5",
    "seconds between two squeue calls; at most 10",
    "client",
    "slurm",
)
SLURM_EXTRA_ARGS = _declare(
    "SLURM_EXTRA_ARGS", None, "more sbatch options, shell-quoted", "client", "slurm"
)

# --- containers (EXECUTOR=docker or podman) --------------------------------------------------
CONTAINER_IMAGE = _declare(
    "CONTAINER_IMAGE",
    None,
    "the local image payloads run in (required with EXECUTOR=docker or podman; never pulled)",
    "client",
    "containers",
)
CONTAINER_IMAGES = _declare(
    "CONTAINER_IMAGES",
    None,
    "comma-separated image names or patterns (`*`, `?`) a server may name for a payload at "
    "/submit (field `container_image`); unset: only CONTAINER_IMAGE",
    "client",
    "containers",
)
CONTAINER_NETWORK = _declare(
    "CONTAINER_NETWORK",
    "none",
    "the network of the containers: none (only loopback) or a network the operator made",
    "client",
    "containers",
)
CONTAINER_SHM_MB = _declare(
    "CONTAINER_SHM_MB", "256", "size of a container's /dev/shm in MiB", "client", "containers"
)
CONTAINER_OPTIONS = _declare(
    "CONTAINER_OPTIONS",
    None,
    "more `create` options of the engine, shell-quoted (e.g. `--runtime runc`)",
    "client",
    "containers",
)
CLIENT_ID = _declare(
    "CLIENT_ID",
    None,
    "this client's name in its containers' names and labels (`jo-<CLIENT_ID>-<payload>`); "
    "two clients on one engine need different ones",
    "client",
    "containers",
    shown="made at first start, kept in DATA_PATH",
)
JOB_MAX_CPUS = _declare(
    "JOB_MAX_CPUS",
    None,
    "CPUs of a container (fractional, e.g. 1.5)",
    "client",
    "containers",
    shown="unlimited",
)
JOB_ENV = _declare(
    "JOB_ENV",
    None,
    "comma-separated names of the client's environment variables a container gets (no other)",
    "client",
    "containers",
)

SETTINGS: tuple[Setting, ...] = tuple(_DECLARED)
SERVICE_SETTINGS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.is_pattern)
