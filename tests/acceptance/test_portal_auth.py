"""Portals on real server and client processes (issue 26): delegated portal tokens of
API_TOKENS_FILE and JWTs a portal signs, verified with JWT_PUBLIC_KEYS, with keys and tokens
made here. Users' own tokens keep their rule; quotas and fairness stay per user."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.harness import Api, Cluster, cluster, job_dir
from tests.acceptance.test_user_cli import cli, submitted_id
from tests.portal_keys import (
    AUDIENCE,
    ISSUER,
    claims,
    ec_key,
    ed_key,
    forge,
    rsa_key,
)

FINAL = ("Completed", "Failed", "Invalid", "Killed", "Cleaned")
SCRIPT = "echo ok > out.txt\n"
USER_A, USER_B, ADMIN = 11, 22, 1
TOKEN_A = "user-a-token-0123456789abcdef"
TOKEN_B = "user-b-token-0123456789abcdef"
PORTAL = "portal-haddock-token-0123456789abcdef"
OTHER_PORTAL = "portal-other-token-0123456789abcdef"
PORTAL_USERS = (1000, 1999)


def tokens_file(root: Path) -> Path:
    path = root / "tokens.txt"
    path.write_text(
        f"{TOKEN_A} {USER_A} name=alice\n"
        f"{TOKEN_B} {USER_B}\n"
        f"# haddock's web app acts for users {PORTAL_USERS[0]} to {PORTAL_USERS[1]}\n"
        f"{PORTAL} portal:{PORTAL_USERS[0]}-{PORTAL_USERS[1]} name=haddock\n"
        f"{OTHER_PORTAL} portal:2000-2999 name=other-portal\n"
    )
    return path


def write_atomically(path: Path, text: str) -> None:
    """As a secret manager rotates a file: a new file renamed over the old one."""
    staged = path.with_suffix(".new")
    staged.write_text(text)
    os.replace(staged, path)


class Portal:
    """The portal's side: its signing keys and the server env that trusts them."""

    def __init__(self, root: Path) -> None:
        self.keys = {"RS256": rsa_key(), "ES256": ec_key(), "EdDSA": ed_key()}
        self.key_file = root / "portal-keys.pem"
        self.pems = "\n".join(key.public_pem for key in self.keys.values())
        self.key_file.write_text(self.pems)
        self.env = {
            "API_TOKENS_FILE": str(tokens_file(root)),
            "JWT_PUBLIC_KEYS": str(self.key_file),
            "JWT_AUDIENCE": AUDIENCE,
            "JWT_ISSUER": ISSUER,
            "JWT_ADMIN_CLAIM": "jo_admin",
            "ADMIN_USERS": str(ADMIN),
            "LOG_LEVEL": "DEBUG",
        }

    def jwt(self, user: int | str, algorithm: str = "RS256", **more: Any) -> str:
        return self.keys[algorithm].sign(claims(user, time.time(), **more))


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Portal]]:
    root = tmp_path_factory.mktemp("portal")
    signer = Portal(root)
    with cluster(root, server_env=signer.env) as running:
        yield running, signer


def api(cl: Cluster, credential: str | None) -> Api:
    assert cl.server is not None
    return Api(cl.server.url, token=credential)


def jobs_of(cl: Cluster, credential: str, **query: int) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{api(cl, None).base_url}/jobs",
        params={"limit": 100, **query},
        headers=api(cl, credential).headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()["jobs"]
    return listed


def status_page(cl: Cluster, **kwargs: Any) -> httpx.Response:
    return httpx.get(f"{api(cl, None).base_url}/status", timeout=30, **kwargs)


