"""Executor nodes in process: a real implementation of `NodeCalls` for the engine tier.

Each `FakeNode` keeps payloads the way our client does (ids never reused, one payload per
dispatch key, a long-poll held until the status differs from the one the server knows, a
kill that ends the payload Killed) but runs nothing: a test says how each payload ends
(`finish`), or the node ends them as its `script` says. Failures are injected per node:
`down` (nothing reaches it: UndeliveredError), `lose_submit_answers` (the payload is taken,
then the answer is lost: TransientClientError, as a connection reset after the client
accepted). Every call is counted, so a test can say what the engine asked and how often.
Like our client, a node has a change feed (`changes`, one sequence of status moves) unless
`feed` is False: then it answers as the original's client does, without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import zipfile
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from job_orchestrator.clock import SYSTEM_CLOCK, Clock
from job_orchestrator.config import NodeConfig
from job_orchestrator.errors import PayloadLostError, TransientClientError, UndeliveredError
from job_orchestrator.server.node_calls import (
    FeedEntry,
    FeedPage,
    LogAnswer,
    NodeReport,
    RetrieveResult,
    ZipAnswer,
)
from job_orchestrator.status import TERMINAL, Status


@dataclass
class FakePayload:
    id: int
    dispatch_key: str
    files: dict[str, bytes]
    status: Status = Status.RUNNING
    message: str = ""
    exit_code: int | None = None
    result: dict[str, bytes] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: When the node took it, on the node's clock.
    taken_at: float = 0.0
    #: Whether it ever ran (a payload killed while Submitted never did).
    started: bool = False


#: How a node ends a payload it has just taken: None leaves it Running until `finish`.
Script = Callable[["FakeNode", FakePayload], None]


def completes(node: FakeNode, payload: FakePayload) -> None:
    """Every payload completes at once, with `output.txt` holding its run.sh."""
    node.finish(payload.id, Status.COMPLETED, {"output.txt": payload.files.get("run.sh", b"")})


def waits(node: FakeNode, payload: FakePayload) -> None:
    """Every payload waits in Submitted, not started (its node is busy), until `start`."""
    payload.status, payload.started = Status.SUBMITTED, False


@dataclass
class FakeNode:
    url: str
    script: Script | None = None
    down: bool = False
    lose_submit_answers: int = 0
    #: When set, a submit takes its payload, then waits for the gate before it answers:
    #: a dispatch in flight that a test can race.
    submit_gate: asyncio.Event | None = None
    #: The SERVER_LEASE it advertises on its health check (None: it says none).
    lease_s: float | None = None
    clock: Clock = SYSTEM_CLOCK
    payloads: dict[int, FakePayload] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    #: (call, when) of every call, on the node's clock: a test reads the engine's pacing.
    history: list[tuple[str, float]] = field(default_factory=list)
    #: Whether it has a change feed (the original's client has none).
    feed: bool = True
    #: How long a kill takes to answer (loop time); its end is in `history` as "killed".
    kill_takes_s: float = 0.0
    #: Payload id -> the number of its latest status move, in number order.
    moved: dict[int, int] = field(default_factory=dict)
    seq: int = 0
    feed_changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _moved(self, payload: FakePayload) -> None:
        self.seq += 1
        self.moved.pop(payload.id, None)
        self.moved[payload.id] = self.seq
        payload.changed.set()
        self.feed_changed.set()

    def _reach(self, call: str) -> None:
        self.calls[call] += 1
        self.history.append((call, self.clock.now()))
        if self.down:
            raise UndeliveredError(f"{call} to {self.url}: connection refused")

    def _payload(self, payload_id: int) -> FakePayload:
        payload = self.payloads.get(payload_id)
        if payload is None:
            raise PayloadLostError(f"payload {payload_id} on {self.url}: client answered 404")
        return payload

    def take(self, files: dict[str, bytes], dispatch_key: str) -> FakePayload:
        for payload in self.payloads.values():
            if payload.dispatch_key == dispatch_key:
                return payload  # the client's answer to a dispatch it already holds
        payload = FakePayload(
            len(self.payloads) + 1, dispatch_key, files, taken_at=self.clock.now(), started=True
        )
        self.payloads[payload.id] = payload
        if self.script is not None:
            self.script(self, payload)
        self._moved(payload)
        return payload

    def finish(
        self,
        payload_id: int,
        status: Status,
        result: Mapping[str, bytes] | None = None,
        *,
        message: str = "",
        exit_code: int | None = 0,
    ) -> None:
        payload = self.payloads[payload_id]
        if payload.status in TERMINAL:
            return  # final is final, as on our client
        payload.status, payload.message, payload.exit_code = status, message, exit_code
        payload.result = dict(result or {})
        self._moved(payload)

    def start(self, payload_id: int) -> None:
        payload = self.payloads[payload_id]
        payload.status, payload.started = Status.RUNNING, True
        self._moved(payload)

    def times(self, call: str) -> list[float]:
        return [when for name, when in self.history if name == call]

    def running(self) -> list[FakePayload]:
        return [p for p in self.payloads.values() if p.status not in TERMINAL]


class FakeNodes:
    """The `NodeCalls` of the engine, answered by FakeNodes keyed by their upload URL."""

    def __init__(self, *nodes: FakeNode) -> None:
        self.nodes = {node.url: node for node in nodes}

    def __getitem__(self, url: str) -> FakeNode:
        return self.nodes[url]

    def _node(self, config: NodeConfig) -> FakeNode:
        return self.nodes[config.upload_url]

    async def submit(
        self,
        node: NodeConfig,
        files_dir: Path,
        *,
        dispatch_key: str,
        token: str | None,
        timeout_s: float | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> int:
        fake = self._node(node)
        fake._reach("submit")
        files = await asyncio.to_thread(_read_files, files_dir)
        payload = fake.take(files, dispatch_key)
        if fake.submit_gate is not None:
            await fake.submit_gate.wait()
        if fake.lose_submit_answers > 0:
            fake.lose_submit_answers -= 1
            raise TransientClientError(f"dispatch to {fake.url}: connection reset")
        return payload.id

    async def retrieve(
        self,
        node: NodeConfig,
        payload_id: int,
        zip_destination: Path,
        *,
        wait_s: float,
        known: Status,
        token: str | None,
        key: str | None,
        settle_s: float = 0.0,
    ) -> RetrieveResult:
        fake = self._node(node)
        fake._reach("retrieve")
        payload = fake._payload(payload_id)
        if wait_s > 0 and payload.status is known:
            payload.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(payload.changed.wait(), wait_s)
        if payload.status is Status.COMPLETED:
            await asyncio.to_thread(zip_destination.write_bytes, _zip(payload.result))
        return RetrieveResult(
            payload.status,
            payload.message,
            long_polled=wait_s > 0,
            exit_code=payload.exit_code if payload.status in TERMINAL else None,
        )

    async def fetch_partial(
        self,
        node: NodeConfig,
        payload_id: int,
        destination: Path,
        *,
        token: str | None,
        key: str | None,
    ) -> None:
        async with self.open_partial(node, payload_id, token=token, key=key) as answer:
            content = b"".join([chunk async for chunk in answer.chunks])
        await asyncio.to_thread(destination.write_bytes, content)

    @contextlib.asynccontextmanager
    async def open_partial(
        self, node: NodeConfig, payload_id: int, *, token: str | None, key: str | None
    ) -> AsyncIterator[ZipAnswer]:
        fake = self._node(node)
        fake._reach("retrieve_partial")
        payload = fake._payload(payload_id)
        yield ZipAnswer(_once(_zip({**payload.files, **payload.result})), None)

    @contextlib.asynccontextmanager
    async def open_log(
        self,
        node: NodeConfig,
        payload_id: int,
        *,
        offset: int,
        wait_s: float,
        token: str | None,
        key: str | None,
    ) -> AsyncIterator[LogAnswer]:
        fake = self._node(node)
        fake._reach("logs")
        payload = fake._payload(payload_id)
        yield LogAnswer(payload.status in TERMINAL, _once(b""))

    async def check(self, node: NodeConfig, *, token: str | None) -> NodeReport:
        fake = self._node(node)
        fake._reach("check")
        return NodeReport(max_concurrent=None, load_percent=0.0, server_lease_s=fake.lease_s)

    async def changes(
        self, node: NodeConfig, *, after: str | None, wait_s: float, token: str | None
    ) -> FeedPage | None:
        fake = self._node(node)
        fake._reach("changes")
        if not fake.feed:
            return None
        seq = int(after.removeprefix("fake.")) if after and after.startswith("fake.") else None
        if seq is None:
            return FeedPage(f"fake.{fake.seq}", True, tuple(map(_entry, fake.payloads.values())))
        if fake.seq == seq and wait_s > 0:
            fake.feed_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fake.feed_changed.wait(), wait_s)
        changed = [fake.payloads[i] for i, moved in fake.moved.items() if moved > seq]
        return FeedPage(f"fake.{fake.seq}", False, tuple(map(_entry, changed)))

    async def kill(
        self, node: NodeConfig, payload_id: int, *, token: str | None, key: str | None
    ) -> None:
        fake = self._node(node)
        fake._reach("kill")
        if fake.kill_takes_s:
            await asyncio.sleep(fake.kill_takes_s)
        fake.finish(fake._payload(payload_id).id, Status.KILLED, exit_code=None)
        fake.history.append(("killed", fake.clock.now()))

    async def close(self) -> None:
        return None


def _entry(payload: FakePayload) -> FeedEntry:
    return FeedEntry(payload.id, payload.status, payload.dispatch_key, age=0.0)


def _read_files(top: Path) -> dict[str, bytes]:
    """What a node receives: every regular file under `top`, by its relative path."""
    return {
        str(path.relative_to(top)): path.read_bytes()
        for path in sorted(top.rglob("*"))
        if path.is_file()
    }


def _zip(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in sorted(files.items()):
            archive.writestr(name, content)
    return buffer.getvalue()


async def _once(content: bytes) -> AsyncIterator[bytes]:
    yield content
