"""Completion callbacks with real server and client processes and a real HTTP receiver: the
signed POST of the final status, retries until a 2xx, redelivery after `kill -9`, the check
of CALLBACK_ALLOW at upload and again at delivery, and the 400s of refused URLs."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit import eventually
from testkit.harness import Cluster, cluster
from tests.callback_receiver import HOLD, CallbackReceiver, receiving

SECRET = f"callback-{secrets.token_hex(16)}"
LOOPBACK_ENV = {
    "CALLBACK_SECRET": SECRET,
    "CALLBACK_ALLOW": "127.0.0.0/8",
    "CALLBACK_TIMEOUT": "3",
}
REFUSED_BY_DEFAULT = "which CALLBACK_ALLOW does not allow (allowed: public addresses)"


def upload(cl: Cluster, script: str, callback_url: str | None) -> httpx.Response:
    data = {"user_id": "1", "service": "example"}
    if callback_url is not None:
        data["callback_url"] = callback_url
    return httpx.post(
        f"{cl.api.base_url}/upload",
        files=[("file", ("run.sh", script.encode()))],
        data=data,
        timeout=60,
    )


def submit(cl: Cluster, script: str, callback_url: str) -> int:
    response = upload(cl, script, callback_url)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    assert isinstance(job_id, int)
    return job_id


def refusal(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    body: dict[str, Any] = response.json()
    assert body["id"] == 0
    assert body["status"] == "Unknown"
    message = body["message"]
    assert isinstance(message, str)
    assert message.startswith("Invalid callback_url: "), message
    return message


def wait_for_log(cl: Cluster, text: str, timeout_s: float = 60.0) -> None:
    server = cl.server
    assert server is not None
    eventually(lambda: text in server.log(), f"{text!r} logged", timeout_s, detail=server.log)


def job_dirs(cl: Cluster) -> set[str]:
    data = cl.root / "server-data"
    return {entry.name for entry in data.iterdir()} if data.exists() else set()


@pytest.fixture(scope="module")
def loopback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A cluster whose callbacks may go to 127.0.0.0/8."""
    with cluster(tmp_path_factory.mktemp("callbacks"), server_env=LOOPBACK_ENV) as started:
        yield started


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    yield from receiving()


# ---- delivery ----------------------------------------------------------------------------------


def test_final_statuses_are_posted_signed(loopback: Cluster, receiver: CallbackReceiver) -> None:
    done = submit(loopback, "echo done > out.txt\n", f"{receiver.url}/hooks/done?portal=7")
    loopback.api.wait_for(done, "Completed")
    first = receiver.wait_for(1)[0]
    failed = submit(loopback, "exit 3\n", f"{receiver.url}/hooks/failed")
    loopback.api.wait_for(failed, "Failed")
    second = receiver.wait_for(2)[1]

    assert (first.method, first.path) == ("POST", "/hooks/done?portal=7")
    assert json.loads(first.body) == {"id": done, "status": "Completed", "message": ""}
    assert json.loads(second.body) == {
        "id": failed,
        "status": "Failed",
        "message": "run.sh exited with status 3",
    }
    for request in (first, second):
        assert request.signed_with(SECRET), request.headers
        assert not request.signed_with(SECRET + "x")
        assert request.headers["content-type"] == "application/json"
        assert request.headers["host"] == receiver.url.removeprefix("http://")
    # The body is what /download/{id} says of the job.
    assert json.loads(second.body) == loopback.api.status(failed)
    # The job's details and the listing show where its callback goes.
    details = httpx.get(f"{loopback.api.base_url}/jobs/{done}", timeout=30).json()
    assert details["callback_url"] == f"{receiver.url}/hooks/done?portal=7"
    listed = httpx.get(f"{loopback.api.base_url}/jobs", params={"limit": 500}, timeout=30).json()
    urls = {job["id"]: job["callback_url"] for job in listed["jobs"]}
    assert urls[failed] == f"{receiver.url}/hooks/failed"


def test_a_killed_queued_job_is_posted(loopback: Cluster, receiver: CallbackReceiver) -> None:
    gate = loopback.root / f"gate-{secrets.token_hex(4)}"
    running = submit(loopback, f"while [ ! -e '{gate}' ]; do sleep 0.05; done\n", receiver.url)
    loopback.api.wait_for(running, "Running")
    killed = httpx.post(f"{loopback.api.base_url}/terminate/{running}", timeout=30)
    assert killed.status_code == 200, killed.text
    (request,) = receiver.wait_for(1)
    body = json.loads(request.body)
    assert (body["id"], body["status"]) == (running, "Killed")
    assert request.signed_with(SECRET)