# --- JWTs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
def test_a_jwt_acts_for_its_user(portal: tuple[Cluster, Portal], algorithm: str) -> None:
    cl, signer = portal
    as_user = api(cl, signer.jwt(4242, algorithm))
    job_id = as_user.submit(SCRIPT, user_id=None)  # no user_id field: the JWT says who
    assert as_user.wait_for(job_id, *FINAL)["status"] == "Completed"
    assert as_user.download_zip(job_id).read("out.txt") == b"ok\n"
    assert jobs_of(cl, as_user.token or "")[0]["id"] == job_id
    # Another user's JWT, and a user token, do not reach it.
    for other in (signer.jwt(4243, algorithm), TOKEN_A):
        assert api(cl, other).status(job_id)["status"] == "Unknown"
    # Claiming another user in the form is refused as with a user token.
    response = as_user.upload({"run.sh": SCRIPT}, user_id=4243)
    assert response.status_code == 403, response.text


def refused_jwts(signer: Portal, now: float) -> dict[str, tuple[str, str]]:
    """(JWT, the 401's message) for every way a JWT must fail."""
    rsa = signer.keys["RS256"]
    payload = claims(4242, now)
    return {
        "expired": (rsa.sign({**payload, "exp": int(now) - 120}), "JWT has expired"),
        "not-yet-valid": (rsa.sign({**payload, "nbf": int(now) + 120}), "JWT is not valid yet"),
        "wrong-audience": (
            rsa.sign({**payload, "aud": "bartender"}),
            "JWT audience is not JWT_AUDIENCE",
        ),
        "wrong-issuer": (
            rsa.sign({**payload, "iss": "https://evil.example"}),
            "JWT issuer is not JWT_ISSUER",
        ),
        "wrong-key": (rsa_key().sign(payload), "not verified by any key of JWT_PUBLIC_KEYS"),
        "alg-none": (forge({"alg": "none", "typ": "JWT"}, payload, None), "'none' is not accepted"),
        "hmac-with-the-public-key": (
            forge({"alg": "HS256", "typ": "JWT"}, payload, rsa.public_pem.encode()),
            "'HS256' is not accepted",
        ),
        "non-numeric-subject": (
            rsa.sign({**payload, "sub": "alice@portal"}),
            "JWT claim 'sub' is not a numeric user id",
        ),
        "no-expiry": (
            rsa.sign({key: value for key, value in payload.items() if key != "exp"}),
            "JWT has no 'exp' claim",
        ),
    }


@pytest.mark.parametrize(
    "how",
    [
        "expired",
        "not-yet-valid",
        "wrong-audience",
        "wrong-issuer",
        "wrong-key",
        "alg-none",
        "hmac-with-the-public-key",
        "non-numeric-subject",
        "no-expiry",
    ],
)
def test_refused_jwts_are_401_saying_why(portal: tuple[Cluster, Portal], how: str) -> None:
    cl, signer = portal
    token, message = refused_jwts(signer, time.time())[how]
    before = jobs_of(cl, PORTAL)
    response = api(cl, token).upload({"run.sh": SCRIPT}, user_id=None)
    assert response.status_code == 401, response.text
    assert message in response.json()["message"]
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    assert jobs_of(cl, PORTAL) == before
    read = httpx.get(f"{api(cl, None).base_url}/jobs", headers=api(cl, token).headers)
    assert read.status_code == 401
    assert message in read.json()["message"]


def test_a_rotated_key_is_taken_without_a_restart(portal: tuple[Cluster, Portal]) -> None:
    cl, signer = portal
    new = rsa_key()
    old_jwt = signer.jwt(77)
    new_jwt = new.sign(claims(77, time.time()), kid="2026-12")
    assert api(cl, old_jwt).upload({"run.sh": SCRIPT}, user_id=None).status_code == 201
    assert api(cl, new_jwt).upload({"run.sh": SCRIPT}, user_id=None).status_code == 401
    try:
        # The portal publishes its new key as a JWKS document, and drops the old one.
        write_atomically(signer.key_file, json.dumps({"keys": [new.jwk("2026-12")]}))
        response = api(cl, new_jwt).upload({"run.sh": SCRIPT}, user_id=None)
        assert response.status_code == 201, response.text
        assert jobs_of(cl, new_jwt)[0]["id"] == response.json()["id"]
        refused = api(cl, old_jwt).upload({"run.sh": SCRIPT}, user_id=None)
        assert refused.status_code == 401
        # A broken file is logged and the keys loaded before are kept.
        write_atomically(signer.key_file, "-----BEGIN PUBLIC KEY-----\nnot a key\n")
        assert api(cl, new_jwt).upload({"run.sh": SCRIPT}, user_id=None).status_code == 201
        assert f"could not re-read {signer.key_file}" in server_log(cl)
    finally:
        write_atomically(signer.key_file, signer.pems)
    assert api(cl, old_jwt).upload({"run.sh": SCRIPT}, user_id=None).status_code == 201


