"""The gateway on the wire: what it sends a client, and how it classifies what comes back.

The peer is a loopback HTTP/1.1 server scripted per test (asyncio streams, no HTTP library),
so the bytes the gateway sends are read as they arrive and any answer, broken ones included,
can be sent back. The error classes are what the engine decides on: UndeliveredError (nothing
reached the client: send it elsewhere), TransientClientError (retry), PermanentClientError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from job_orchestrator.config import NodeConfig
from job_orchestrator.errors import (
    ClientCallError,
    PartialTooLargeError,
    PayloadLostError,
    PermanentClientError,
    TransientClientError,
    UndeliveredError,
)
from job_orchestrator.server.gateway import NodeGateway, RetrieveResult
from job_orchestrator.status import Status
from testkit.harness import free_port


@dataclass(frozen=True)
class Request:
    line: str
    headers: dict[str, str]  # names in lower case
    body: bytes


Answer = Callable[[Request], Awaitable[bytes | None]]


@dataclass
class Peer:
    """Answers each request with `answer(request)`'s bytes; None closes the connection."""

    answer: Answer
    #: False: read only the request head, never its body (a client that stops reading).
    read_body: bool = True
    #: Close the connection after each answer (one cut short, say).
    close_after: bool = False
    requests: list[Request] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
                headers = {}
                for header in lines:
                    name, _, value = header.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if self.read_body else b""
                request = Request(line, headers, body)
                self.requests.append(request)
                reply = await self.answer(request)
                if reply is None:
                    return
                writer.write(reply)
                await writer.drain()
                if self.close_after:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # at teardown; a cancelled handler makes Python 3.11's streams log an error
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serving(peer: Peer) -> AsyncIterator[NodeConfig]:
    server = await asyncio.start_server(peer._serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield NodeConfig(f"{url}/submit", f"{url}/retrieve", f"{url}/kill")
    finally:
        server.close()
        for task in peer._tasks:
            task.cancel()
        await asyncio.gather(*peer._tasks, return_exceptions=True)


def reply(status: int, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} Whatever", f"Content-Length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def always(data: bytes | None) -> Answer:
    async def answer(request: Request) -> bytes | None:
        return data

    return answer


async def hang(request: Request) -> bytes | None:
    await asyncio.sleep(3600)
    return None


RUNNING = json.dumps({"id": 5, "status": "Running"}).encode()
JSON = {"Content_Type": "application/json"}


@pytest.fixture
async def gateway() -> AsyncIterator[NodeGateway]:
    made = NodeGateway(timeout_s=1.0)
    try:
        yield made
    finally:
        await made.close()


async def retrieve(
    gateway: NodeGateway, node: NodeConfig, tmp_path: Path, wait_s: float = 0
) -> RetrieveResult:
    return await gateway.retrieve(
        node, 5, tmp_path / "result.zip", wait_s=wait_s, known=Status.RUNNING, token=None, key=None
    )


async def test_dispatch_body_is_streamed_with_its_exact_length(
    gateway: NodeGateway, tmp_path: Path
) -> None:
    files = tmp_path / "files"
    (files / "sub").mkdir(parents=True)
    # name -> (its content, the part's name parameter as reqwest would write it)
    contents = {
        "run.sh": (b"echo hi\n", 'name="run.sh"'),
        # several of the body's 1 MiB reads
        "sub/big.bin": (os.urandom(3 * 1024 * 1024 + 7), "name*=utf-8''sub%2Fbig.bin"),
        'sub/q"uo\\te.txt': (b"quoted\n", "name*=utf-8''sub%2Fq%22uo%5Cte.txt"),
        "\u00e9t\u00e9.txt": (b"accents\n", "name*=utf-8''%C3%A9t%C3%A9.txt"),
    }
    for name, (content, _) in contents.items():
        (files / name).write_bytes(content)
    peer = Peer(always(reply(200, b'{"id": 7}', **JSON)))
    async with serving(peer) as node:
        payload_id = await gateway.submit(
            node, files, dispatch_key="key-1", token="secret", timeout_s=90
        )
    assert payload_id == 7
    (request,) = peer.requests
    assert request.line == "POST /submit HTTP/1.1"
    headers = request.headers
    assert "transfer-encoding" not in headers
    assert "expect" not in headers
    assert int(headers["content-length"]) == len(request.body)
    assert headers["idempotency-key"] == "key-1"
    assert headers["authorization"] == "Bearer secret"
    assert headers["accept-encoding"] == "identity"
    match = re.fullmatch(
        r"multipart/form-data; boundary=([0-9a-f]{16}(?:-[0-9a-f]{16}){3})", headers["content-type"]
    )
    assert match, headers["content-type"]
    boundary = match.group(1)
    expected = b""
    for name in sorted(contents, key=lambda name: files / name):
        content, name_param = contents[name]
        leaf = name.rsplit("/", 1)[-1].replace("\\", "\\\\").replace('"', '\\"')
        part = f'Content-Disposition: form-data; {name_param}; filename="{leaf}"'
        expected += f"--{boundary}\r\n{part}\r\n\r\n".encode() + content + b"\r\n"
    expected += f"--{boundary}--\r\n".encode()
    assert request.body == expected


async def test_long_poll_retrieve_stores_the_zip_and_reads_its_headers(
    gateway: NodeGateway, tmp_path: Path
) -> None:
    zipped = b"PK\x05\x06" + bytes(18)
    peer = Peer(
        always(
            reply(
                200,
                zipped,
                Content_Type="application/zip",
                X_Orchestrator_Message="left%20out%3A%20big.bin",
                X_Orchestrator_Exit_Code="3",
            )
        )
    )
    async with serving(peer) as node:
        result = await retrieve(gateway, node, tmp_path, wait_s=25)
    assert (result.status, result.message, result.exit_code) == (
        Status.COMPLETED,
        "left out: big.bin",
        3,
    )
    assert (tmp_path / "result.zip").read_bytes() == zipped
    assert os.listdir(tmp_path) == ["result.zip"]
    (request,) = peer.requests
    assert request.line == "GET /retrieve/5?wait=25&known=Running HTTP/1.1"
    assert re.fullmatch(r"[0-9a-f]{16} [0-9]+\.[0-9]{6}", request.headers["x-orchestrator-clock"])


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (reply(500), TransientClientError),
        (reply(408), TransientClientError),
        (reply(429), TransientClientError),
        (reply(400), PermanentClientError),
        (reply(404), PayloadLostError),
        (reply(302, Location="http://127.0.0.1:1/elsewhere"), PermanentClientError),
        (reply(200, b"not json", **JSON), PermanentClientError),
        (reply(200, b'{"status": "Sleeping"}', **JSON), PermanentClientError),
        (b"SMTP ready\r\n\r\n", TransientClientError),  # not HTTP
        (reply(200, RUNNING, **JSON)[:-5], TransientClientError),  # cut short
        (None, TransientClientError),  # closed without an answer, after the request
    ],
)
async def test_answers_are_classified(
    gateway: NodeGateway, tmp_path: Path, answer: bytes | None, error: type[ClientCallError]
) -> None:
    peer = Peer(always(answer), close_after=True)
    async with serving(peer) as node:
        with pytest.raises(ClientCallError) as raised:
            await retrieve(gateway, node, tmp_path)
    assert type(raised.value) is error, raised.value
    # aiohttp sends a GET once more if the connection closed before any answer (RFC 9112
    # 9.3.1.1: a kept-alive connection the client was closing); never after one, never a POST.
    expected = 2 if answer is None else 1
    assert len(peer.requests) == expected, "a redirect was followed or a request repeated"


