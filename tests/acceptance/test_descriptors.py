"""File descriptors (issue 21, finding 4): caps on held requests, the raised limit, 503.

Real server and client processes; the server is started with a low RLIMIT_NOFILE (soft and
hard) where the test needs one to run out. Held requests are raw sockets, so the test opens
as many as it likes and sees exactly what the server answers, or that it answers nothing.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from testkit.harness import Cluster, cluster

#: A held request with nothing to say yet answers its headers at once (a follow) or not at
#: all (a wait): how long to give it before taking it for held.
_ANSWER_S = 3.0


@dataclass
class Held:
    sock: socket.socket
    #: The answer's status, None while it says nothing (a wait held), -1 if it was closed.
    status: int | None
    headers: dict[str, str]
    body: bytes


def _open(port: int, path: str, *, answer_s: float = _ANSWER_S) -> Held:
    """GET `path` on a connection of its own; read what comes back within `answer_s`."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    sock.settimeout(answer_s)
    received = b""
    try:
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                return Held(sock, -1, {}, b"")
            received += chunk
    except TimeoutError:
        return Held(sock, None, {}, b"")
    except ConnectionResetError:
        return Held(sock, -1, {}, b"")
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(headers.get("content-length", "0"))
    with contextlib.suppress(TimeoutError):
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return Held(sock, int(lines[0].split()[1]), headers, body)


@contextlib.contextmanager
def _closing(held: list[Held]) -> Iterator[list[Held]]:
    try:
        yield held
    finally:
        for each in held:
            each.sock.close()


def _running_job(running: Cluster, user_id: int) -> int:
    job_id = running.api.submit("echo started; sleep 300\n", user_id=user_id)
    running.api.wait_for(job_id, "Running")
    return job_id


def _soft_limit(pid: int) -> int:
    limits = Path(f"/proc/{pid}/limits").read_text()
    match = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.MULTILINE)
    assert match, limits
    return int(match[1])


def test_server_and_client_raise_their_soft_limit_to_the_hard_limit(tmp_path: Path) -> None:
    running = Cluster(tmp_path)
    try:
        client = running.add_client(start=False)
        client.open_files = (256, 4096)
        client.start()
        server = running.start_server(start=False)
        server.open_files = (256, 4096)
        server.start()
        for node in (server, client):
            assert node.process is not None
            assert _soft_limit(node.process.pid) == 4096
            assert "open files limit (RLIMIT_NOFILE): 4096 (was 256" in node.log()
    finally:
        running.shutdown()


def test_one_users_follows_beyond_the_cap_are_refused_and_others_still_work(
    tmp_path: Path,
) -> None:
    """Finding 4 with the default caps, on a server held to 256 descriptors.

    Before the caps, 150 follows (two descriptors each while the job runs: the caller's and
    the relay's to the client) ran the server out of descriptors.
    """
    running = Cluster(tmp_path)
    try:
        running.add_client()
        server = running.start_server(start=False)
        server.open_files = (256, 256)
        server.start()
        job_id = _running_job(running, user_id=1)
        with _closing([]) as follows:
            for _ in range(150):
                follows.append(_open(server.port, f"/jobs/{job_id}/logs?follow=1"))
            statuses = [each.status for each in follows]
            assert statuses.count(200) == 8, statuses  # LOG_FOLLOW_MAX_PER_USER's default
            refused = [each for each in follows if each.status == 429]
            assert len(refused) == 150 - 8, statuses
            assert refused[0].headers["retry-after"].isdigit()
            body = json.loads(refused[0].body)
            assert body["id"] == job_id
            assert body["status"] == "Running"
            assert "LOG_FOLLOW_MAX_PER_USER" in body["message"]
            # Waits have a cap of their own: 16 for one user by default.
            with _closing([]) as waits:
                for _ in range(20):
                    waits.append(_open(server.port, f"/download/{job_id}?wait=60", answer_s=1))
                assert [each.status for each in waits].count(None) == 16
                assert [each.status for each in waits].count(429) == 4
                # Another user uploads, runs and follows a job meanwhile.
                other = running.api.submit("echo other user\n", user_id=2)
                assert running.api.wait_for(other, "Completed")["status"] == "Completed"
                assert running.api.download_zip(other) is not None
                with _closing([_open(server.port, f"/jobs/{other}/logs?follow=1")]) as mine:
                    assert mine[0].status == 200
        assert "is down" not in server.log()
        # Closed by the caller: the places are free again.
        deadline = time.monotonic() + 30
        while True:
            with _closing([_open(server.port, f"/jobs/{job_id}/logs?follow=1")]) as again:
                if again[0].status == 200:
                    break
            assert time.monotonic() < deadline, "the follows' places were never released"
            time.sleep(0.2)
    finally:
        running.shutdown()


