"""What the engine asks of its clients (executor nodes), and what they answer.

`NodeCalls` is the seam between the engine (dispatcher, collector, fleet, logs) and the
nodes: `gateway.NodeGateway` implements it over HTTP with its errors classified (see there:
TransientClientError, UndeliveredError, PermanentClientError, PayloadLostError, ...); the
engine tier of the tests implements it in process (tests/engine/fake_nodes.py). The answer
types are plain data, never a library's response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from job_orchestrator.config import NodeConfig
from job_orchestrator.status import Status


@dataclass(frozen=True, slots=True)
class LogAnswer:
    """A client's /logs answer: its body, and whether that body ends the log."""

    #: The payload was final before the client read the log: the body is all the rest.
    final: bool
    chunks: AsyncIterator[bytes]


@dataclass(frozen=True, slots=True)
class ZipAnswer:
    """A client's ZIP answer as it streams in."""

    chunks: AsyncIterator[bytes]
    #: X-Orchestrator-Message as the client sent it (still percent-encoded), if it sent one.
    message_header: str | None


@dataclass(frozen=True, slots=True)
class NodeReport:
    max_concurrent: int | None
    load_percent: float | None
    #: /load (which needs the token, unlike our client's /health) answered 401.
    token_refused: bool = False
    #: The client's SERVER_LEASE, as its /health advertises it (None: not said).
    server_lease_s: float | None = None
    #: The warnings the client printed at start, as its /health advertises them.
    warnings: tuple[str, ...] = ()
    #: Why our client takes no new payload now (its /health header), e.g. "disk_full".
    refusing: str | None = None


@dataclass(frozen=True, slots=True)
class RetrieveResult:
    status: Status
    message: str
    long_polled: bool
    #: run.sh's exit status, from our client's header (the original's client sends none).
    exit_code: int | None = None
    #: When run.sh started, on this server's clock (our client's age header; else None).
    started_at: float | None = None
    #: The size of the payload's whole log (our client's header on a ZIP; else None).
    log_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """One payload as a client's change feed tells it (client/changes.py)."""

    id: int
    status: Status
    #: Its dispatch key (None: dispatched without one, or cleaned).
    key: str | None
    #: Seconds it has had this status, on the client's clock (0 once final).
    age: float
    #: Seconds since run.sh started (None: not started).
    started_age: float | None = None


@dataclass(frozen=True, slots=True)
class FeedPage:
    """A client's answer to /changes: what changed, and the cursor to ask after next."""

    cursor: str
    #: The entries are every payload the client holds (it did not know our cursor).
    snapshot: bool
    entries: tuple[FeedEntry, ...]


class NodeCalls(Protocol):
    """The calls the engine makes to a node; errors are those of `job_orchestrator.errors`."""

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
        """Hand over every regular file under `files_dir` (and `fields`); the payload id.
        A node that already holds `dispatch_key` answers that payload's id again."""
        ...

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
        """A payload's status, held up to `wait_s` while it is `known`; a Completed one's
        result is written to `zip_destination`."""
        ...

    async def fetch_partial(
        self,
        node: NodeConfig,
        payload_id: int,
        destination: Path,
        *,
        token: str | None,
        key: str | None,
    ) -> None: ...

    def open_partial(
        self, node: NodeConfig, payload_id: int, *, token: str | None, key: str | None
    ) -> AbstractAsyncContextManager[ZipAnswer]: ...

    def open_log(
        self,
        node: NodeConfig,
        payload_id: int,
        *,
        offset: int,
        wait_s: float,
        token: str | None,
        key: str | None,
    ) -> AbstractAsyncContextManager[LogAnswer]: ...

    async def check(self, node: NodeConfig, *, token: str | None) -> NodeReport: ...

    async def changes(
        self, node: NodeConfig, *, after: str | None, wait_s: float, token: str | None
    ) -> FeedPage | None:
        """The payloads that changed on the node after the cursor `after`, held up to
        `wait_s` while none did; None if the node has no change feed (the original's)."""
        ...

    async def kill(
        self, node: NodeConfig, payload_id: int, *, token: str | None, key: str | None
    ) -> None: ...

    async def close(self) -> None: ...