async def test_a_post_closed_without_an_answer_is_not_sent_again(
    gateway: NodeGateway, tmp_path: Path
) -> None:
    (tmp_path / "run.sh").write_text("true\n")
    peer = Peer(always(None))
    async with serving(peer) as node:
        with pytest.raises(TransientClientError) as raised:
            await gateway.submit(node, tmp_path, dispatch_key="k", token=None)
        assert not isinstance(raised.value, UndeliveredError)
        with pytest.raises(TransientClientError):
            await gateway.kill(node, 5, token=None, key=None)
    assert [request.line.split()[1] for request in peer.requests] == ["/submit", "/kill/5"]


async def test_nothing_listening_is_undelivered(gateway: NodeGateway, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    node = NodeConfig(f"{url}/submit", f"{url}/retrieve", f"{url}/kill")
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "run.sh").write_text("true\n")
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: gateway.submit(node, tmp_path / "files", dispatch_key="k", token=None),
        lambda: retrieve(gateway, node, tmp_path),
        lambda: gateway.kill(node, 5, token=None, key=None),
        lambda: gateway.check(node, token=None),
        lambda: gateway.fetch_partial(node, 5, tmp_path / "partial.zip", token=None, key=None),
    ]
    for call in calls:
        with pytest.raises(UndeliveredError):
            await call()
    with pytest.raises(UndeliveredError):
        async with gateway.open_log(node, 5, offset=0, wait_s=0, token=None, key=None):
            pass


