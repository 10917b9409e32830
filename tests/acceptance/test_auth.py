"""Authentication: the server<->client bearer token and the users' API tokens.

Client side (CLIENT_TOKEN): every route but GET/HEAD `/` and `/health` needs
`Authorization: Bearer <token>`; the server sends SERVICE_<NAME>_CLIENT_TOKEN (or the global
CLIENT_TOKEN) on every call. User side (API_TOKENS_FILE): the user routes need a user token,
the user id comes from it, and a user only ever sees their own jobs.
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
from testkit.harness import Api, Cluster, cluster, free_port

FINAL = ("Completed", "Failed", "Invalid", "Killed", "Cleaned")
CLIENT_TOKEN = f"client-{secrets.token_hex(16)}"
UNAUTHENTICATED_WARNING = "CLIENT_TOKEN is not set"
SCRIPT = "echo ok > out.txt\n"


#: Authorization headers that must never pass a guard expecting `token`.
def bad_authorizations(token: str) -> dict[str, dict[str, str]]:
    return {
        "none": {},
        "empty": {"Authorization": ""},
        "wrong": {"Authorization": f"Bearer {'x' * len(token)}"},
        "prefix": {"Authorization": f"Bearer {token[:-1]}"},
        "longer": {"Authorization": f"Bearer {token}x"},
        "no-scheme": {"Authorization": token},
        "basic": {"Authorization": f"Basic {token}"},
        "bearer-only": {"Authorization": "Bearer"},
    }


BAD_CLIENT_AUTH = bad_authorizations(CLIENT_TOKEN)


def payload_dirs(data_path: Path) -> set[str]:
    if not data_path.exists():
        return set()
    return {entry.name for entry in data_path.iterdir() if entry.is_dir()}


def multipart_run_sh(
    script: bytes = b"echo pwned > pwned.txt\n",
) -> list[tuple[str, tuple[str, bytes]]]:
    return [("file", ("run.sh", script))]


# ---- the client's guard ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A lone client with CLIENT_TOKEN (no server: the tests are the only caller)."""
    running = Cluster(tmp_path_factory.mktemp("guarded"))
    try:
        running.add_client({"CLIENT_TOKEN": CLIENT_TOKEN})
        yield running
    finally:
        running.shutdown()


GUARDED_ROUTES = [
    ("POST", "/submit"),
    ("GET", "/retrieve/1"),
    ("GET", "/retrieve/1?wait=1&known=Running"),
    ("POST", "/kill/1"),
    ("GET", "/load"),
    ("HEAD", "/load"),
    ("GET", "/retrieve_partial/1"),
    ("GET", "/api-docs/openapi.json"),
    ("POST", "/health"),  # only GET/HEAD of the open paths are open
    ("GET", "/no-such-route"),
]


@pytest.mark.parametrize("how", sorted(BAD_CLIENT_AUTH))
@pytest.mark.parametrize(("method", "path"), GUARDED_ROUTES)
def test_client_refuses_requests_without_the_right_token(
    guarded: Cluster, method: str, path: str, how: str
) -> None:
    client = guarded.clients[0]
    data_path = Path(client.env["DATA_PATH"])
    before = payload_dirs(data_path)
    files = multipart_run_sh() if path == "/submit" else None
    response = httpx.request(
        method, f"{client.url}{path}", headers=BAD_CLIENT_AUTH[how], files=files, timeout=30
    )
    assert response.status_code == 401, response.text
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")
    # The refused submit never reached the registry: no payload directory, nothing ran.
    assert payload_dirs(data_path) == before


def test_a_refused_submit_runs_nothing(guarded: Cluster) -> None:
    client = guarded.clients[0]
    data_path = Path(client.env["DATA_PATH"])
    before = payload_dirs(data_path)
    response = httpx.post(f"{client.url}/submit", files=multipart_run_sh(), timeout=30)
    assert response.status_code == 401
    assert payload_dirs(data_path) == before
    assert list(data_path.rglob("pwned.txt")) == []


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", ["/", "/health"])
def test_client_health_and_ping_stay_open(guarded: Cluster, method: str, path: str) -> None:
    response = httpx.request(method, f"{guarded.clients[0].url}{path}", timeout=30)
    assert response.status_code == 200
    if method == "GET":
        assert response.json()


