"""MkDocs hooks (mkdocs.yml `hooks:`): the settings reference is rendered from the table.

The committed docs/settings.md is for readers of the repository; the site renders the page
again from src/job_orchestrator/settings_table.py, so it cannot show a stale table even when
someone forgot to run scripts/settings_reference.py (tests/unit/test_docs.py catches that).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

_SCRIPT = Path(__file__).with_name("settings_reference.py")


def _render() -> str:
    spec = importlib.util.spec_from_file_location("settings_reference", _SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered: str = module.render()
    return rendered


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri == "settings.md":
        return _render()
    return markdown