# --- portal tokens ---------------------------------------------------------------------------


def test_a_portal_token_acts_for_the_users_of_its_range(portal: tuple[Cluster, Portal]) -> None:
    cl, _ = portal
    as_portal = api(cl, PORTAL)
    first = as_portal.submit(SCRIPT, user_id=1001)
    second = as_portal.submit("echo started > progress.txt\nsleep 60\n", user_id=1999)
    mine = api(cl, TOKEN_A).submit(SCRIPT, user_id=None)
    assert as_portal.wait_for(first, *FINAL)["status"] == "Completed"
    assert as_portal.download_zip(first).read("out.txt") == b"ok\n"
    # Listing: all of its users' jobs without a filter, one user's with one.
    listed = jobs_of(cl, PORTAL)
    assert {first, second} <= {job["id"] for job in listed}
    assert mine not in {job["id"] for job in listed}
    assert all(PORTAL_USERS[0] <= job["user_id"] <= PORTAL_USERS[1] for job in listed)
    assert [job["id"] for job in jobs_of(cl, PORTAL, user_id=1999)] == [second]
    # It manages its users' jobs.
    as_portal.wait_for(second, "Running")
    killed = httpx.post(f"{as_portal.base_url}/terminate/{second}", headers=as_portal.headers)
    assert killed.status_code == 200, killed.text
    assert as_portal.wait_for(second, *FINAL)["status"] == "Killed"
    # Not another user's job, nor another portal's users' jobs.
    assert as_portal.status(mine)["status"] == "Unknown"
    assert api(cl, OTHER_PORTAL).status(first)["status"] == "Unknown"
    assert api(cl, TOKEN_A).status(first)["status"] == "Unknown"


@pytest.mark.parametrize("user_id", [999, 2000, 2500, USER_A, -1001])
def test_a_portal_token_is_refused_for_users_outside_its_range(
    portal: tuple[Cluster, Portal], user_id: int
) -> None:
    cl, _ = portal
    before = jobs_of(cl, PORTAL)
    response = api(cl, PORTAL).upload({"run.sh": SCRIPT}, user_id=user_id)
    assert response.status_code == 403, response.text
    assert response.json()["message"] == "user_id is outside the user ids of this portal token"
    listing = httpx.get(
        f"{api(cl, None).base_url}/jobs",
        params={"user_id": user_id},
        headers=api(cl, PORTAL).headers,
    )
    assert listing.status_code == 403, listing.text
    assert jobs_of(cl, PORTAL) == before


def test_a_portal_token_must_name_the_user(portal: tuple[Cluster, Portal]) -> None:
    cl, _ = portal
    response = api(cl, PORTAL).upload({"run.sh": SCRIPT}, user_id=None)
    assert response.status_code == 400
    assert response.json()["message"] == "Missing user_id field"


