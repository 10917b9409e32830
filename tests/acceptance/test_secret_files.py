"""Secrets given as files (`CLIENT_TOKEN_FILE`, `METRICS_TOKEN_FILE`, `CALLBACK_SECRET_FILE`,
`DB_PATH_FILE`):
a server and a client started with nothing but the files work together, guard their routes
with what the files hold, and hold none of it in their environments, which anything running
with their uid can read in /proc/<pid>/environ (issue 21: a job read CLIENT_TOKEN there).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit.harness import Cluster, Node, cluster

CLIENT_TOKEN = f"file-token-{secrets.token_hex(16)}"
METRICS_TOKEN = f"file-metrics-{secrets.token_hex(16)}"
CALLBACK_SECRET = f"file-callback-{secrets.token_hex(16)}"
# What the job saw of the client's environment, for the last check.
SCRIPT = "env > env.txt\necho ok > out.txt\n"


def private_file(directory: Path, name: str, content: str) -> Path:
    path = directory / name
    path.write_text(content + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def from_files(tmp_path: Path) -> Iterator[Cluster]:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(mode=0o700)
    token = private_file(secrets_dir, "client-token", CLIENT_TOKEN)
    server_env = {
        "CLIENT_TOKEN_FILE": str(token),
        "METRICS_TOKEN_FILE": str(private_file(secrets_dir, "metrics-token", METRICS_TOKEN)),
        "CALLBACK_SECRET_FILE": str(private_file(secrets_dir, "callback", CALLBACK_SECRET)),
        "CALLBACK_ALLOW": "127.0.0.0/8",
        # The database too (a PostgreSQL URL holds its password); an empty DB_PATH counts as
        # unset, as in the systemd drop-in the server unit describes.
        "DB_PATH": "",
        "DB_PATH_FILE": str(private_file(secrets_dir, "db-path", str(tmp_path / "from-file.db"))),
    }
    with cluster(
        tmp_path, server_env=server_env, client_env={"CLIENT_TOKEN_FILE": str(token)}
    ) as running:
        yield running


def environ(node: Node) -> bytes:
    assert node.process is not None
    return Path(f"/proc/{node.process.pid}/environ").read_bytes()


def test_server_and_client_work_together_with_secrets_only_in_files(
    from_files: Cluster, tmp_path: Path
) -> None:
    (client,) = from_files.clients
    server = from_files.server
    assert server is not None

    # The client holds the file's token: nothing gets in without it.
    assert httpx.get(f"{client.url}/load", timeout=10).status_code == 401
    authorized = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
    assert httpx.get(f"{client.url}/load", headers=authorized, timeout=10).status_code == 200
    # The server sends it: a job goes through.
    job_id = from_files.api.submit(SCRIPT)
    from_files.api.wait_for(job_id, "Completed", timeout_s=60)
    result = from_files.api.download_zip(job_id)
    assert result.read("out.txt") == b"ok\n"
    # The server's other secrets came from their files too.
    metrics = f"{server.url}/metrics"
    assert httpx.get(metrics, timeout=10).status_code == 401
    scraped = httpx.get(metrics, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert scraped.status_code == 200
    # A callback URL is accepted only by a server that has a callback secret.
    with_callback = httpx.post(
        f"{server.url}/upload",
        files=[("file", ("run.sh", SCRIPT.encode()))],
        data={"service": "example", "user_id": "1", "callback_url": "http://127.0.0.1:9/done"},
        timeout=30,
    )
    assert with_callback.status_code == 201, with_callback.text

    # And no secret is in either process's environment, nor in what the job saw.
    for node in (server, client):
        seen = environ(node)
        for secret in (CLIENT_TOKEN, METRICS_TOKEN, CALLBACK_SECRET):
            assert secret.encode() not in seen, f"{node.kind} holds a secret in its environment"
    assert CLIENT_TOKEN.encode() not in result.read("env.txt")
    # The server keeps its jobs in the database the file named.
    assert (tmp_path / "from-file.db").is_file()
    assert not (tmp_path / "server.db").exists()
