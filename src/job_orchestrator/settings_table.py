"""Every environment setting of the server and the client, declared once (datasette's SETTINGS).

The loaders in the config package read a setting only through its `Setting` (see `raw`), so
nothing is read that is not declared here; tests/unit/test_docs.py checks that this table and
the generated settings reference (docs/settings.md) agree, name by name and default by default.

The settings common to both programs are declared here, those of the server alone in
_settings_server and of the client alone in _settings_client; all of them are names of this
module. What a `Setting` is, and `raw` (the one way to read one), live in `_setting`.
"""

from __future__ import annotations

from job_orchestrator._setting import (
    SERVICE_PATTERN_PREFIX,
    Declarations,
    Setting,
    describe,
    given_or_default,
    raw,
    text,
)
from job_orchestrator._settings_client import *  # noqa: F403 (every setting is a name here)
from job_orchestrator._settings_client import CLIENT_TABLE
from job_orchestrator._settings_server import *  # noqa: F403
from job_orchestrator._settings_server import SERVER_TABLE

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

_declare = Declarations()

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
CLIENT_TOKEN_FILE = _declare.file(CLIENT_TOKEN)
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

#: Common settings first, then the server's, then the client's: the reference's order.
SETTINGS: tuple[Setting, ...] = (*_declare.settings(), *SERVER_TABLE, *CLIENT_TABLE)
SERVICE_SETTINGS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.is_pattern)
