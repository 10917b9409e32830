"""The settings reference (docs/settings.md) is generated from the settings table, and the
committed page is what the table renders now (a datasette habit); the config package reads
no variable but through the table.

scripts/settings_reference.py renders the page (run it after changing the table); the site's
build renders it again (scripts/mkdocs_hooks.py), so the site is never stale either.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from job_orchestrator import config
from job_orchestrator.settings_table import SETTINGS, Setting

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "settings.md"
_SECTIONS = {
    "## Common to server and client": "both",
    "## Server only": "server",
    "## Client only": "client",
}
_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_<>]*)` \| ([^|]*) \|")
#: A row for a setting under the other program's heading, to say that program ignores it.
_IGNORED = "ignored"


def generator() -> ModuleType:
    path = ROOT / "scripts" / "settings_reference.py"
    spec = importlib.util.spec_from_file_location("settings_reference", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def configuration_rows(page: str) -> list[tuple[str, str, str]]:
    """(section, name, default cell) of every `NAME` row of the reference."""
    rows: list[tuple[str, str, str]] = []
    section = ""
    for line in page.splitlines():
        section = _SECTIONS.get(line.strip(), section)
        if match := _ROW.match(line):
            assert section, f"row {match[1]} before any section heading"
            rows.append((section, match[1], match[2].strip()))
    return rows


def test_the_committed_reference_is_the_rendered_table() -> None:
    """Fails after a change of the table until scripts/settings_reference.py is run."""
    assert PAGE.read_text() == generator().render(), (
        "docs/settings.md is stale: run .venv/bin/python scripts/settings_reference.py"
    )


def test_every_setting_is_in_the_reference_with_its_default() -> None:
    rows = configuration_rows(PAGE.read_text())
    assert {section for section, _, _ in rows} == {"both", "server", "client"}
    assert len(rows) > 40
    cells = {(section, name): cell for section, name, cell in rows}
    wrong = [
        f"{setting.name}: the page says {cells.get((setting.applies_to, setting.name))!r}, "
        f"the table {setting.default_text!r}"
        for setting in SETTINGS
        if cells.get((setting.applies_to, setting.name)) != setting.default_text
    ]
    assert wrong == []
    declared = {setting.name: setting for setting in SETTINGS}
    assert [name for _, name, _ in rows if name not in declared] == []
    misplaced = [
        (section, name)
        for section, name, cell in rows
        if section != declared[name].applies_to and cell != _IGNORED
    ]
    assert misplaced == []


def test_notes_are_about_declared_settings() -> None:
    declared = {setting.name for setting in SETTINGS}
    assert set(generator().NOTES) - declared == set()


def test_a_change_of_the_table_shows_in_the_page() -> None:
    """The check above can fail: a default changed in the table changes the rendered row."""
    module = generator()
    setting = next(setting for setting in SETTINGS if setting.name == "RETRY_DEADLINE")
    changed = Setting(setting.name, "2160", setting.help, setting.applies_to, setting.group)
    assert module._row(changed) != module._row(setting)
    assert "| `2160` |" in module._row(changed)


_LITERAL_READ = re.compile(r'env(?:\.get\(|\[)\s*"|"[A-Z_]+"\s+in\s+env')


def test_config_reads_nothing_by_a_literal_name() -> None:
    """A literal name would bypass the table; reads go through `table.raw` and friends."""
    modules = sorted(Path(config.__file__).parent.glob("*.py"))
    assert len(modules) > 1, "the loaders live in the config package's modules"
    for module in modules:
        assert _LITERAL_READ.findall(module.read_text()) == [], module.name
    assert _LITERAL_READ.search('env.get("PORT")')
    assert _LITERAL_READ.search('"PORT" in env')
