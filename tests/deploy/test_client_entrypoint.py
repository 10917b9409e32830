"""deploy/client-entrypoint, the client container's entry point, on this machine's kernel
without Docker: in a network namespace of its own (what a container has), it installs the
nftables rule that keeps the JOB_USERS uids off the network, then runs the real client
without CAP_NET_ADMIN. The compose stack test checks the same inside the containers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit import require, unavailable
from testkit.harness import free_port
from tests.deploy.tools import DEPLOY, run, said

ENTRYPOINT = DEPLOY / "client-entrypoint"
FIRST_UID, LAST_UID = 90000, 90015
CAP_SETPCAP, CAP_NET_ADMIN = 8, 12


@dataclass
class Contained:
    """The client the entry point started, in its own network namespace."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def connects(self, uid: int) -> bool:
        """Whether a process of `uid` in the client's namespace reaches its port."""
        nsenter = require("nsenter", "Debian: util-linux")
        as_uid = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        probe = f"exec 3<>/dev/tcp/127.0.0.1/{self.port}"
        result = run(
            [nsenter, f"--net=/proc/{self.process.pid}/ns/net", *as_uid, "/bin/bash", "-c", probe]
        )
        return result.returncode == 0

    def capabilities(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1], 16)
        raise AssertionError(f"no {field} in /proc/{self.process.pid}/status")


def needs_root_and_nftables() -> None:
    if os.geteuid() != 0:
        unavailable("needs root (a network namespace, nftables, job uids)")
    for program in ("nft", "unshare", "setpriv"):
        require(program, "Debian: nftables, util-linux")


@pytest.fixture
def contained(tmp_path: Path) -> Iterator[Contained]:
    needs_root_and_nftables()
    port = free_port()
    log = tmp_path / "client.log"
    env = {
        **os.environ,
        # The entry point runs `job-orchestrator client`: this checkout's.
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "JOB_USERS": f"{FIRST_UID}-{LAST_UID}",
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "DATA_PATH": str(tmp_path / "data"),
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0"', str(ENTRYPOINT)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    running = Contained(process, port, log)
    try:
        deadline = time.monotonic() + 60
        while not running.connects(0):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield running
    finally:
        process.terminate()
        process.wait(20)


def test_job_uids_reach_nothing_and_the_client_keeps_no_net_admin(contained: Contained) -> None:
    assert contained.connects(0)  # the client's own uid (and its health check) still does
    assert not contained.connects(FIRST_UID)
    assert not contained.connects(LAST_UID)
    # The rule is the range's, not everyone's.
    assert contained.connects(LAST_UID + 1)
    # The rule is there, counting what it refused; nobody started from the client can touch it.
    rules = run(
        ["nsenter", f"--net=/proc/{contained.process.pid}/ns/net", "nft", "list", "ruleset"]
    )
    assert f"meta skuid {FIRST_UID}-{LAST_UID}" in rules.stdout, said(rules)
    for field in ("CapBnd", "CapPrm", "CapEff"):
        for capability in (CAP_NET_ADMIN, CAP_SETPCAP):
            assert not contained.capabilities(field) & (1 << capability), (field, capability)
    # And it is the client that runs, with its own pid (exec'd, no process in between).
    assert "job-orchestrator" in " ".join(
        Path(f"/proc/{contained.process.pid}/cmdline").read_text().split("\0")
    )


@pytest.mark.parametrize("job_users", [None, "", "90000", "a-b", "90000-", "1-2-3", "9 0-1"])
def test_a_bad_job_users_stops_the_entrypoint(job_users: str | None) -> None:
    needs_root_and_nftables()
    env = {name: value for name, value in os.environ.items() if name != "JOB_USERS"}
    if job_users is not None:
        env["JOB_USERS"] = job_users
    # In a namespace of its own all the same: were the value taken, the rule lands there.
    result = subprocess.run(
        ["unshare", "--net", str(ENTRYPOINT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, f"{result.stdout}{result.stderr}"
    assert "JOB_USERS" in result.stderr


def test_the_entrypoint_refuses_to_start_a_client_it_cannot_take_net_admin_from(
    tmp_path: Path,
) -> None:
    """Without CAP_SETPCAP, setpriv leaves the bounding set as it is, and says nothing."""
    needs_root_and_nftables()
    env = {**os.environ, "JOB_USERS": f"{FIRST_UID}-{LAST_UID}", "DATA_PATH": str(tmp_path)}
    without_setpcap = ["setpriv", "--bounding-set=-setpcap", "--"]
    result = subprocess.run(
        ["unshare", "--net", *without_setpcap, str(ENTRYPOINT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, f"{result.stdout}{result.stderr}"
    assert "CAP_SETPCAP" in result.stderr
