"""The compose stack for real, with deploy/compose.rlimits.yml (clients without the engine's
socket: jobs are processes of their client's container, each with a uid of its own): images
built on the local Debian base (no registry here), PostgreSQL, a server and two clients
brought up by Compose, a job per service run through them from the host, the clients'
isolation and limits checked, a job's attempts on its client (environment, token file,
signal, the APIs: issue 21) checked to fail, everything removed. The default file (a
container per job) is brought up by test_compose_containers.py.

Build and start-up times are not asserted (bench/ measures); CI keeps the base image and
the layer cache between runs, so only a changed source tree rebuilds (from the pip step).
What the engine here cannot do is recorded where it matters: it refuses a CPU limit above
the host's CPU count (so `JO_CLIENT_CPUS` is lowered to it), and the host keeps an address
on every bridge network, internal ones included, so "not reachable from the host" means:
no published port, and no route from outside the internal network (macvlan and ipvlan,
which would hide the clients from the host too, answer "operation not supported").
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from testkit import require, unavailable
from testkit.harness import Api, free_port
from tests.deploy.tools import (
    COMPOSE_FILE,
    COMPOSE_SECRETS,
    COMPOSE_TOKEN,
    DEPLOY,
    LOCAL_BASE_OVERRIDE,
    RLIMITS_OVERRIDE,
    compose_command,
    run,
    said,
    write_token_file,
)

pytestmark = [
    pytest.mark.needs_docker,
    pytest.mark.timeout(2400),
    pytest.mark.xdist_group("compose-stack"),
]

BUILD_TIMEOUT_S = 1800.0
HEALTHY_TIMEOUT_S = 240.0
CLIENTS = ("client-light", "client-heavy")
# What run.sh reports about where it ran: in which container, as whom.
PROBE_SCRIPT = """\
id -u > uid.txt
hostname > hostname.txt
echo "ran for {service}" > out.txt
"""


@dataclass
class Stack:
    project: str
    command: list[str]
    env: dict[str, str]
    api: Api

    def compose(self, *args: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
        return run([*self.command, "-p", self.project, *args], env=self.env, timeout_s=timeout_s)

    def container(self, service: str) -> dict[str, Any]:
        ids = self.compose("ps", "-q", service).stdout.split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        return inspect(ids[0])


def inspect(name: str, kind: str = "container") -> dict[str, Any]:
    result = run(["docker", kind, "inspect", name])
    assert result.returncode == 0, said(result)
    (found,) = json.loads(result.stdout)
    assert isinstance(found, dict)
    return found


def docker_ready() -> list[str]:
    require("docker", "Debian: docker.io")
    info = run(["docker", "info", "--format", "{{.ServerVersion}}"])
    if info.returncode != 0:
        unavailable(f"the Docker engine does not answer: {info.stderr.strip()}")
    command = compose_command()
    for script in ("build-base-image", "build-wheels"):
        made = run([str(DEPLOY / script)], timeout_s=BUILD_TIMEOUT_S)
        if made.returncode != 0:
            unavailable(f"deploy/{script} failed: {said(made)}")
    return command


def wait_healthy(stack: Stack, services: tuple[str, ...]) -> None:
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {
            service: stack.container(service)["State"].get("Health", {}).get("Status", "none")
            for service in services
        }
        if all(state == "healthy" for state in states.values()):
            return
        time.sleep(2)
    logs = stack.compose("logs", "--no-color", "--tail", "40").stdout
    raise AssertionError(f"not healthy in {HEALTHY_TIMEOUT_S} s: {states}\n{logs}")


@contextlib.contextmanager
def brought_up(
    tmp_path: Path,
    tag: str,
    overrides: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
    before_down: Callable[[Path], None] | None = None,
) -> Iterator[tuple[Stack, Path]]:
    """The compose file (with the local base and `overrides`) built under image tags `tag`,
    up and healthy; with the clients' host directories. All of it removed after
    (`before_down(data)` first: what the engine holds outside the project)."""
    command = docker_ready()
    project = f"jo{tag.replace('-', '')}{uuid.uuid4().hex[:10]}"
    port = free_port()
    # The clients' host directories (not under /tmp: the client containers have a tmpfs there).
    data = Path("/var/tmp") / project
    for name in ("light", "heavy"):
        (data / name).mkdir(parents=True)
    full_env = {
        **COMPOSE_SECRETS,
        "JO_CLIENT_TOKEN_FILE": str(write_token_file(tmp_path)),
        "JO_PUBLISH_ADDRESS": "127.0.0.1",
        "JO_PUBLISH_PORT": str(port),
        "JO_CLIENT_CPUS": str(min(4, os.cpu_count() or 1)),
        "JO_IMAGE": f"job-orchestrator:{tag}",
        "JO_POSTGRES_IMAGE": f"job-orchestrator-postgres:{tag}",
        "JO_CLIENT_LIGHT_DATA": str(data / "light"),
        "JO_CLIENT_HEAVY_DATA": str(data / "heavy"),
        **(env or {}),
    }
    files = [COMPOSE_FILE, LOCAL_BASE_OVERRIDE, *overrides]
    options = [option for path in files for option in ("-f", str(path))]
    running = Stack(project, [*command, *options], full_env, Api(f"http://127.0.0.1:{port}"))
    try:
        built = running.compose("build", timeout_s=BUILD_TIMEOUT_S)
        assert built.returncode == 0, said(built)
        started = running.compose("up", "-d")
        assert started.returncode == 0, said(started)
        wait_healthy(running, ("db", "server", *CLIENTS))
        yield running, data
    finally:
        removed = running.compose("down", "-v", "--remove-orphans")
        if before_down is not None:
            before_down(data)
        shutil.rmtree(data, ignore_errors=True)
        assert removed.returncode == 0, said(removed)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with brought_up(tmp_path, "compose-test", [RLIMITS_OVERRIDE]) as (running, _data):
        yield running


def test_compose_stack_runs_jobs_and_keeps_the_clients_private(stack: Stack) -> None:
    """One stack for all the checks: bringing it up is the slow part."""
    check_a_job_per_service_runs_through_the_containers(stack)
    check_a_job_reaches_nothing_of_the_client_nor_any_api(stack)
    check_clients_publish_nothing_and_only_the_server_network_reaches_them(stack)
    check_clients_get_the_resource_limits_of_the_original_docs(stack)


def check_a_job_per_service_runs_through_the_containers(stack: Stack) -> None:
    for service, client in (("light", "client-light"), ("heavy", "client-heavy")):
        script = PROBE_SCRIPT.format(service=service)
        response = stack.api.upload({"run.sh": script}, service=service)
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        stack.api.wait_for(job_id, "Completed", timeout_s=120)
        result = stack.api.download_zip(job_id)
        assert result.read("out.txt").decode() == f"ran for {service}\n"
        # In the client container of that service, as a uid of its JOB_USERS, not the
        # client's (root in its container).
        container = stack.container(client)
        assert result.read("hostname.txt").decode().strip() == container["Config"]["Hostname"]
        assert int(result.read("uid.txt").decode()) in job_users(container)


# What a job tries against the client that runs it (issue 21: a job with the client's uid
# read CLIENT_TOKEN in /proc/<client>/environ and used it on the client's API). In a file of
# its own, which run.sh runs: the validator screens run.sh only, and this is the attack.
ATTACK_SCRIPT = """\
id -u > uid.txt
: > pids.txt
for dir in /proc/[0-9]*; do
  mapfile -d '' words < "$dir/cmdline" 2>/dev/null || continue
  [[ "${words[*]}" == *"job-orchestrator client"* ]] && echo "${dir#/proc/}" >> pids.txt
