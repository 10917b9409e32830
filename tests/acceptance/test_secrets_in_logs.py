"""No secret reaches a log line or an error message: the database password in DB_PATH and the
tokens are masked wherever they would appear (issue 21, finding 9: `migrate` and start-up
errors printed the PostgreSQL password).

Real `job-orchestrator migrate`, `server` and `client` processes; PostgreSQL trusts every
connection from 127.0.0.1, so a URL with any password works against it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.harness import free_port
from testkit.pg import fresh_database

PASSWORD = "s3cret-Pa55word"
TOKEN = "client-token-never-logged-7f3a"


def run(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "job_orchestrator", command],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def with_password(url: str) -> str:
    # fresh_database's URL has a user and no password: postgresql+asyncpg://postgres@host/db
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


@pytest.mark.postgres
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_migrate_never_prints_the_database_password(tmp_path: Path, log_format: str) -> None:
    with fresh_database() as url:
        done = run("migrate", {"DB_PATH": with_password(url), "LOG_FORMAT": log_format}, tmp_path)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "schema revision" in output
    assert PASSWORD not in output
    assert "postgres:***@" in output


@pytest.mark.parametrize("command", ["migrate", "server"])
def test_a_database_that_cannot_be_opened_is_reported_without_its_password(
    tmp_path: Path, command: str
) -> None:
    # Nothing listens on port 1: the connection is refused at once.
    env = {
        "DB_PATH": f"postgresql+asyncpg://postgres:{PASSWORD}@127.0.0.1:1/none",
        "PORT": str(free_port()),
        "HOST": "127.0.0.1",
        "DATA_PATH": str(tmp_path / "data"),
        "SERVICE_EXAMPLE_UPLOAD_URL": "http://127.0.0.1:1/submit",
        "SERVICE_EXAMPLE_DOWNLOAD_URL": "http://127.0.0.1:1/retrieve",
    }
    done = run(command, env, tmp_path)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "127.0.0.1" in output, output  # the error is there, and says which database
    assert PASSWORD not in output
    assert PASSWORD.replace("-", "%2D") not in output


def test_a_token_quoted_by_a_log_line_is_masked(tmp_path: Path) -> None:
    """A client whose log would show its token (an invalid setting is quoted back in its log
    line) masks it: with LOG_LEVEL=DEBUG and the token as the value of a bad setting."""
    env = {
        "CLIENT_TOKEN": TOKEN,
        "PORT": str(free_port()),
        "HOST": "127.0.0.1",
        "DATA_PATH": str(tmp_path / "data"),
        # Not a number: the client refuses to start and names the value it got.
        "MAX_CONCURRENT": TOKEN,
    }
    done = run("client", env, tmp_path)
    assert done.returncode == 2
    output = done.stdout + done.stderr
    assert "MAX_CONCURRENT" in output
    assert TOKEN not in output