def test_a_callback_cut_short_by_kill_9_is_delivered_after_the_restart(tmp_path: Path) -> None:
    with (
        CallbackReceiver(HOLD) as receiver,
        cluster(tmp_path, server_env=LOOPBACK_ENV) as cl,
    ):
        assert cl.server is not None
        job_id = submit(cl, "echo done > out.txt\n", f"{receiver.url}/hook")
        (held,) = receiver.wait_for(1)
        # Killed while the receiver holds the request: no answer was ever seen.
        cl.server.stop(signal.SIGKILL)
        receiver.release()
        cl.server.start()
        # Made again once the dead server's lease (CALLBACK_TIMEOUT + 5 s) has run out.
        again = receiver.wait_for(2)[1]
        wait_for_log(cl, f"callback of job {job_id} delivered (attempt 2)")
    assert again.body == held.body
    assert json.loads(again.body) == {"id": job_id, "status": "Completed", "message": ""}
    assert again.signed_with(SECRET)


def test_a_callback_held_at_shutdown_is_sent_again_at_the_next_start(tmp_path: Path) -> None:
    with (
        CallbackReceiver(HOLD) as receiver,
        cluster(tmp_path, server_env=LOOPBACK_ENV) as cl,
    ):
        assert cl.server is not None
        job_id = submit(cl, "echo done > out.txt\n", f"{receiver.url}/hook")
        receiver.wait_for(1)
        assert cl.server.stop(signal.SIGTERM) == 0
        receiver.release()
        cl.server.start()
        again = receiver.wait_for(2)[1]
        wait_for_log(cl, f"callback of job {job_id} delivered (attempt 2)")
    assert again.signed_with(SECRET)


def test_the_address_is_checked_again_at_delivery(tmp_path: Path) -> None:
    """Accepted at upload, then refused when the server's CALLBACK_ALLOW no longer permits it
    (as for a name re-pointed at an internal address): nothing is sent, the attempt is
    retried, and it is delivered once the address is allowed again."""
    with CallbackReceiver() as receiver, cluster(tmp_path, server_env=LOOPBACK_ENV) as cl:
        assert cl.server is not None
        gate = tmp_path / "gate"
        job_id = submit(cl, f"while [ ! -e '{gate}' ]; do sleep 0.05; done\n", receiver.url)
        cl.api.wait_for(job_id, "Running")
        cl.server.stop()
        strict = {**cl.server.env}
        del strict["CALLBACK_ALLOW"]
        cl.server.env = strict
        cl.server.start()
        gate.touch()
        cl.api.wait_for(job_id, "Completed")
        wait_for_log(cl, f"callback of job {job_id} failed (attempt 1): not sent: host '127.0.0.1'")
        assert receiver.received == []
        cl.server.stop()
        cl.server.env = {**strict, **LOOPBACK_ENV}
        cl.server.start()
        (request,) = receiver.wait_for(1)
    assert json.loads(request.body)["id"] == job_id


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subject = ["-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"]
    subprocess.run(
        [*request, "-keyout", str(key), "-out", str(cert), *subject],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_is_verified_for_the_url_host_name(tmp_path: Path) -> None:
    """The connection goes to the checked address, yet TLS is for the name in the URL."""
    good, wrong = self_signed(tmp_path, "localhost"), self_signed(tmp_path, "other.example")
    trusted = tmp_path / "trusted.pem"
    trusted.write_bytes(good[0].read_bytes() + wrong[0].read_bytes())
    env = {**LOOPBACK_ENV, "CALLBACK_ALLOW": "127.0.0.0/8,::1", "SSL_CERT_FILE": str(trusted)}
    with (
        CallbackReceiver(tls=good) as receiver,
        CallbackReceiver(tls=wrong) as impostor,
        cluster(tmp_path, server_env=env) as cl,
    ):
        job_id = submit(cl, "exit 0\n", f"https://localhost:{receiver.port}/hook")
        (request,) = receiver.wait_for(1)
        assert request.headers["host"] == f"localhost:{receiver.port}"
        assert request.signed_with(SECRET, url=f"https://localhost:{receiver.port}/hook")
        assert json.loads(request.body)["id"] == job_id
        # A certificate for another name is refused: the attempt fails, nothing is sent.
        refused = submit(cl, "exit 0\n", f"https://localhost:{impostor.port}/hook")
        wait_for_log(cl, f"callback of job {refused} failed (attempt 1)")
        assert cl.server is not None
        assert "CERTIFICATE_VERIFY_FAILED" in cl.server.log()
        assert impostor.received == []


# ---- refused at upload ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://127.0.0.1/x", "only http and https URLs are accepted, got scheme 'ftp'"),
        ("file:///etc/passwd", "only http and https URLs are accepted, got scheme 'file'"),
        ("javascript:alert(1)", "only http and https URLs are accepted"),
        ("gopher://127.0.0.1:70/", "only http and https URLs are accepted"),
        ("127.0.0.1:8080/hook", "only http and https URLs are accepted"),
        ("//127.0.0.1/hook", "only http and https URLs are accepted, got scheme none"),
        ("http://", "no host"),
        ("http://user:secret@127.0.0.1/", "credentials in the URL are not accepted"),
        ("http://127.0.0.1:0/", "port 0 is out of range"),
        ("http://127.0.0.1:70000/", "port 70000 is out of range"),
        ("http://127.0.0.1/a b", "contains a space or a control character"),
        ("http://[::1/", "not a valid URL"),
        (f"http://127.0.0.1/{'a' * 2048}", "longer than 2048 characters"),
        (f"http://127.0.0.1/{'a' * 70_000}", "longer than 2048 characters"),  # oversized field
        ("http://host.invalid/", "host 'host.invalid' does not resolve"),
        ("http://10.0.0.1/", "resolves to 10.0.0.1, which CALLBACK_ALLOW does not allow"),
        ("http://169.254.169.254/latest", "resolves to 169.254.169.254"),
        ("http://[::1]:8080/", "resolves to ::1"),
        ("http://192.168.1.1/", "(allowed: 127.0.0.0/8)"),
    ],
)
def test_refused_callback_urls_are_answered_400(loopback: Cluster, url: str, reason: str) -> None:
    before = job_dirs(loopback)
    message = refusal(upload(loopback, "echo done > out.txt\n", url))
    assert reason in message
    # Nothing is left of the refused upload.
    assert job_dirs(loopback) == before