def test_the_total_caps_and_a_disconnect_releases_a_place(tmp_path: Path) -> None:
    env = {"LOG_FOLLOW_MAX_TOTAL": "3", "WAIT_MAX_TOTAL": "2", "WAIT_MAX_PER_USER": "1"}
    with cluster(tmp_path, server_env=env) as running:
        assert running.server is not None
        port = running.server.port
        first, second = _running_job(running, user_id=1), _running_job(running, user_id=2)
        with _closing([]) as held:
            held += [_open(port, f"/jobs/{first}/logs?follow=1") for _ in range(2)]
            held.append(_open(port, f"/jobs/{second}/logs?follow=1"))
            assert [each.status for each in held] == [200, 200, 200]
            over = _open(port, f"/jobs/{second}/logs?follow=1")
            held.append(over)
            assert over.status == 429
            assert "LOG_FOLLOW_MAX_TOTAL" in json.loads(over.body)["message"]
            waits = [_open(port, f"/download/{first}?wait=60", answer_s=1) for _ in range(2)]
            held += waits
            assert [each.status for each in waits] == [None, 429]  # WAIT_MAX_PER_USER=1
            held.append(_open(port, f"/download/{second}?wait=60", answer_s=1))
            assert held[-1].status is None
            third = _open(port, f"/download/{second}?wait=60", answer_s=1)
            held.append(third)
            assert third.status == 429
            # One follow's caller goes away: its place comes back.
            held[0].sock.close()
            deadline = time.monotonic() + 30
            while (again := _open(port, f"/jobs/{second}/logs?follow=1")).status != 200:
                again.sock.close()
                assert time.monotonic() < deadline, "a disconnected follow kept its place"
                time.sleep(0.2)
            held.append(again)


def _start_upload(port: int, user_id: int) -> tuple[socket.socket, bytes]:
    """An upload whose fields are sent and whose file is not: the server has begun it."""
    boundary = "fdcapsboundary"
    fields = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in (("user_id", str(user_id)), ("service", "example"))
    ).encode()
    rest = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="run.sh"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\necho late\n\r\n--{boundary}--\r\n"
    ).encode()
    head = (
        f"POST /upload HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(fields) + len(rest)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head + fields)
    return sock, rest


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], str]:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, "the upload's connection closed without an answer"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    while len(body) < int(headers.get("content-length", "0")):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body.decode(errors="replace")


def _fill(port: int, job_id: int, follows: list[Held]) -> None:
    """Open follows until the server takes no more connections (three refused in a row)."""
    refused_in_a_row = 0
    while refused_in_a_row < 3:
        follow = _open(port, f"/jobs/{job_id}/logs?follow=1", answer_s=2)
        follows.append(follow)
        refused_in_a_row = refused_in_a_row + 1 if follow.status != 200 else 0
        assert len(follows) < 300, "the server never ran out"


def test_running_out_of_descriptors_answers_503_and_leaves_the_client_up(
    tmp_path: Path,
) -> None:
    """No caps, 128 descriptors: follows fill them; uploads then get 503, never 500.

    Health checks meet the shortage too (NODE_CHECK_INTERVAL above the pool's 4 s keep-alive,
    so each needs a new connection): the client must not be marked down for it.
    """
    env = {
        "LOG_FOLLOW_MAX_PER_USER": "0",
        "LOG_FOLLOW_MAX_TOTAL": "0",
        "NODE_CHECK_INTERVAL": "4.5",
        "LONG_POLL": "60",
    }
    running = Cluster(tmp_path)
    try:
        running.add_client()
        server = running.start_server(env, start=False)
        server.open_files = (128, 128)
        server.start()
        job_id = _running_job(running, user_id=1)
        uploads = [_start_upload(server.port, user_id=2) for _ in range(3)]
        time.sleep(1)  # their staging directories and locks exist
        with _closing([]) as follows:
            _fill(server.port, job_id, follows)
            answers = []
            for sock, rest in uploads:
                sock.sendall(rest)
                answers.append(_answer(sock))
                sock.close()
            # The first refused upload frees its descriptors, so the next may get through.
            statuses = [status for status, _, _ in answers]
            assert 500 not in statuses, answers
            assert 503 in statuses, answers
            for status, headers, body in answers:
                if status == 503:
                    assert headers["retry-after"].isdigit()
                    assert json.loads(body)["message"].startswith("The server has no file")
            # The descriptors stay taken (taken again whenever one is freed) until a health
            # check has met the shortage and for two checks' time after it. A check can find
            # the one descriptor a refused follow freed, so when it first meets the shortage
            # varies: 10 s were not always enough on a loaded CI machine.
            met_at = None
            give_up_at = time.monotonic() + 60
            while met_at is None or time.monotonic() < met_at + 10:
                _fill(server.port, job_id, follows)
                time.sleep(0.5)
                if met_at is None and "health check of" in server.log():
                    met_at = time.monotonic()
                assert time.monotonic() < give_up_at, "no health check met the shortage"
        log = server.log()
        assert "no file descriptor left" in log
        assert "is down" not in log
        # Once the follows are gone, everything works again.
        later = running.api.submit("echo after\n", user_id=2)
        assert running.api.wait_for(later, "Completed")["status"] == "Completed"
        response = httpx.get(f"{server.url}/jobs/{job_id}", timeout=10)
        assert response.json()["status"] == "Running"
    finally:
        running.shutdown()