def test_a_user_token_is_refused_for_another_users_job(portal: tuple[Cluster, Portal]) -> None:
    cl, signer = portal
    job_of_a = api(cl, TOKEN_A).submit(SCRIPT, user_id=None)
    assert api(cl, TOKEN_A).wait_for(job_of_a, *FINAL)["status"] == "Completed"
    base = api(cl, None).base_url
    for credential in (TOKEN_B, signer.jwt(USER_B), PORTAL):
        for method, route in (("GET", "/download/{id}"), ("POST", "/terminate/{id}")):
            response = httpx.request(
                method, f"{base}{route.format(id=job_of_a)}", headers=api(cl, credential).headers
            )
            assert response.status_code == 404, (credential, route, response.text)
        if credential != PORTAL:  # a portal naming a user outside its range: 403, above
            assert jobs_of(cl, credential, user_id=USER_A) == []
    # User A's JWT is as good as A's token: tokens and JWTs are used together.
    assert api(cl, signer.jwt(USER_A)).download_zip(job_of_a).read("out.txt") == b"ok\n"
    response = api(cl, TOKEN_B).upload({"run.sh": SCRIPT}, user_id=USER_A)
    assert response.status_code == 403
    assert response.json()["message"] == "user_id does not match the token"


# --- who did it: /status and the log --------------------------------------------------------


def test_status_and_the_log_name_the_token(portal: tuple[Cluster, Portal]) -> None:
    cl, signer = portal
    by_portal = api(cl, PORTAL).submit(SCRIPT, user_id=1500)
    by_jwt = api(cl, signer.jwt(4300, "ES256")).submit(SCRIPT, user_id=None)
    by_user = api(cl, TOKEN_B).submit(SCRIPT, user_id=None)
    admin_jwt = signer.jwt(4300, jo_admin=True)
    page = status_page(cl, headers={"Authorization": f"Bearer {admin_jwt}"})
    assert page.status_code == 200, page.text
    log = server_log(cl)
    jwt_name = f"jwt:{signer.keys['ES256'].fingerprint}"
    for job_id, name in ((by_portal, "haddock"), (by_jwt, jwt_name), (by_user, "user-22")):
        row = page.text.split(f'data-job-id="{job_id}"')[1].split("</tr>")[0]
        assert f'<td class="token">{name}</td>' in row, row
        assert f"job {job_id} queued for user " in log
        line = next(line for line in log.splitlines() if f"job {job_id} queued" in line)
        assert line.endswith(f"by token {name}"), line
    for secret in (PORTAL, TOKEN_B, admin_jwt):
        assert secret not in log


def server_log(cl: Cluster) -> str:
    assert cl.server is not None
    return cl.server.log()


def test_who_opens_status(portal: tuple[Cluster, Portal]) -> None:
    cl, signer = portal
    admin_jwt = signer.jwt(4300, jo_admin=True)
    for headers in (
        {"Authorization": f"Bearer {admin_jwt}"},
        {"Authorization": f"Bearer {signer.jwt(ADMIN)}"},  # ADMIN_USERS holds for JWTs too
    ):
        assert status_page(cl, headers=headers).status_code == 200
    # A browser: the jo_token cookie.
    assert status_page(cl, cookies={"jo_token": admin_jwt}).status_code == 200
    for credential in (signer.jwt(4300), signer.jwt(4300, jo_admin="yes"), PORTAL, TOKEN_A):
        forbidden = status_page(cl, headers={"Authorization": f"Bearer {credential}"})
        assert forbidden.status_code == 403
    expired = signer.keys["RS256"].sign({**claims(1, time.time()), "exp": 1, "jo_admin": True})
    refused = status_page(cl, cookies={"jo_token": expired})
    assert refused.status_code == 401
    assert "JWT has expired" in refused.text


def test_the_cookie_opens_reads_only(portal: tuple[Cluster, Portal]) -> None:
    cl, signer = portal
    token = signer.jwt(4400)
    job_id = api(cl, token).submit(SCRIPT, user_id=None)
    api(cl, token).wait_for(job_id, *FINAL)
    base = api(cl, None).base_url
    download = httpx.get(f"{base}/download/{job_id}", cookies={"jo_token": token})
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/zip"
    # A cross-site form would carry the cookie: it does not upload or terminate.
    upload = httpx.post(
        f"{base}/upload",
        files=[("file", ("run.sh", SCRIPT.encode()))],
        data={"service": "example", "user_id": "4400"},
        cookies={"jo_token": token},
    )
    assert upload.status_code == 401
    assert httpx.post(f"{base}/terminate/{job_id}", cookies={"jo_token": token}).status_code == 401


