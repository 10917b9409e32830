"""With API_TOKENS_FILE, users who are not admins see clients by name, never their URLs, and
no payload ids; admins see everything (issue 21, finding 14). Real server and client."""

from __future__ import annotations

import secrets
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from testkit import eventually
from testkit.harness import Cluster, cluster

USER, ADMIN = 5, 9
USER_TOKEN = f"user-{secrets.token_hex(16)}"
ADMIN_TOKEN = f"admin-{secrets.token_hex(16)}"


@pytest.fixture
def with_tokens(tmp_path: Path) -> Iterator[Cluster]:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"{USER_TOKEN} {USER}\n{ADMIN_TOKEN} {ADMIN}\n")
    env = {"API_TOKENS_FILE": str(tokens), "ADMIN_USERS": str(ADMIN), "NODE_CHECK_INTERVAL": "0.2"}
    with cluster(tmp_path, server_env=env) as running:
        yield running


def get(cl: Cluster, path: str, token: str) -> httpx.Response:
    assert cl.server is not None
    return httpx.get(
        f"{cl.server.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def submit(cl: Cluster, script: str, token: str = USER_TOKEN) -> int:
    assert cl.server is not None
    response = httpx.post(
        f"{cl.server.url}/upload",
        headers={"Authorization": f"Bearer {token}"},
        files={"file": ("run.sh", script.encode())},
        data={"service": "example"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def until(
    read: Callable[[], httpx.Response], ok: Callable[[httpx.Response], bool], what: str
) -> httpx.Response:
    """`read()`'s first answer that is `ok`; fails after 60 s showing the last one."""
    last: list[httpx.Response] = []

    def answer() -> httpx.Response | None:
        last[:] = [read()]
        return last[0] if ok(last[0]) else None

    return eventually(answer, what, 60, detail=lambda: last[0].text if last else "")


def test_users_see_a_client_by_name_admins_by_url(with_tokens: Cluster) -> None:
    client_url = with_tokens.clients[0].url
    job_id = submit(with_tokens, "echo done > out.txt\n")
    mine = until(
        lambda: get(with_tokens, f"/jobs/{job_id}", USER_TOKEN),
        lambda answer: answer.json()["status"] == "Completed",
        "the job to complete",
    ).json()
    assert mine["client"] == "example-1"
    listing = get(with_tokens, "/jobs", USER_TOKEN)
    assert client_url not in listing.text
    assert "example-1" in listing.text
    # An admin (who sees only their own jobs on this route, like everyone) sees the URL.
    own = submit(with_tokens, "echo done > out.txt\n", ADMIN_TOKEN)
    admins = until(
        lambda: get(with_tokens, f"/jobs/{own}", ADMIN_TOKEN),
        lambda answer: answer.json()["status"] == "Completed",
        "the admin's job to complete",
    )
    assert admins.json()["client"] == client_url


def test_a_down_client_is_named_not_addressed_in_the_queue_detail(with_tokens: Cluster) -> None:
    client = with_tokens.clients[0]
    client_url = client.url
    client.stop(signal.SIGKILL)
    job_id = submit(with_tokens, "echo done > out.txt\n")
    own = submit(with_tokens, "echo done > out.txt\n", ADMIN_TOKEN)
    seen = until(
        lambda: get(with_tokens, f"/jobs/{own}", ADMIN_TOKEN),
        lambda answer: (answer.json().get("queue") or {}).get("reason") == "no_healthy_client",
        "the queue to say no client answers",
    )
    assert client_url in seen.text  # the detail names the URL: admins see it
    mine = get(with_tokens, f"/jobs/{job_id}", USER_TOKEN)
    assert mine.json()["queue"]["reason"] == "no_healthy_client"
    assert client_url not in mine.text
    assert client_url.removeprefix("http://") not in mine.text
    assert "example-1" in mine.json()["queue"]["detail"]