def test_client_accepts_the_right_token(guarded: Cluster) -> None:
    client = guarded.clients[0]
    headers = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
    assert httpx.get(f"{client.url}/load", headers=headers, timeout=30).status_code == 200
    # Past the guard: an unknown payload is the route's own 404, not a 401.
    assert httpx.get(f"{client.url}/retrieve/999", headers=headers, timeout=30).status_code == 404
    submitted = httpx.post(
        f"{client.url}/submit", headers=headers, files=multipart_run_sh(SCRIPT.encode()), timeout=30
    )
    assert submitted.status_code == 200, submitted.text
    assert submitted.json()["id"] > 0


def test_client_with_token_does_not_warn(guarded: Cluster) -> None:
    log = guarded.clients[0].log()
    assert "listening on" in log
    assert UNAUTHENTICATED_WARNING not in log
    assert CLIENT_TOKEN not in log


def test_client_without_token_warns_at_start(tmp_path: Path) -> None:
    running = Cluster(tmp_path)
    try:
        client = running.add_client()
        assert UNAUTHENTICATED_WARNING in client.log()
        # ... and serves anyone, as before.
        assert httpx.get(f"{client.url}/load", timeout=30).status_code == 200
    finally:
        running.shutdown()


# ---- the server sends the token ----------------------------------------------------------------


def run_job_lifecycle(cl: Cluster) -> None:
    """Dispatch, long-poll, result, partial download and kill all go through the guard."""
    api = cl.api
    done = api.submit("env > env.txt\necho ok > out.txt\n")
    assert api.wait_for(done, *FINAL)["status"] == "Completed", api.status(done)
    archive = api.download_zip(done)
    assert archive.read("out.txt") == b"ok\n"
    environment = archive.read("env.txt").decode()
    # The job never sees the token (nor the orchestrator's own settings).
    assert CLIENT_TOKEN not in environment
    assert "SERVICE_" not in environment
    assert "API_TOKENS_FILE" not in environment

    running = api.submit("echo started > progress.txt\nsleep 60\n")
    api.wait_for(running, "Running")
    partial = api.download_partial_zip(running)  # proxied from the client, with the token
    assert "run.sh" in partial.namelist()
    response = httpx.post(f"{api.base_url}/terminate/{running}", timeout=60)
    assert response.status_code == 200, response.text
    assert api.wait_for(running, *FINAL)["status"] == "Killed"


@pytest.mark.parametrize(
    "server_token_env",
    [
        {"SERVICE_EXAMPLE_CLIENT_TOKEN": CLIENT_TOKEN},
        {"CLIENT_TOKEN": CLIENT_TOKEN},
        # The service's own token wins over the global one.
        {"CLIENT_TOKEN": "global-but-wrong-token", "SERVICE_EXAMPLE_CLIENT_TOKEN": CLIENT_TOKEN},
    ],
    ids=["service-token", "global-token", "service-overrides-global"],
)
def test_server_with_the_matching_token_runs_jobs(
    tmp_path: Path, server_token_env: dict[str, str]
) -> None:
    with cluster(
        tmp_path,
        client_env={"CLIENT_TOKEN": CLIENT_TOKEN, "API_TOKENS_FILE": "/nonexistent/tokens"},
        server_env=server_token_env,
    ) as cl:
        run_job_lifecycle(cl)
        assert cl.server is not None
        for node in (cl.server, *cl.clients):
            assert CLIENT_TOKEN not in node.log()
        assert "answered 401" not in cl.server.log()


@pytest.mark.parametrize(
    "server_token_env",
    [{"SERVICE_EXAMPLE_CLIENT_TOKEN": f"wrong-{secrets.token_hex(12)}"}, {}],
    ids=["wrong-token", "no-token"],
)
def test_server_with_a_wrong_token_holds_the_job_and_says_why(
    tmp_path: Path, server_token_env: dict[str, str]
) -> None:
    with cluster(
        tmp_path, client_env={"CLIENT_TOKEN": CLIENT_TOKEN}, server_env=server_token_env
    ) as cl:
        job_id = cl.api.submit(SCRIPT)
        # The client refuses the server's token (issue 21, item 11): it is unauthorized, not
        # up, and the job waits for it (tests/acceptance/test_client_token.py), not Failed.
        details = f"{cl.server.url if cl.server else ''}/jobs/{job_id}"
        eventually(
            lambda: (
                (httpx.get(details, timeout=30).json().get("queue") or {}).get("reason")
                == "client_unauthorized"
            ),
            "the queue to say the client refuses the token",
            detail=lambda: httpx.get(details, timeout=30).text,
        )
        assert cl.api.status(job_id)["status"] == "Queued"
        # Nothing reached the client, and the server is still healthy and serving.
        assert payload_dirs(cl.root / "client0") == set()
        assert cl.server is not None
        assert cl.server.process is not None
        assert cl.server.process.poll() is None
        assert httpx.get(f"{cl.server.url}/health", timeout=30).status_code == 200
        for value in server_token_env.values():
            assert value not in cl.server.log()


