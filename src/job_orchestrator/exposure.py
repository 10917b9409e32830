"""What an operator must hear at start: a port open beyond loopback with no token, jobs with
no sandbox, a server with nothing to run.

A first run (`./scripts/run-local`, a plain `job-orchestrator client`) used to say so only in
a log file nobody had opened yet, while the client ran whatever anyone who reached its port
sent, as root if it ran as root. These warnings go to stderr at start (cli.py) and to the
log; the server's also show on `/status`, for as long as they hold.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from job_orchestrator.config import ClientSettings, ServerSettings

__all__ = ["client_warnings", "is_loopback", "server_warnings"]


def is_loopback(host: str) -> bool:
    """Whether a listening address reaches only this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def server_warnings(settings: ServerSettings) -> list[str]:
    """The server's standing warnings, in the order an operator should act on them."""
    warnings = []
    if not settings.services:
        warnings.append(
            "no service is configured (SERVICE_<NAME>_CLIENTS=http://client:9000, or "
            "SERVICE_<NAME>_UPLOAD_URL and _DOWNLOAD_URL): every upload is refused with "
            "'Invalid service'"
        )
    authenticated = settings.api_tokens_file is not None or settings.jwt_public_keys is not None
    if not is_loopback(settings.host) and not authenticated:
        warnings.append(
            f"listening on {settings.host}:{settings.port}, beyond loopback, without "
            "API_TOKENS_FILE or JWT_PUBLIC_KEYS: anyone who reaches this port can submit, read, "
            "download and cancel every user's jobs; set one of them, or HOST=127.0.0.1 behind "
            "an authenticating proxy"
        )
    untokened = sorted(
        name for name, service in settings.services.items() if not service.client_token
    )
    if untokened and not is_loopback(settings.host):
        warnings.append(
            f"no CLIENT_TOKEN for the clients of {', '.join(untokened)}: a client without a "
            "token runs whatever anyone who reaches it sends; set the same CLIENT_TOKEN here "
            "and on the clients"
        )
    return warnings


def client_warnings(settings: ClientSettings) -> list[str]:
    """The client's standing warnings: its jobs' reach first (sandbox.py), then its own."""
    from job_orchestrator.client.sandbox import shared_uid_warning  # a client's concern only

    shared = shared_uid_warning(settings)
    return [*([shared] if shared else []), *_exposure_warnings(settings)]


def _exposure_warnings(settings: ClientSettings) -> list[str]:
    """The client's warnings about its own port (its sandbox warning is sandbox.py's)."""
    if is_loopback(settings.host) or settings.client_token:
        return []
    return [
        f"listening on {settings.host}:{settings.port}, beyond loopback, without "
        "CLIENT_TOKEN: anyone who reaches this port can run any script on this machine; set "
        "the same CLIENT_TOKEN here and on the server, or HOST=127.0.0.1"
    ]
