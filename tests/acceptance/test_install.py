"""Installing for users (issue 25, item 3): the bare package is the CLI and the SDK, without
the server stack. It is installed from this checkout into a fresh virtualenv, with its
dependencies from the package index (the one network use of the suite besides loopback:
skipped, with the reason, where the index cannot be reached; failed when CI=true)."""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from testkit import unavailable

ROOT = Path(__file__).resolve().parents[2]
#: What the server extra brings and the bare package must not.
SERVER_ONLY = ("fastapi", "uvicorn", "sqlalchemy", "asyncpg", "aiohttp", "alembic", "psutil")


@pytest.mark.timeout(600)
def test_the_cli_and_sdk_install_without_the_server(tmp_path: Path) -> None:
    source = tmp_path / "source"  # what the Dockerfile copies: no build leftovers, no .venv
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    environ = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(source)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    if installed.returncode != 0 and "Could not find a version" in installed.stderr:
        unavailable(f"the package index cannot be reached: {installed.stderr[-300:]}")
    assert installed.returncode == 0, installed.stderr

    command = env_dir / "bin" / "job-orchestrator"
    helped = subprocess.run([str(command), "--help"], capture_output=True, text=True, check=False)
    assert helped.returncode == 0, helped.stderr
    assert "submit" in helped.stdout
    assert subprocess.run([str(command), "list", "--help"], check=False).returncode == 0
    probe = (
        "import importlib.util, sys\n"
        "from job_orchestrator.sdk import AsyncClient, Client, JobFailed, Status\n"
        "assert str(Status.FAILED) == 'Failed'\n"
        f"present = [m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m)]\n"
        "sys.exit(f'server packages installed: {present}' if present else 0)\n"
    )
    sdk = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    assert sdk.returncode == 0, sdk.stdout + sdk.stderr
    # The settings list needs nothing of the server; running one says what to install.
    listed = subprocess.run(
        [str(command), "server", "--help-settings"], capture_output=True, text=True, check=False
    )
    assert listed.returncode == 0, listed.stderr
    server = subprocess.run(
        [str(command), "server"], capture_output=True, text=True, check=False, timeout=60
    )
    assert server.returncode == 2
    assert "pip install 'job-orchestrator[server]'" in server.stderr
    assert "Traceback" not in server.stderr
