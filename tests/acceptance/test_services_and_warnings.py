"""`GET /services` and the start-up warnings (issue 25, items 4 and 5), on real processes.

- `/services` lists each service's quotas, queue and clients with their states; users who
  are not admins see clients by name (`<service>-<n>`), never their URL; it is in the OpenAPI
  document.
- A server with no service says so on stderr at start (not only in its log) and on /status.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit import eventually
from testkit.harness import Cluster, cluster, free_port

ADMIN = f"admin-{secrets.token_hex(12)}"
USER = f"user-{secrets.token_hex(12)}"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("services")
    tokens = root / "tokens"
    tokens.write_text(f"{ADMIN} 1\n{USER} 2\n")
    env = {
        "API_TOKENS_FILE": str(tokens),
        "ADMIN_USERS": "1",
        "SERVICE_EXAMPLE_RUNS_PER_USER": "2",
        "SERVICE_EXAMPLE_MAX_RUNS": "3",
    }
    with cluster(root, clients=2, server_env=env) as started:
        yield started


def services(cl: Cluster, token: str | None) -> httpx.Response:
    assert cl.server is not None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{cl.server.url}/services", headers=headers, timeout=10)


def test_services_show_quotas_and_clients_by_url_to_admins(guarded: Cluster) -> None:
    answer = services(guarded, ADMIN)
    assert answer.status_code == 200, answer.text
    (service,) = answer.json()["services"]
    assert service["name"] == "example"
    assert (service["runs_per_user"], service["max_runs"]) == (2, 3)
    assert service["timeout_s"] is None
    assert [client["name"] for client in service["clients"]] == ["example-1", "example-2"]
    assert [client["url"] for client in service["clients"]] == [c.url for c in guarded.clients]
    assert {client["state"] for client in service["clients"]} <= {"up", "down", "unauthorized"}


def test_users_see_clients_by_name_only(guarded: Cluster) -> None:
    answer = services(guarded, USER)
    assert answer.status_code == 200, answer.text
    (service,) = answer.json()["services"]
    assert [client["name"] for client in service["clients"]] == ["example-1", "example-2"]
    assert [client["url"] for client in service["clients"]] == [None, None]
    for client in guarded.clients:
        assert str(client.port) not in answer.text


def test_services_need_a_token_when_users_authenticate(guarded: Cluster) -> None:
    assert services(guarded, None).status_code == 401
    assert services(guarded, "not-a-token-at-all").status_code == 401


def test_services_are_in_the_openapi_document(guarded: Cluster) -> None:
    assert guarded.server is not None
    document = httpx.get(f"{guarded.server.url}/api-docs/openapi.json", timeout=10).json()
    operation = document["paths"]["/services"]["get"]
    assert operation["tags"] == ["services"]
    assert "ServiceList" in document["components"]["schemas"]


def test_a_server_without_service_says_so_on_stderr_and_on_status(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE_")}
    env.update(
        PORT=str(port),
        HOST="127.0.0.1",
        DB_PATH=str(tmp_path / "db.sqlite"),
        DATA_PATH=str(tmp_path / "data"),
    )
    with (tmp_path / "log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "job_orchestrator", "server"],
            env=env,
            stdout=log,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert server.poll() is None, (tmp_path / "log").read_text()
            return httpx.get(f"{base}/health", timeout=1).status_code == 200

        eventually(healthy, "the server to answer", retry_on=(httpx.HTTPError,))
        page = httpx.get(f"{base}/status", timeout=10)
        assert page.status_code == 200
        assert "no service is configured" in page.text
        assert httpx.get(f"{base}/services", timeout=10).json() == {"services": []}
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    warning = stderr.decode()
    assert "job-orchestrator: warning: no service is configured" in warning, warning
    assert "Invalid service" in warning  # what every upload will answer, said in advance


def test_the_clients_warnings_show_on_the_status_page(guarded: Cluster) -> None:
    """The harness's clients run jobs with their own uid (SANDBOX=none, no JOB_USERS): they
    say so on stderr, and on /health for the server's /status."""
    assert guarded.server is not None
    health = httpx.get(f"{guarded.clients[0].url}/health", timeout=10)
    assert "SANDBOX%3Dnone" in health.headers["X-Orchestrator-Warnings"]
    server_url = guarded.server.url

    def warned() -> bool:
        page = httpx.get(
            f"{server_url}/status", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
        )
        assert page.status_code == 200
        return page.text.count("warning: SANDBOX=none and no JOB_USERS") == len(guarded.clients)

    # The server's next background check of the clients brings their warnings.
    eventually(warned, "every client's warning on /status", poll_s=0.5)
