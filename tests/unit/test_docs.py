"""Every setting the program reads is documented in the README (a datasette habit)."""

from __future__ import annotations

import re
from pathlib import Path

from job_orchestrator import config

ROOT = Path(__file__).resolve().parents[2]
_READ = re.compile(
    r'(?:env\.get|_seconds|_optional|_limit|parse_bool|parse_unsigned)\(\s*(?:env,\s*)?"([A-Z_]+)"'
    r'|"([A-Z_]+)" in env'
)


def settings_read_by_the_program() -> set[str]:
    source = Path(config.__file__).read_text()
    names = {first or second for first, second in _READ.findall(source)}
    return names | {f"SERVICE_<NAME>_{suffix}" for suffix in config._SERVICE_SUFFIXES}


def test_the_scan_finds_the_settings() -> None:
    found = settings_read_by_the_program()
    assert {"PORT", "DB_PATH", "MAX_AGE", "SANDBOX", "SERVICE_<NAME>_UPLOAD_URL"} <= found


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = sorted(name for name in settings_read_by_the_program() if f"`{name}`" not in readme)
    assert missing == []
