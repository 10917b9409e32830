"""The external programs the deployment tests drive, and where the artefacts are.

A missing program skips its test with the reason, except in CI (`CI=true`), where `.ci/run`
installs them all: there it is a failure (`testkit.require`, `testkit.unavailable`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from testkit import unavailable

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
LOCAL_BASE_OVERRIDE = DEPLOY / "compose.local-base.yml"
#: The override whose clients hold no engine socket (jobs are processes of the client).
RLIMITS_OVERRIDE = DEPLOY / "compose.rlimits.yml"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
DOCKERFILES = (DEPLOY / "Dockerfile", DEPLOY / "postgres.Dockerfile")
#: The secrets the compose file refuses to start without, as a test would set them (the token
#: file's path, relative to deploy/, is only resolved by `config`; see `write_token_file`).
COMPOSE_SECRETS = {"JO_CLIENT_TOKEN_FILE": "client-token", "POSTGRES_PASSWORD": "pw"}
#: The token the compose stack's server and clients share.
COMPOSE_TOKEN = "compose-test-token-0123456789"
#: The image's unprivileged uid (the server's), which must be able to read the token file.
IMAGE_UID = 1000


def write_token_file(directory: Path) -> Path:
    """The token as the compose file wants it: a file of the server's uid, mode 0400 (root's
    clients read it with CAP_DAC_OVERRIDE; the jobs' uids cannot)."""
    if os.geteuid() != 0:
        unavailable("needs root: the token file must belong to the image's uid 1000")
    path = directory / "client-token"
    path.write_text(COMPOSE_TOKEN + "\n")
    os.chown(path, IMAGE_UID, IMAGE_UID)
    path.chmod(0o400)
    return path


def compose_command() -> list[str]:
    """`docker compose` (v2) where the plugin exists, else `docker-compose` (v1)."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is None:
        unavailable(
            "neither `docker compose` nor `docker-compose` is installed (Debian: docker-compose)"
        )
    return [legacy]


def run(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    """Run `command` to its end and return what it said; never raises on its exit status."""
    return subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout_s,
        check=False,
    )


def said(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
