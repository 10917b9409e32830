"""`job-orchestrator server|client --help-settings`: the settings table, from the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from job_orchestrator.settings_table import SETTINGS


def help_settings(program: str) -> subprocess.CompletedProcess[str]:
    # A bad value must not matter: the list is printed before the environment is read.
    env = {**os.environ, "PORT": "not-a-port", "SANDBOX": "nonsense"}
    return subprocess.run(
        [sys.executable, "-m", "job_orchestrator", program, "--help-settings"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("program", ["server", "client"])
def test_each_program_lists_the_settings_it_reads(program: str) -> None:
    done = help_settings(program)
    assert (done.returncode, done.stderr) == (0, "")
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")}
    assert listed == {s.name for s in SETTINGS if s.applies_to in (program, "both")}
    assert "`" not in done.stdout


def test_a_line_shows_the_default_and_the_help() -> None:
    lines = help_settings("server").stdout.splitlines()
    assert any(line.split()[:2] == ["RETRY_DEADLINE", "21600"] for line in lines)
    assert any(
        line.split()[:3] == ["SERVICE_<NAME>_TIMEOUT", "unlimited", "wall-time"] for line in lines
    )