# ---- users' tokens --------------------------------------------------------------------------

USER_A, USER_B, USER_C = 11, 22, 33
TOKEN_A = f"user-a-{secrets.token_hex(16)}"
TOKEN_B = f"user-b-{secrets.token_hex(16)}"
TOKEN_C = f"user-c-{secrets.token_hex(16)}"
NOT_MATCHING = "user_id does not match the token"
API_TOKENS_FILE_NAME = "tokens.txt"


def tokens_text(*pairs: tuple[str, int]) -> str:
    lines = ["# job-orchestrator user tokens", ""]
    lines += [f"{token} {user_id}" for token, user_id in pairs]
    return "\n".join(lines) + "\n"


def bump_mtime(path: Path) -> None:
    """Move the mtime clearly away from its old value (coarse file system clocks)."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("users")
    tokens = root / API_TOKENS_FILE_NAME
    tokens.write_text(tokens_text((TOKEN_A, USER_A), (TOKEN_B, USER_B)))
    with cluster(
        root, server_env={"API_TOKENS_FILE": str(tokens), "LOG_LEVEL": "DEBUG"}
    ) as running:
        yield running


def api_as(cl: Cluster, token: str | None) -> Api:
    assert cl.server is not None
    return Api(cl.server.url, token=token)


def server_jobs(cl: Cluster) -> set[str]:
    return payload_dirs(cl.root / "server-data")


def test_upload_with_a_token_belongs_to_its_user(users: Cluster) -> None:
    as_a, as_b = api_as(users, TOKEN_A), api_as(users, TOKEN_B)
    job_id = as_a.submit(SCRIPT, user_id=None)  # no user_id field: the token says who
    assert as_a.wait_for(job_id, *FINAL)["status"] == "Completed"
    assert as_a.download_zip(job_id).read("out.txt") == b"ok\n"
    # Only A sees it.
    response = httpx.get(f"{users.api.base_url}/download/{job_id}", headers=as_b.headers)
    assert response.status_code == 404
    assert response.json()["message"] == f"Job {job_id} not found in the database"
    # A user_id field that agrees with the token is fine too, in any of its spellings.
    for spelling in (str(USER_A), f"+{USER_A}"):
        response = as_a.upload({"run.sh": SCRIPT}, user_id=spelling)
        assert response.status_code == 201, response.text


@pytest.mark.parametrize("claimed", [USER_B, 0, -USER_A, 999])
def test_upload_claiming_another_user_is_forbidden(users: Cluster, claimed: int) -> None:
    before = server_jobs(users)
    response = api_as(users, TOKEN_A).upload({"run.sh": SCRIPT}, user_id=claimed)
    assert response.status_code == 403, response.text
    assert response.json()["message"] == NOT_MATCHING
    assert server_jobs(users) == before


BAD_USER_AUTH = {
    **bad_authorizations(TOKEN_A),
    "client-token": {"Authorization": f"Bearer {CLIENT_TOKEN}"},
    "user-id-as-token": {"Authorization": f"Bearer {USER_A}"},
    "comment-line": {"Authorization": "Bearer # job-orchestrator user tokens"},
}


@pytest.fixture(scope="module")
def job_of_a(users: Cluster) -> int:
    as_a = api_as(users, TOKEN_A)
    job_id = as_a.submit("echo partial > partial.txt\nexit 3\n", user_id=None)
    assert as_a.wait_for(job_id, *FINAL)["status"] == "Failed"
    return job_id


@pytest.mark.parametrize("how", sorted(BAD_USER_AUTH))
@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("POST", "/upload"),
        ("GET", "/download/{id}"),
        ("HEAD", "/download/{id}"),
        ("GET", "/download_partial/{id}"),
        ("POST", "/terminate/{id}"),
    ],
)
def test_user_routes_need_a_valid_token(
    users: Cluster, job_of_a: int, method: str, route: str, how: str
) -> None:
    before = server_jobs(users)
    files = [("file", ("run.sh", SCRIPT.encode()))] if route == "/upload" else None
    data = {"service": "example", "user_id": str(USER_A)} if route == "/upload" else None
    response = httpx.request(
        method,
        f"{users.api.base_url}{route.format(id=job_of_a)}",
        headers=BAD_USER_AUTH[how],
        files=files,
        data=data,
        timeout=30,
    )
    assert response.status_code == 401, response.text
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")
    if method != "HEAD":
        assert response.json()["status"] == "Unknown"
        assert TOKEN_A not in response.text
    assert server_jobs(users) == before
    # The job was not touched.
    assert api_as(users, TOKEN_A).status(job_of_a)["status"] == "Failed"


def test_users_only_reach_their_own_jobs(users: Cluster) -> None:
    as_a, as_b = api_as(users, TOKEN_A), api_as(users, TOKEN_B)
    job_id = as_a.submit("echo started > progress.txt\nsleep 60\n", user_id=None)
    as_a.wait_for(job_id, "Running")
    base = users.api.base_url
    absent = f"Job {job_id} not found in the database"
    for method, route in (
        ("GET", "/download/{id}"),
        ("GET", "/download_partial/{id}"),
        ("POST", "/terminate/{id}"),
    ):
        response = httpx.request(
            method, f"{base}{route.format(id=job_id)}", headers=as_b.headers, timeout=60
        )
        assert response.status_code == 404, (route, response.text)
        assert response.json() == {"id": 0, "status": "Unknown", "message": absent}
    # B's terminate did nothing: A's job still runs, and A reaches it.
    assert as_a.status(job_id)["status"] == "Running"
    assert "run.sh" in as_a.download_partial_zip(job_id).namelist()
    response = httpx.post(f"{base}/terminate/{job_id}", headers=as_a.headers, timeout=60)
    assert response.status_code == 200, response.text
    assert as_a.wait_for(job_id, *FINAL)["status"] == "Killed"
    # A job of B is as invisible to A (the ids are not a side channel).
    job_of_b = as_b.submit(SCRIPT, user_id=USER_B)
    assert as_b.wait_for(job_of_b, *FINAL)["status"] == "Completed"
    response = httpx.get(f"{base}/download/{job_of_b}", headers=as_a.headers, timeout=30)
    assert response.status_code == 404
    assert "out.txt" in as_b.download_zip(job_of_b).namelist()


def test_unknown_job_looks_the_same_as_someone_elses(users: Cluster, job_of_a: int) -> None:
    as_b = api_as(users, TOKEN_B)
    mine = httpx.get(f"{users.api.base_url}/download/{job_of_a}", headers=as_b.headers)
    missing = httpx.get(f"{users.api.base_url}/download/4000000000", headers=as_b.headers)
    assert mine.status_code == missing.status_code == 404
    assert mine.json()["message"].replace(str(job_of_a), "N") == missing.json()["message"].replace(
        "4000000000", "N"
    )


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/", 200),
        ("/health", 200),
        ("/swagger", 303),
        ("/swagger/", 200),
        ("/swagger/swagger-ui-bundle.js", 200),
        ("/api-docs/openapi.json", 200),
    ],
)
def test_open_routes_need_no_token(users: Cluster, path: str, status: int) -> None:
    response = httpx.get(f"{users.api.base_url}{path}", timeout=30)
    assert response.status_code == status
    head = httpx.head(f"{users.api.base_url}{path}", timeout=30)
    assert head.status_code == status


def test_token_file_is_reread_when_it_changes(users: Cluster) -> None:
    tokens = Path(users.server.env["API_TOKENS_FILE"]) if users.server else None
    assert tokens is not None
    as_c = api_as(users, TOKEN_C)
    assert as_c.upload({"run.sh": SCRIPT}, user_id=None).status_code == 401
    original = tokens.read_text()
    try:
        with tokens.open("a") as sink:
            sink.write(f"# added later\n{TOKEN_C} {USER_C}\n")
        bump_mtime(tokens)
        job_id = as_c.submit(SCRIPT, user_id=None)
        assert as_c.wait_for(job_id, *FINAL)["status"] == "Completed"
        # Revocation works the same way: B's line goes, B's token stops working.
        tokens.write_text(tokens_text((TOKEN_A, USER_A), (TOKEN_C, USER_C)))
        bump_mtime(tokens)
        response = api_as(users, TOKEN_B).upload({"run.sh": SCRIPT}, user_id=None)
        assert response.status_code == 401
        assert api_as(users, TOKEN_A).upload({"run.sh": SCRIPT}, user_id=None).status_code == 201
    finally:
        tokens.write_text(original)
        bump_mtime(tokens)
    assert as_c.upload({"run.sh": SCRIPT}, user_id=None).status_code == 401


def test_malformed_rewrite_keeps_the_tokens_loaded_before(users: Cluster) -> None:
    assert users.server is not None
    tokens = Path(users.server.env["API_TOKENS_FILE"])
    original = tokens.read_text()
    try:
        tokens.write_text(f"{TOKEN_A} {USER_A} extra-field\n{TOKEN_C}\n")
        bump_mtime(tokens)
        # The broken file is not taken: A still works, C (only in the broken file) does not.
        assert api_as(users, TOKEN_A).upload({"run.sh": SCRIPT}, user_id=None).status_code == 201
        assert api_as(users, TOKEN_C).upload({"run.sh": SCRIPT}, user_id=None).status_code == 401
        assert httpx.get(f"{users.server.url}/health", timeout=30).status_code == 200
    finally:
        tokens.write_text(original)
        bump_mtime(tokens)
    log = users.server.log()
    assert TOKEN_A not in log
    assert TOKEN_C not in log


def test_tokens_never_reach_the_logs(users: Cluster, job_of_a: int) -> None:
    base = users.api.base_url
    # Good, bad and mismatched tokens, on every user route, with DEBUG logging on.
    for token in (TOKEN_A, TOKEN_B, TOKEN_C, f"{TOKEN_A}x"):
        headers = {"Authorization": f"Bearer {token}"}
        httpx.get(f"{base}/download/{job_of_a}", headers=headers, timeout=30)
        httpx.get(f"{base}/download_partial/{job_of_a}", headers=headers, timeout=30)
        httpx.post(f"{base}/terminate/{job_of_a}", headers=headers, timeout=30)
        httpx.post(
            f"{base}/upload",
            headers=headers,
            files=[("file", ("run.sh", SCRIPT.encode()))],
            data={"service": "example", "user_id": str(USER_B)},
            timeout=30,
        )
    assert users.server is not None
    logs = users.server.log() + "".join(client.log() for client in users.clients)
    assert "API tokens from" in logs  # the log is there
    for token in (TOKEN_A, TOKEN_B, TOKEN_C):
        assert token not in logs
        assert token[:16] not in logs


# ---- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        "short 1\n",
        f"{TOKEN_A}\n",
        f"{TOKEN_A} not-a-number\n",
        f"{TOKEN_A} 1 extra\n",
        f"{TOKEN_A} 99999999999\n",
        f"# fine\n{TOKEN_B} 2\nbroken\n",
        None,  # the file does not exist
    ],
    ids=[
        "short-token",
        "no-user",
        "bad-user",
        "three-fields",
        "user-out-of-range",
        "late-line",
        "missing",
    ],
)
def test_malformed_tokens_file_stops_the_server(tmp_path: Path, content: str | None) -> None:
    tokens = tmp_path / "tokens.txt"
    if content is not None:
        tokens.write_text(content)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SERVICE_") and key not in {"CLIENT_TOKEN", "API_TOKENS_FILE"}
    }
    env.update(
        {
            "API_TOKENS_FILE": str(tokens),
            "PORT": str(free_port()),
            "HOST": "127.0.0.1",
            "DB_PATH": str(tmp_path / "db.sqlite"),
            "DATA_PATH": str(tmp_path / "data"),
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "job_orchestrator", "server"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "API_TOKENS_FILE" in lines[0]
    for token in (TOKEN_A, TOKEN_B):
        assert token not in result.stderr + result.stdout
    assert not (tmp_path / "db.sqlite").exists()


def test_wait_on_another_users_job_is_not_found_at_once(users: Cluster, tmp_path: Path) -> None:
    as_a, as_b = api_as(users, TOKEN_A), api_as(users, TOKEN_B)
    gate = tmp_path / "go"
    job_id = as_a.submit(f"while [ ! -e '{gate}' ]; do sleep 0.05; done\n", user_id=None)
    try:
        as_a.wait_for(job_id, "Running")
        # A held request would outlast this deadline.
        response = httpx.get(
            f"{users.api.base_url}/download/{job_id}?wait=60", headers=as_b.headers, timeout=15
        )
        assert response.status_code == 404
        assert response.json()["message"] == f"Job {job_id} not found in the database"
    finally:
        gate.touch()
    assert as_a.wait_for(job_id, *FINAL)["status"] == "Completed"
