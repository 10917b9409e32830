"""The README's configuration reference and the settings table agree (a datasette habit).

Every declared setting has a row, with the table's default, under the heading of the program
that reads it; every row names a declared setting; and config.py reads no variable but
through the table.
"""

from __future__ import annotations

import re
from pathlib import Path

from job_orchestrator import config
from job_orchestrator.settings_table import SETTINGS, Setting

ROOT = Path(__file__).resolve().parents[2]
_SECTIONS = {
    "Common to server and client:": "both",
    "Server only:": "server",
    "Client only:": "client",
}
_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_<>]*)` \| ([^|]*) \|")
#: A row for a setting under the other program's heading, to say that program ignores it.
_IGNORED = "ignored"


def configuration_rows() -> list[tuple[str, str, str]]:
    """(section, name, default cell) of every `NAME` row of the README's reference."""
    readme = (ROOT / "README.md").read_text()
    reference = readme.split("### Configuration reference", 1)[1].split("\n## ", 1)[0]
    rows: list[tuple[str, str, str]] = []
    section = ""
    for line in reference.splitlines():
        section = _SECTIONS.get(line.strip(), section)
        if match := _ROW.match(line):
            assert section, f"row {match[1]} before any section heading"
            rows.append((section, match[1], match[2].strip()))
    return rows


def _matches(setting: Setting, cell: str) -> bool:
    """The cell is the table's default, maybe followed by a remark in parentheses."""
    return cell == setting.default_text or cell.startswith(setting.default_text + " (")


def test_the_reference_is_found() -> None:
    rows = configuration_rows()
    assert {section for section, _, _ in rows} == {"both", "server", "client"}
    assert len(rows) > 40


def test_every_setting_is_in_the_readme_with_its_default() -> None:
    cells = {(section, name): cell for section, name, cell in configuration_rows()}
    wrong = [
        f"{setting.name}: README says {cells.get((setting.applies_to, setting.name))!r}, "
        f"the table {setting.default_text!r}"
        for setting in SETTINGS
        if not _matches(setting, cells.get((setting.applies_to, setting.name), ""))
    ]
    assert wrong == []


def test_every_row_of_the_readme_is_declared() -> None:
    declared = {setting.name: setting for setting in SETTINGS}
    stale = [name for _, name, _ in configuration_rows() if name not in declared]
    assert stale == []
    misplaced = [
        (section, name)
        for section, name, cell in configuration_rows()
        if section != declared[name].applies_to and cell != _IGNORED
    ]
    assert misplaced == []


def test_the_matching_is_strict() -> None:
    setting = next(setting for setting in SETTINGS if setting.name == "RETRY_DEADLINE")
    assert _matches(setting, "`21600` (6 h)")
    assert not _matches(setting, "`2160`")
    assert not _matches(setting, "`21600`0")


_LITERAL_READ = re.compile(r'env(?:\.get\(|\[)\s*"|"[A-Z_]+"\s+in\s+env')


def test_config_reads_nothing_by_a_literal_name() -> None:
    """A literal name would bypass the table; reads go through `table.raw` and friends."""
    source = Path(config.__file__).read_text()
    assert _LITERAL_READ.findall(source) == []
    assert _LITERAL_READ.search('env.get("PORT")')
    assert _LITERAL_READ.search('"PORT" in env')
