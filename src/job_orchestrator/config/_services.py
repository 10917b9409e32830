"""SERVICE_<NAME>_<SETTING>: the services of the server and the clients each runs on.

A service without its URLs is ignored with a warning (as in the original); a malformed value
stops the start, naming the variable.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from job_orchestrator import settings_table as table
from job_orchestrator.config._common import parse_seconds, parse_unsigned, secret_value
from job_orchestrator.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_RUNS_PER_USER = int(table.SERVICE_RUNS_PER_USER.literal)
DEFAULT_MAX_RUNS = int(table.SERVICE_MAX_RUNS.literal)

# No suffix ends with "_" + another, so the order of the table cannot change which matches.
_SERVICE_SUFFIXES = tuple(
    setting.name.removeprefix(table.SERVICE_PATTERN_PREFIX) for setting in table.SERVICE_SETTINGS
)


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


def derive_partial_url(download_url: str) -> str:
    """UPSTREAM §3.4: replace the last path segment of DOWNLOAD_URL with `retrieve_partial`."""
    slash = download_url.rfind("/")
    if slash == -1:
        return f"{download_url}/retrieve_partial"
    return f"{download_url[: slash + 1]}retrieve_partial"


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
