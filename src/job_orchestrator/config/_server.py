"""The server's settings (ServerSettings) and their loader."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from job_orchestrator import settings_table as table
from job_orchestrator import wire
from job_orchestrator.config._common import (
    DEFAULT_UPLOAD_IDLE_TIMEOUT_S,
    CommonSettings,
    parse_unsigned,
    read_common,
    read_log_format,
    read_optional,
    read_seconds,
    read_secret,
)
from job_orchestrator.config._services import ServiceConfig, load_services
from job_orchestrator.credentials import parse_api_tokens, parse_public_keys
from job_orchestrator.errors import ConfigError
from job_orchestrator.settings_table import Setting

UPLOAD_LIMIT_BYTES = int(table.UPLOAD_MAX_MB.literal) * 1024 * 1024
DEFAULT_UPLOAD_MAX_CONCURRENT = int(table.UPLOAD_MAX_CONCURRENT.literal)
DEFAULT_UPLOAD_MAX_PER_CLIENT = int(table.UPLOAD_MAX_PER_CLIENT.literal)
DEFAULT_CALLBACK_DEADLINE_S = float(table.CALLBACK_DEADLINE.literal)
DEFAULT_CALLBACK_TIMEOUT_S = float(table.CALLBACK_TIMEOUT.literal)
#: The word of CALLBACK_ALLOW that stands for every public (globally routable) address.
CALLBACK_ALLOW_PUBLIC = "public"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def load_server_settings(env: Mapping[str, str] | None = None) -> ServerSettings:
    env = os.environ if env is None else env
    common = read_common(env, default_port=5000)
    upload_mb = parse_unsigned(
        "UPLOAD_MAX_MB", table.given_or_default(env, table.UPLOAD_MAX_MB), maximum=1 << 20
    )
    allow_public, allow_networks = parse_callback_allow(table.text(env, table.CALLBACK_ALLOW))
    callback_timeout_s = read_seconds(env, table.CALLBACK_TIMEOUT)
    if callback_timeout_s <= 0:
        raise ConfigError("CALLBACK_TIMEOUT", "must be more than 0")
    return ServerSettings(
        port=common.port,
        host=common.host,
        data_path=common.data_path,
        max_age_s=common.max_age_s,
        log_level=common.log_level,
        log_format=read_log_format(env),
        db_path=server_db_path(env),
        services=load_services(
            env, default_token=read_secret(env, table.CLIENT_TOKEN, table.CLIENT_TOKEN_FILE)
        ),
        api_tokens_file=_tokens_file(env),
        admin_users=_user_ids("ADMIN_USERS", read_optional(env, table.ADMIN_USERS)),
        jwt_public_keys=_jwt_keys_file(env),
        jwt_audience=read_optional(env, table.JWT_AUDIENCE),
        jwt_issuer=read_optional(env, table.JWT_ISSUER),
        jwt_user_claim=table.given_or_default(env, table.JWT_USER_CLAIM),
        jwt_admin_claim=read_optional(env, table.JWT_ADMIN_CLAIM),
        metrics_token=read_secret(env, table.METRICS_TOKEN, table.METRICS_TOKEN_FILE),
        upload_limit_bytes=upload_mb * 1024 * 1024,
        upload_idle_timeout_s=read_seconds(env, table.UPLOAD_IDLE_TIMEOUT),
        upload_max_concurrent=_count(env, table.UPLOAD_MAX_CONCURRENT),
        upload_max_per_client=_count(env, table.UPLOAD_MAX_PER_CLIENT),
        log_follow_max_per_user=_count(env, table.LOG_FOLLOW_MAX_PER_USER),
        log_follow_max_total=_count(env, table.LOG_FOLLOW_MAX_TOTAL),
        wait_max_per_user=_count(env, table.WAIT_MAX_PER_USER),
        wait_max_total=_count(env, table.WAIT_MAX_TOTAL),
        log_keep_max_mb=_count(env, table.LOG_KEEP_MAX_MB),
        queue_max_per_user=_count(env, table.QUEUE_MAX_PER_USER),
        client_timeout_s=read_seconds(env, table.CLIENT_TIMEOUT),
        partial_keep_timeout_s=read_seconds(env, table.PARTIAL_KEEP_TIMEOUT),
        retry_deadline_s=read_seconds(env, table.RETRY_DEADLINE),
        poll_interval_s=read_seconds(env, table.POLL_INTERVAL),
        long_poll_s=read_seconds(env, table.LONG_POLL),
        status_settle_s=read_seconds(env, table.STATUS_SETTLE),
        cleaner_interval_s=read_seconds(env, table.CLEANER_INTERVAL),
        node_check_interval_s=read_seconds(env, table.NODE_CHECK_INTERVAL),
        failover_after_s=read_seconds(env, table.FAILOVER_AFTER),
        callback_secret=_callback_secret(env),
        callback_allow_public=allow_public,
        callback_allow_networks=allow_networks,
        callback_deadline_s=read_seconds(env, table.CALLBACK_DEADLINE),
        callback_timeout_s=callback_timeout_s,
        replica_id=read_optional(env, table.REPLICA_ID),
        lease_s=_lease_s(env),
    )


def _callback_secret(env: Mapping[str, str]) -> str | None:
    secret = read_secret(env, table.CALLBACK_SECRET, table.CALLBACK_SECRET_FILE)
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
    db_path = read_secret(env, table.DB_PATH, table.DB_PATH_FILE)
    return str(Path.cwd() / "db.sqlite") if db_path is None else db_path


def _lease_s(env: Mapping[str, str]) -> float:
    lease_s = read_seconds(env, table.LEASE_S)
    if lease_s <= 0:
        raise ConfigError("LEASE_S", "must be more than 0 (every job would change hands)")
    return lease_s


def _count(env: Mapping[str, str], setting: Setting) -> int:
    return parse_unsigned(setting.name, table.given_or_default(env, setting), maximum=1 << 20)


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
    if path is not None and read_optional(env, table.JWT_AUDIENCE) is None:
        # Without it a JWT the portal signed for another service would be taken here too.
        raise ConfigError("JWT_AUDIENCE", "must be set with JWT_PUBLIC_KEYS")
    return path


def _credential_file(
    env: Mapping[str, str], setting: Setting, parse: Callable[[str, str], object]
) -> Path | None:
    """The file's path, after a first parse: a malformed file stops the start, saying where."""
    given = read_optional(env, setting)
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
