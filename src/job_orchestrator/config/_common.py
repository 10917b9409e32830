"""What the server's and the client's loaders share: the common settings and the parsing.

Every value is validated at start-up; a bad one raises ConfigError naming the variable.
The `read_*` helpers read one setting given as its `Setting` of the table: a loader never
spells a variable's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from job_orchestrator import settings_table as table
from job_orchestrator import wire
from job_orchestrator.errors import ConfigError
from job_orchestrator.settings_table import Setting

DEFAULT_MAX_AGE_S = int(table.MAX_AGE.literal)
DEFAULT_UPLOAD_IDLE_TIMEOUT_S = float(table.UPLOAD_IDLE_TIMEOUT.literal)
#: A secret file larger than this is a mistake (a log, a device), not a secret.
SECRET_FILE_MAX_BYTES = 64 * 1024


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
class CommonSettings:
    port: int
    host: str
    data_path: Path
    max_age_s: int
    log_level: str


def read_common(env: Mapping[str, str], default_port: int) -> CommonSettings:
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


def read_log_format(env: Mapping[str, str]) -> str:
    log_format = table.text(env, table.LOG_FORMAT).strip().lower() or table.LOG_FORMAT.literal
    if log_format not in {"text", "json"}:
        raise ConfigError("LOG_FORMAT", f"expected text or json, got {log_format!r}")
    return log_format


def read_optional(env: Mapping[str, str], setting: Setting) -> str | None:
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


def read_secret(env: Mapping[str, str], setting: Setting, file_setting: Setting) -> str | None:
    """A secret setting given directly or as `<NAME>_FILE` (see `secret_value`)."""
    return secret_value(
        setting.name, table.raw(env, setting), file_setting.name, table.raw(env, file_setting)
    )


def read_seconds(env: Mapping[str, str], setting: Setting) -> float:
    return parse_seconds(setting.name, table.given_or_default(env, setting))