done
for pid in $(cat pids.txt); do
  if cat "/proc/$pid/environ" > "environ-$pid" 2>/dev/null; then
    echo "environ read"
  else
    echo "environ denied"
  fi
  if kill -0 "$pid" 2>/dev/null; then echo "signal sent"; else echo "signal refused"; fi
done > client.txt
if cat /run/secrets/client_token > token.txt 2>/dev/null; then
  echo read
else
  echo denied
fi > token-access.txt
# Other payloads on this client (the earlier jobs'): their results, logs and work files.
mine="$(dirname "$PWD")"
for id in $(seq 1 20); do
  for name in result.zip output.log work/out.txt work/uid.txt work/run.sh; do
    file="$(dirname "$mine")/$id/$name"
    case "$file" in "$mine"/*) continue ;; esac
    if cat "$file" > /dev/null 2>&1; then echo "$file"; fi
  done
done > others.txt
for target in @TARGETS@; do
  if timeout 5 bash -c "exec 3<>/dev/tcp/${target%:*}/${target#*:}" 2>/dev/null; then
    echo "$target open"
  else
    echo "$target closed"
  fi
done > network.txt
"""


def job_users(container: dict[str, Any]) -> range:
    """The JOB_USERS range a client container was given."""
    env = dict(item.partition("=")[::2] for item in container["Config"]["Env"])
    first, _, last = env["JOB_USERS"].partition("-")
    return range(int(first), int(last) + 1)


def address(container: dict[str, Any], network: str) -> str:
    found = container["NetworkSettings"]["Networks"][network]["IPAddress"]
    assert isinstance(found, str)
    return found


def client_process(container: dict[str, Any]) -> psutil.Process:
    """The client in its container, seen from the host (docker-init's child)."""
    init = psutil.Process(container["State"]["Pid"])
    (client,) = [child for child in init.children() if "client" in " ".join(child.cmdline()[1:])]
    return client


def check_a_job_reaches_nothing_of_the_client_nor_any_api(stack: Stack) -> None:
    executors = f"{stack.project}_executors"
    light = stack.container("client-light")
    targets = {
        "own client": "127.0.0.1:9000",
        "server": f"{address(stack.container('server'), executors)}:5000",
        "other client": f"{address(stack.container('client-heavy'), executors)}:9000",
    }
    # Every target answers the client's own uid (root in its container): what the job is
    # refused below is refused to the job, not missing.
    for name, target in targets.items():
        host, port = target.split(":")
        reached = stack.compose(
            "exec", "-T", "client-light", "bash", "-c", f"exec 3<>/dev/tcp/{host}/{port}"
        )
        assert reached.returncode == 0, f"{name}: {said(reached)}"

    script = ATTACK_SCRIPT.replace("@TARGETS@", " ".join(targets.values()))
    response = stack.api.upload(
        {"run.sh": "bash attack.sh\n", "attack.sh": script}, service="light"
    )
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    stack.api.wait_for(job_id, "Completed", timeout_s=120)
    result = stack.api.download_zip(job_id)
    files = {name: result.read(name).decode(errors="replace") for name in result.namelist()}

    client = client_process(light)
    uid = int(files["uid.txt"])
    assert uid != client.uids().real
    assert uid in job_users(light)
    # The job sees the client's process (one PID namespace) but cannot read or signal it.
    assert files["pids.txt"].split(), "the job did not find the client's process"
    assert set(files["client.txt"].splitlines()) == {"environ denied", "signal refused"}
    assert files["token-access.txt"] == "denied\n"
    # Nor another job's files (the light job of the first check ran on this client).
    assert files["others.txt"] == ""
    assert COMPOSE_TOKEN not in "".join(files.values())
    assert files["network.txt"].splitlines() == [f"{target} closed" for target in targets.values()]
    # And the client runs without the capability that set the rule (it could undo it).
    status = Path(f"/proc/{client.pid}/status").read_text()
    capabilities = {
        line.split(":")[0]: int(line.split()[1], 16)
        for line in status.splitlines()
        if line.startswith("Cap")
    }
    cap_setpcap, cap_net_admin = 1 << 8, 1 << 12
    for field in ("CapBnd", "CapEff"):
        assert not capabilities[field] & (cap_net_admin | cap_setpcap), field


def check_clients_publish_nothing_and_only_the_server_network_reaches_them(
    stack: Stack,
) -> None:
    executors = f"{stack.project}_executors"
    assert inspect(executors, "network")["Internal"] is True
    server = stack.container("server")
    assert server["NetworkSettings"]["Ports"]["5000/tcp"] == [
        {"HostIp": "127.0.0.1", "HostPort": stack.api.base_url.rsplit(":", 1)[1]}
    ]
    for service in CLIENTS:
        client = stack.container(service)
        bindings = client["NetworkSettings"]["Ports"]
        assert all(bound is None for bound in bindings.values()), f"{service}: {bindings}"
        assert client["HostConfig"]["PortBindings"] in ({}, None)
        assert set(client["NetworkSettings"]["Networks"]) == {executors}
        address = client["NetworkSettings"]["Networks"][executors]["IPAddress"]
        # A container on the public network, where the server's published side lives,
        # reaches the server but not the client.
        public = f"{stack.project}_public"
        server_address = server["NetworkSettings"]["Networks"][public]["IPAddress"]
        assert probe_from(public, server_address, 5000, stack) == "open"
        assert probe_from(public, address, 9000, stack) == "closed"


def probe_from(network: str, address: str, port: int, stack: Stack) -> str:
    """Whether a fresh container on `network` can open a TCP connection to address:port."""
    code = (
        "import socket,sys\n"
        "try:\n"
        f"    socket.create_connection(({address!r}, {port}), timeout=3).close(); print('open')\n"
        "except OSError:\n"
        "    print('closed')\n"
    )
    result = run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            network,
            "--entrypoint",
            "python3",
            stack.env["JO_IMAGE"],
            "-c",
            code,
        ],
        timeout_s=120,
    )
    assert result.returncode == 0, said(result)
    return result.stdout.strip()


def check_clients_get_the_resource_limits_of_the_original_docs(stack: Stack) -> None:
    cpus = int(stack.env["JO_CLIENT_CPUS"])
    for service in CLIENTS:
        host = stack.container(service)["HostConfig"]
        assert host["NanoCpus"] == cpus * 10**9
        assert host["Memory"] == 8 * 2**30
        assert host["MemoryReservation"] == 2**30
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        # And the kernel holds the container to it (cgroup v1 here; v2 elsewhere).
        limit = run(
            [
                *stack.command,
                "-p",
                stack.project,
                "exec",
                "-T",
                service,
                "sh",
                "-c",
                "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null"
                " || cat /sys/fs/cgroup/memory.max",
            ],
            env=stack.env,
        )
        assert limit.returncode == 0, said(limit)
        assert int(limit.stdout.strip()) == 8 * 2**30
