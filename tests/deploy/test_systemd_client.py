"""The client as deploy/systemd/job-orchestrator-client.service runs it, without systemd (PID
1 here is not systemd): a root process held to the unit's capability bounding set and
no-new-privileges, with the unit's UMask=, its Environment= and the example environment file
(SANDBOX=bwrap, JOB_USERS), the token a root-only file as LoadCredential= gives it, and a
state directory of the unit's StateDirectoryMode=. A real server sends it a job, which must
run, under bubblewrap, as a uid of JOB_USERS.

What this does not reproduce: the unit's mount namespace (ProtectSystem=, PrivateTmp=, ...)
and its seccomp filters (RestrictNamespaces=, ...); test_systemd.py checks those statically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testkit import require, unavailable
from testkit.harness import Cluster, Node, free_port
from tests.deploy.test_systemd import (
    CLIENT_UNIT,
    environment,
    job_users,
    one,
    service_settings,
)
from tests.deploy.tools import SYSTEMD

STATE_DIRECTORY = "/var/lib/job-orchestrator-client"
TOKEN = "systemd-unit-token-0123456789abcdef"
PROBE = "id -u > uid.txt\npwd > pwd.txt\n"


@dataclass
class UnitClient(Node):
    """A client process started the way the unit starts it."""

    wrapper: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        return [*self.wrapper, *super().command()]


def environment_file(path: Path) -> dict[str, str]:
    pairs = (
        line.partition("=")
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {name.strip(): value.strip() for name, _, value in pairs}


@pytest.fixture
def as_the_unit(tmp_path: Path) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        unavailable("needs root: the unit runs the client as root")
    setpriv = require("setpriv", "Debian: util-linux")
    require("bwrap", "Debian: apt-get install bubblewrap")
    settings = service_settings(CLIENT_UNIT)
    bounding = ",".join(
        f"+{name.removeprefix('CAP_').lower()}"
        for name in one(settings, "CapabilityBoundingSet").split()
    )
    umask = one(settings, "UMask")
    # Below a world-traversable directory, as /var/lib is (pytest's own is root's, 0700).
    state = Path(tempfile.mkdtemp(prefix="jo-unit-state-", dir="/tmp"))
    state.chmod(int(one(settings, "StateDirectoryMode"), 8))
    credentials = Path(tempfile.mkdtemp(prefix="jo-unit-credentials-", dir="/tmp"))
    token = credentials / "client-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o400)

    # Environment=, then the environment file (which wins in systemd), then what the test
    # must choose: its own port and address, and where the state and credentials are.
    unit_env = {
        **environment(settings),
        **environment_file(SYSTEMD / "client.env.example"),
    }
    unit_env["DATA_PATH"] = unit_env["DATA_PATH"].replace(STATE_DIRECTORY, str(state))
    unit_env["CLIENT_TOKEN_FILE"] = unit_env["CLIENT_TOKEN_FILE"].replace("%d", str(credentials))
    running = Cluster(tmp_path)
    port = free_port()
    client = UnitClient(
        "client",
        port,
        running.base_env({**unit_env, "PORT": str(port), "HOST": "127.0.0.1"}),
        tmp_path / "client.log",
        wrapper=[
            *(setpriv, f"--bounding-set=-all,{bounding}", "--no-new-privs", "--"),
            *("sh", "-c", f'umask {umask} && exec "$@"', "sh"),
        ],
    )
    running.clients.append(client)
    try:
        client.start()
        running.start_server({"CLIENT_TOKEN_FILE": str(token)})
        yield running
    finally:
        running.shutdown()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(credentials, ignore_errors=True)


def test_a_job_runs_under_bubblewrap_as_a_job_uid_within_the_units_settings(
    as_the_unit: Cluster,
) -> None:
    first, last = job_users(environment(service_settings(CLIENT_UNIT)))
    job_id = as_the_unit.api.submit(PROBE)
    final = as_the_unit.api.wait_for(job_id, "Completed", "Failed", timeout_s=60)
    (client,) = as_the_unit.clients
    assert final["status"] == "Completed", f"{final}\n{client.log()}"
    result = as_the_unit.api.download_zip(job_id)
    assert first <= int(result.read("uid.txt")) <= last
