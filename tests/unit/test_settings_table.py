"""The settings table is the only way in: the loaders look up declared names alone, and the
defaults they apply are the ones the settings dataclasses declare."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from job_orchestrator import settings_table as table
from job_orchestrator.config import (
    ClientSettings,
    ServerSettings,
    SlurmSettings,
    load_client_settings,
    load_server_settings,
)
from job_orchestrator.settings_table import SETTINGS

_GROUPS = {
    "common",
    "server",
    "services",
    "queue",
    "callbacks",
    "replicas",
    "client",
    "disk",
    "sandbox",
    "slurm",
    "containers",
}


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers every name the loaders looked up."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values
        self.looked_up: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.looked_up.add(key)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _declared(name: str) -> bool:
    patterns = [
        re.escape(setting.name).replace("<NAME>", "[A-Z0-9_]+")
        for setting in SETTINGS
        if setting.is_pattern
    ]
    plain = {setting.name for setting in SETTINGS if not setting.is_pattern}
    return name in plain or any(re.fullmatch(pattern, name) for pattern in patterns)


def test_names_are_unique_and_grouped() -> None:
    names = [setting.name for setting in SETTINGS]
    assert len(names) == len(set(names))
    assert {setting.group for setting in SETTINGS} == _GROUPS
    assert all(setting.help for setting in SETTINGS)


def test_the_server_looks_up_declared_names_only(tmp_path: Path) -> None:
    env = RecordingEnv(
        {
            "DB_PATH": str(tmp_path / "db.sqlite"),
            "SERVICE_MY_APP_CLIENTS": "http://127.0.0.1:9000",
            "SERVICE_MY_APP_TIMEOUT": "60",
            "SERVICE_MY_APP_CLIENT_TOKEN": "t" * 16,
        }
    )
    load_server_settings(env)
    assert {"PORT", "DB_PATH", "CALLBACK_ALLOW", "SERVICE_MY_APP_TIMEOUT"} <= env.looked_up
    assert sorted(name for name in env.looked_up if not _declared(name)) == []


def test_the_client_looks_up_declared_names_only() -> None:
    env = RecordingEnv({"SANDBOX": "none", "JOB_MAX_FILE_MB": "10"})
    load_client_settings(env)
    assert {"PORT", "SANDBOX", "JOB_MAX_FILE_MB", "EXECUTOR"} <= env.looked_up
    assert sorted(name for name in env.looked_up if not _declared(name)) == []


def test_a_name_outside_the_table_is_not_declared() -> None:
    assert _declared("SERVICE_A_B_UPLOAD_URL")
    assert not _declared("SERVICE__UPLOAD")
    assert not _declared("DISPATCH_ATTEMPTS")


def _differing_from_the_field_defaults(settings: ServerSettings | ClientSettings) -> list[str]:
    return [
        f"{field.name}={getattr(settings, field.name)!r}, declared {field.default!r}"
        for field in dataclasses.fields(settings)
        if field.default is not dataclasses.MISSING
        and getattr(settings, field.name) != field.default
    ]


def test_an_empty_environment_gives_the_server_dataclass_defaults() -> None:
    assert _differing_from_the_field_defaults(load_server_settings({})) == []


def test_an_empty_environment_gives_the_client_dataclass_defaults() -> None:
    settings = load_client_settings({})
    assert _differing_from_the_field_defaults(settings) == []
    assert settings.slurm == SlurmSettings()


def test_raw_keeps_an_empty_value_and_defaults_an_unset_one() -> None:
    assert table.raw({}, table.HOST) == "0.0.0.0"
    assert table.raw({"HOST": ""}, table.HOST) == ""
    assert table.given_or_default({"LONG_POLL": ""}, table.LONG_POLL) == "25"
    assert table.raw({}, table.JOB_USER) is None
    with pytest.raises(ValueError, match="JOB_USER"):
        table.text({}, table.JOB_USER)
