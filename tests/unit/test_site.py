"""The documentation site builds with `mkdocs build --strict` (a broken link, a missing anchor
or a page outside the nav fails it), and the README stays a short entry point to it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 150
SETUP = ("./scripts/run-local", "./scripts/test")


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1", "HOME": str(site.parent)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow  # runs mkdocs build
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    built = build(ROOT, tmp_path / "site")
    assert built.returncode == 0, built.stdout + built.stderr
    settings = (tmp_path / "site" / "settings" / "index.html").read_text()
    assert "SERVICE_&lt;NAME&gt;_CLIENTS" in settings  # rendered from the table at build
    benchmarks = (tmp_path / "site" / "benchmarks" / "index.html").read_text()
    assert "Targets are reported" in benchmarks  # bench/RESULTS.md, included


@pytest.mark.slow  # runs mkdocs build
def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """The check above can fail: the same site with one dead anchor does not build."""
    copy = tmp_path / "copy"
    for part in ("docs", "scripts", "bench"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "getting-started.md"
    page.write_text(page.read_text() + "\nSee [nowhere](server.md#no-such-section).\n")
    broken = build(copy, tmp_path / "site")
    assert broken.returncode != 0
    assert "no-such-section" in broken.stdout + broken.stderr


def test_the_readme_opens_with_the_set_up_commands_and_stays_short() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES
    block = lines[lines.index("```bash") + 1 : lines.index("```")]
    assert [line.split()[0] for line in block] == list(SETUP)
    assert lines.index("```bash") < 5  # first, under the title
    for command in SETUP:
        assert (ROOT / command).stat().st_mode & 0o111
