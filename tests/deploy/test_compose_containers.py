"""The compose stack as shipped (deploy/docker-compose.yml): the clients run every job in a
container of its own on the host's engine, and `docker-compose restart` of a client in the
middle of a job keeps it (issue 23: before, the job ended Failed, "run.sh ended while the
client was down and its exit status was lost").

Images are built on the local Debian base under tags of this test's own (the rlimits test
builds others); the jobs run in the stack's own image, as they do by default.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.test_compose_stack import Stack, brought_up, wait_healthy
from tests.deploy.tools import (
    run,
    said,
)

pytestmark = [
    pytest.mark.needs_docker,
    pytest.mark.timeout(2400),
    pytest.mark.xdist_group("compose-stack"),
]

STACK_TAG = "containers-test"
#: The stack's image, which is also its jobs' (JO_PAYLOAD_IMAGE defaults to it).
STACK_IMAGE = f"job-orchestrator:{STACK_TAG}"
LONG_JOB = """\
echo started >> starts.txt
while [ ! -e go ]; do sleep 0.2; done
echo "survived" > out.txt
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Stack, Path]]:
    env = {
        "JO_PAYLOAD_IMAGE": STACK_IMAGE,
        "JO_DOCKER_CLI": shutil.which("docker") or "/usr/bin/docker",
    }
    with brought_up(tmp_path, STACK_TAG, env=env, before_down=remove_job_containers) as up:
        yield up


def remove_job_containers(data: Path) -> None:
    """The jobs' containers are the engine's, not the project's: `down` leaves them."""
    for name in ("light", "heavy"):
        client_id = data / name / ".client-id"
        if client_id.exists():
            remove_containers(client_id.read_text().strip())


def remove_containers(client_id: str) -> None:
    label = f"label=org.job-orchestrator.client={client_id}"
    listed = run(["docker", "container", "ls", "-aq", "--filter", label])
    for container in listed.stdout.split():
        run(["docker", "container", "rm", "-f", container])


def job_containers(client_id: str) -> list[dict[str, object]]:
    label = f"label=org.job-orchestrator.client={client_id}"
    listed = run(["docker", "container", "ls", "-aq", "--filter", label]).stdout.split()
    if not listed:
        return []
    inspected = run(["docker", "container", "inspect", *listed])
    found: list[dict[str, object]] = json.loads(inspected.stdout)
    return found


def wait_for_file(pattern: str, root: Path, timeout_s: float = 120.0) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no {pattern} under {root}")


def test_a_client_restart_keeps_its_running_job(stack: tuple[Stack, Path]) -> None:
    running, data = stack
    response = running.api.upload({"run.sh": LONG_JOB}, service="light")
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    starts = wait_for_file("*/work/starts.txt", data / "light")
    client_id = (data / "light" / ".client-id").read_text().strip()
    (container,) = job_containers(client_id)
    config = container["Config"]
    assert isinstance(config, dict)
    assert config["Image"] == STACK_IMAGE

    restarted = running.compose("restart", "client-light")
    assert restarted.returncode == 0, said(restarted)
    (still,) = job_containers(client_id)
    state = still["State"]
    assert isinstance(state, dict)
    assert state["Running"], state  # the engine kept it while the client was away
    wait_healthy(running, ("client-light",))
    # The same identity after the restart, so the container is the client's again.
    assert (data / "light" / ".client-id").read_text().strip() == client_id

    (starts.parent / "go").touch()
    running.api.wait_for(job_id, "Completed", timeout_s=180)
    result = running.api.download_zip(job_id)
    assert result.read("out.txt").decode() == "survived\n"
    assert starts.read_text() == "started\n"  # run once, not again after the restart
    deadline = time.monotonic() + 60
    while job_containers(client_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job_containers(client_id) == []  # removed once its result was archived