def test_an_empty_callback_url_is_none(loopback: Cluster) -> None:
    response = upload(loopback, "echo done > out.txt\n", "")
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    assert loopback.api.wait_for(job_id, "Completed")["status"] == "Completed"


@pytest.fixture(scope="module")
def default_policy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env: Mapping[str, str] = {"CALLBACK_SECRET": SECRET}
    with cluster(tmp_path_factory.mktemp("default"), server_env=env) as started:
        yield started


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        # A name's resolution is not shown (finding 12): only that it leads nowhere allowed.
        ("localhost", None),
        ("2130706433", None),  # 127.0.0.1 as one number: still resolved and checked
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("[::1]", "::1"),
        ("0.0.0.0", "0.0.0.0"),
        ("10.1.2.3", "10.1.2.3"),
        ("100.64.0.1", "100.64.0.1"),
        ("[fd00::1]", "fd00::1"),
    ],
)
def test_the_default_allows_only_public_addresses(
    default_policy: Cluster, receiver: CallbackReceiver, host: str, address: str | None
) -> None:
    port = receiver.url.rsplit(":", 1)[1]
    message = refusal(upload(default_policy, "exit 0\n", f"http://{host}:{port}/hook"))
    if address is None:
        assert "resolves to an address CALLBACK_ALLOW does not allow" in message
        assert "127.0.0.1" not in message
    else:
        assert f"resolves to {address}, {REFUSED_BY_DEFAULT}" in message


def test_a_client_of_the_orchestrator_is_never_a_callback_target(loopback: Cluster) -> None:
    """Issue 21, finding 7: with CALLBACK_ALLOW covering the clients' network (loopback
    here) and no client token, a callback to `http://client/kill/1` killed another user's
    job."""
    client_url = loopback.clients[0].url
    for url in (f"{client_url}/kill/1", client_url.replace("127.0.0.1", "localhost") + "/"):
        message = refusal(upload(loopback, "exit 0\n", url))
        assert "this orchestrator's clients, never a callback target" in message


def test_without_a_secret_callback_urls_are_refused(tmp_path: Path) -> None:
    with cluster(tmp_path, server_env={"CALLBACK_ALLOW": "127.0.0.0/8"}) as cl:
        message = refusal(upload(cl, "exit 0\n", "http://127.0.0.1:9/hook"))
        assert "callbacks are disabled on this server (CALLBACK_SECRET is not set)" in message
        response = upload(cl, "exit 0\n", None)
        assert response.status_code == 201, response.text
