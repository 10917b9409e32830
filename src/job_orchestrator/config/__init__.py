"""Typed settings read from the environment.

Names and defaults follow the original (SPEC §1) and are declared in settings_table, the
only way a loader here reads a variable; every value is validated at start-up and a bad one
raises ConfigError naming the variable (the CLI turns it into exit status 2).

The package's modules, none of which imports this one (so none imports another through it):

    _common      the settings of both programs, and the parsing the loaders share
    _services    SERVICE_<NAME>_<SETTING>: a server's services and their clients
    _server      ServerSettings, load_server_settings
    _executors   EXECUTOR, and the Slurm and container settings
    _client      ClientSettings, load_client_settings
"""

from __future__ import annotations

from job_orchestrator.config._client import MAX_JOB_USERS, ClientSettings, load_client_settings
from job_orchestrator.config._common import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_UPLOAD_IDLE_TIMEOUT_S,
    SECRET_FILE_MAX_BYTES,
    CommonSettings,
    parse_bool,
    parse_seconds,
    parse_unsigned,
    secret_value,
)
from job_orchestrator.config._executors import (
    CLIENT_ID_PATTERN,
    CONTAINER_EXECUTORS,
    ContainerSettings,
    SlurmSettings,
)
from job_orchestrator.config._server import (
    CALLBACK_ALLOW_PUBLIC,
    DEFAULT_CALLBACK_DEADLINE_S,
    DEFAULT_CALLBACK_TIMEOUT_S,
    DEFAULT_UPLOAD_MAX_CONCURRENT,
    DEFAULT_UPLOAD_MAX_PER_CLIENT,
    UPLOAD_LIMIT_BYTES,
    IPNetwork,
    ServerSettings,
    load_server_settings,
    parse_callback_allow,
    server_db_path,
)
from job_orchestrator.config._services import (
    DEFAULT_MAX_RUNS,
    DEFAULT_RUNS_PER_USER,
    NodeConfig,
    ServiceConfig,
    derive_partial_url,
    load_services,
)

__all__ = [
    "CALLBACK_ALLOW_PUBLIC",
    "CLIENT_ID_PATTERN",
    "CONTAINER_EXECUTORS",
    "DEFAULT_CALLBACK_DEADLINE_S",
    "DEFAULT_CALLBACK_TIMEOUT_S",
    "DEFAULT_MAX_AGE_S",
    "DEFAULT_MAX_RUNS",
    "DEFAULT_RUNS_PER_USER",
    "DEFAULT_UPLOAD_IDLE_TIMEOUT_S",
    "DEFAULT_UPLOAD_MAX_CONCURRENT",
    "DEFAULT_UPLOAD_MAX_PER_CLIENT",
    "MAX_JOB_USERS",
    "SECRET_FILE_MAX_BYTES",
    "UPLOAD_LIMIT_BYTES",
    "ClientSettings",
    "CommonSettings",
    "ContainerSettings",
    "IPNetwork",
    "NodeConfig",
    "ServerSettings",
    "ServiceConfig",
    "SlurmSettings",
    "derive_partial_url",
    "load_client_settings",
    "load_server_settings",
    "load_services",
    "parse_bool",
    "parse_callback_allow",
    "parse_seconds",
    "parse_unsigned",
    "secret_value",
    "server_db_path",
]