async def test_a_client_that_does_not_answer_times_out_after_the_wait(
    gateway: NodeGateway, tmp_path: Path
) -> None:
    async with serving(Peer(hang)) as node:
        for wait_s in (0.0, 1.0):
            with pytest.raises(TransientClientError) as raised:
                await retrieve(gateway, node, tmp_path, wait_s=wait_s)
            # The request was sent: not UndeliveredError, which would send the job elsewhere.
            assert not isinstance(raised.value, UndeliveredError)
            # The wait is added to the read timeout, never cut from it; there is no total
            # (a big ZIP may take long). Read from the timeout itself, not from a clock.
            timeout = gateway.timeout_for(wait_s)
            assert timeout.sock_read == 1.0 + wait_s
            assert timeout.total is None


async def test_a_client_that_stops_reading_the_dispatch_body_times_out(
    gateway: NodeGateway, tmp_path: Path
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    with (files / "big.bin").open("wb") as sink:
        sink.truncate(256 * 1024 * 1024)  # far more than the socket buffers hold
    async with serving(Peer(hang, read_body=False)) as node:
        with pytest.raises(TransientClientError) as raised:
            await gateway.submit(node, files, dispatch_key="k", token=None)
    # It ends (pytest's timeout bounds it): the stalled body times out like a read.
    assert not isinstance(raised.value, UndeliveredError)


async def test_partial_answers(gateway: NodeGateway, tmp_path: Path) -> None:
    destination = tmp_path / "partial.zip"
    too_large = reply(413, b"{}", X_Orchestrator_Message="files%20exceed%2010%20MB")
    async with serving(Peer(always(too_large))) as node:
        with pytest.raises(PartialTooLargeError, match=r"^files exceed 10 MB$"):
            await gateway.fetch_partial(node, 5, destination, token=None, key=None)
    not_zip = reply(200, RUNNING, **JSON)
    async with serving(Peer(always(not_zip))) as node:
        with pytest.raises(PermanentClientError, match="did not send a ZIP"):
            await gateway.fetch_partial(node, 5, destination, token=None, key=None)
    zipped = os.urandom(2 * 1024 * 1024)
    whole = reply(200, zipped, Content_Type="application/zip", X_Orchestrator_Message="a%20b")
    async with (
        serving(Peer(always(whole))) as node,
        gateway.open_partial(node, 5, token=None, key=None) as answer,
    ):
        assert answer.message_header == "a%20b"  # relayed as sent
        assert b"".join([chunk async for chunk in answer.chunks]) == zipped
    # Cut short: classified while it streams, and no file (whole or partial) is left.
    peer = Peer(always(whole[: len(whole) - 1000]), close_after=True)
    async with serving(peer) as node:
        with pytest.raises(TransientClientError):
            await gateway.fetch_partial(node, 5, destination, token=None, key=None)
    assert os.listdir(tmp_path) == []


async def test_log_kill_and_check(gateway: NodeGateway) -> None:
    async def client(request: Request) -> bytes | None:
        path = request.line.split()[1]
        if path.startswith("/logs/5?"):
            return reply(200, b"line 1\nline 2\n", X_Orchestrator_Status="Completed")
        if path == "/kill/5":
            return reply(200)
        if path == "/kill/6":
            return reply(404)
        if path == "/health":
            return reply(200, b"ok", X_Orchestrator_Max_Concurrent="4")
        if path == "/load":
            return reply(200, b"42.5", **JSON)
        return reply(500)

    peer = Peer(client)
    async with serving(peer) as node:
        async with gateway.open_log(node, 5, offset=10, wait_s=25, token=None, key=None) as answer:
            assert b"".join([chunk async for chunk in answer.chunks]) == b"line 1\nline 2\n"
        assert answer.final
        await gateway.kill(node, 5, token=None, key=None)
        with pytest.raises(PayloadLostError):
            await gateway.kill(node, 6, token=None, key=None)
        report = await gateway.check(node, token=None)
    assert (report.max_concurrent, report.load_percent) == (4, 42.5)
    logs, kill = peer.requests[0], peer.requests[1]
    assert logs.line == "GET /logs/5?offset=10&wait=25 HTTP/1.1"
    # An empty POST, as httpx sent it: no body, no Content-Type.
    assert kill.line == "POST /kill/5 HTTP/1.1"
    assert kill.headers.get("content-length") == "0"
    assert "content-type" not in kill.headers
    assert kill.body == b""
