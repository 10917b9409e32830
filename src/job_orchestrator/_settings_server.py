"""The settings only the server reads, in the reference's order (part of settings_table).

Its names are names of settings_table too; read them from there.
"""

from __future__ import annotations

from job_orchestrator._setting import Declarations, Setting

_declare = Declarations()

# --- server ----------------------------------------------------------------------------------
DB_PATH = _declare(
    "DB_PATH",
    None,
    "the SQLite database file, or a PostgreSQL URL postgresql+asyncpg://...",
    "server",
    "server",
    shown="`<cwd>/db.sqlite`",
)
DB_PATH_FILE = _declare.file(DB_PATH)
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
METRICS_TOKEN_FILE = _declare.file(METRICS_TOKEN)
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
SERVICE_CLIENT_TOKEN_FILE = _declare.file(SERVICE_CLIENT_TOKEN)
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
CALLBACK_SECRET_FILE = _declare.file(CALLBACK_SECRET)
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

SERVER_TABLE: tuple[Setting, ...] = _declare.settings()