# --- the CLI ---------------------------------------------------------------------------------


def test_the_cli_takes_a_jwt(portal: tuple[Cluster, Portal], tmp_path: Path) -> None:
    cl, signer = portal
    assert cl.server is not None
    job = job_dir(tmp_path / "job", "echo via-jwt > out.txt\n")
    out = tmp_path / "r.zip"
    token = signer.jwt(4500, "EdDSA")
    args = ("submit", str(job), "--service", "example", "-o", str(out))
    done = cli(cl.server.url, *args, token=token)  # JO_TOKEN
    assert done.returncode == 0, done.stderr
    job_id = submitted_id(done.stdout)
    assert (out.parent / out.name).exists()
    mine = cli(cl.server.url, "status", str(job_id), "--token", token, "--json")
    assert mine.returncode == 0, mine.stderr
    assert json.loads(mine.stdout)["user_id"] == 4500
    other = cli(cl.server.url, "status", str(job_id), "--token", signer.jwt(4501))
    assert other.returncode == 4  # unknown job: someone else's
    expired = signer.keys["EdDSA"].sign({**claims(4500, time.time()), "exp": 1})
    refused = cli(cl.server.url, "status", str(job_id), token=expired)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "job-orchestrator: JWT has expired"
    # A portal token names its user with --user-id.
    portal_job = cli(cl.server.url, *args, "--user-id", "1200", "--token", PORTAL)
    assert portal_job.returncode == 0, portal_job.stderr


# --- quotas and fairness stay per user -------------------------------------------------------


def gated(user: int, ledger: Path, gate: Path) -> str:
    return (
        f'echo "{user}" >> {ledger}\n'
        f"for _ in $(seq 600); do [ -e {gate} ] && break; sleep 0.05; done\n"
    )


def test_a_portals_users_keep_their_own_quotas_and_turns(tmp_path: Path) -> None:
    ledger, gate = tmp_path / "starts.txt", tmp_path / "gate"
    signer = Portal(tmp_path)
    env = {
        **signer.env,
        "SERVICE_EXAMPLE_RUNS_PER_USER": "1",
        "SERVICE_EXAMPLE_MAX_RUNS": "4",
        "QUEUE_MAX_PER_USER": "2",
    }
    with cluster(tmp_path, server_env=env) as running:
        as_portal = api(running, PORTAL)
        first_user = [as_portal.submit(gated(1001, ledger, gate), user_id=1001) for _ in range(3)]
        other_user = as_portal.submit(gated(1002, ledger, gate), user_id=1002)
        as_portal.wait_for(first_user[0], "Running")
        as_portal.wait_for(other_user, "Running")
        # Slots were free when user 1002's job started: user 1001's others wait for its quota.
        assert [as_portal.status(job)["status"] for job in first_user[1:]] == ["Queued"] * 2
        # QUEUE_MAX_PER_USER counts user 1001's queue, not the portal's.
        crowded = as_portal.upload({"run.sh": SCRIPT}, user_id=1001)
        assert crowded.status_code == 429, crowded.text
        assert "Too many queued jobs for user 1001" in crowded.json()["message"]
        later = as_portal.submit(gated(1002, ledger, gate), user_id=1002)
        gate.touch()
        for job_id in [*first_user, other_user, later]:
            assert as_portal.wait_for(job_id, *FINAL, timeout_s=120)["status"] == "Completed"
    started_by = [int(line) for line in ledger.read_text().split()]
    assert sorted(started_by[:2]) == [1001, 1002]
    assert sorted(started_by[2:]) == [1001, 1001, 1002]
