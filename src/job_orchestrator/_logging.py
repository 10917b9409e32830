"""Log formatting: LOG_FORMAT=json, and secrets kept out of every line.

JSON: one object per log line, for log collectors. Each object has `time` (UTC, ISO 8601),
`level`, `logger` and `message`, plus the fields a call passed in `extra=` (`job_id`,
`service`, `client`, `payload_id`, ...) and `exception` when one is logged. Values JSON cannot
carry are written as their `str()`.

Secrets (the database password, tokens) are masked in the finished line, whatever put them
there: our own messages, a library's, an exception's text or its traceback.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from job_orchestrator.config import ClientSettings, ServerSettings

#: What a secret is replaced with in a log line.
MASK = "***"
#: Shorter strings are not masked: they would mask ordinary words and digits.
MIN_SECRET_CHARS = 4

#: The attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class RedactingFormatter(logging.Formatter):
    """Formats with `inner`, then masks every secret in the finished text."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self._inner = inner
        self._secrets = _spellings(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return _mask(self._inner.format(record), self._secrets)


def masked(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced by MASK (for what is printed without logging)."""
    return _mask(text, _spellings(secrets))


def _spellings(secrets: Iterable[str]) -> list[str]:
    found = {secret for secret in secrets if len(secret) >= MIN_SECRET_CHARS}
    # A JSON line carries a secret escaped ("a\\b"), repr() of an error quotes it: mask
    # those spellings too.
    found |= {json.dumps(secret, ensure_ascii=False)[1:-1] for secret in found}
    found |= {repr(secret)[1:-1] for secret in found}
    # Longest first, so a secret containing another is masked whole.
    return sorted(found, key=len, reverse=True)


def _mask(text: str, spellings: list[str]) -> str:
    for secret in spellings:
        text = text.replace(secret, MASK)
    return text


def url_secrets(url: str) -> set[str]:
    """The password of a database URL (`postgresql+asyncpg://user:pw@host/db`) in each form it
    may be printed in: as written (percent-encoded) and decoded. Empty for a file path."""
    if "://" not in url:
        return set()
    with contextlib.suppress(ValueError, sa.exc.ArgumentError):
        written = urllib.parse.urlsplit(url).password
        decoded = sa.make_url(url).password
        return {str(secret) for secret in (written, decoded) if secret}
    return set()


def display_url(url: str) -> str:
    """A database URL as it may be shown: its password masked (a file path unchanged)."""
    if not url_secrets(url):
        return url
    return sa.make_url(url).render_as_string(hide_password=True)


#: Settings whose values are secrets, masked in the log as soon as logging starts (before the
#: settings are read and checked: a start-up error may quote them).
_SECRET_VARIABLES = ("CLIENT_TOKEN", "CALLBACK_SECRET", "METRICS_TOKEN")


def environment_secrets(env: Mapping[str, str]) -> set[str]:
    """The secrets found in the environment: tokens, and the database URL's password."""
    found = url_secrets(env.get("DB_PATH", ""))
    for name, value in env.items():
        if name in _SECRET_VARIABLES or (name.startswith("SERVICE_") and name.endswith("_TOKEN")):
            found.add(value)
    return {secret for secret in found if secret}


def settings_secrets(settings: ServerSettings | ClientSettings) -> set[str]:
    """The secrets of loaded settings (also those read from `*_FILE` files)."""
    if isinstance(settings, ClientSettings):
        found = {settings.client_token or ""}
    else:
        found = url_secrets(settings.db_path)
        found |= {settings.metrics_token or "", settings.callback_secret or ""}
        found |= {service.client_token or "" for service in settings.services.values()}
    return {secret for secret in found if secret}
