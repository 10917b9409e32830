"""HTTP calls from the server to its clients (executor nodes), with errors classified.

Every call has a timeout. Connection failures, timeouts and 5xx answers raise
TransientClientError (worth retrying); of those, failures before a connection existed
(refused, DNS, connect timeout) raise UndeliveredError, since the client cannot have seen the
request. 4xx answers and unreadable replies raise
PermanentClientError, and a 404 for a payload we handed over raises PayloadLostError, as does
our client's 409 (the payload of that id holds another dispatch key: another job's); the
answers are read, and the failures classified, in node_answers.py.
Requests carry only what the original client understands plus headers it ignores
(`Idempotency-Key`, `X-Orchestrator-Dispatch-Key`), so a Rust client can be driven unchanged.

The transport (one aiohttp session, timeouts, failures classified) is node_transport.py.
Callers get our own answer types (LogAnswer, ZipAnswer), never a library's response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from urllib.parse import unquote

import aiohttp

from job_orchestrator._filestream import CHUNK_BYTES
from job_orchestrator.config import NodeConfig
from job_orchestrator.errors import (
    LogOffsetError,
    PartialTooLargeError,
    PermanentClientError,
    TransientClientError,
)
from job_orchestrator.server.metrics import observed_call
from job_orchestrator.server.node_answers import (
    exit_code_of,
    feed_page,
    is_zip,
    payload_json,
    raise_for_status,
    range_size,
    seconds_header,
    started_at_of,
    stream_to_file,
)
from job_orchestrator.server.node_calls import (
    FeedPage,
    LogAnswer,
    NodeReport,
    RetrieveResult,
    ZipAnswer,
)
from job_orchestrator.server.node_transport import NodeTransport
from job_orchestrator.server.node_wire import (
    MultipartBody,
    join_url,
    node_base_url,
    node_logs_url,
    paced,
    regular_files,
)
from job_orchestrator.status import Status
from job_orchestrator.wire import (
    CAPACITY_HEADER,
    IDEMPOTENCY_HEADER,
    LEASE_HEADER,
    LOG_BYTES_HEADER,
    LOG_STATUS_HEADER,
    LONG_POLL_HEADER,
    MESSAGE_HEADER,
    REFUSING_HEADER,
    TIMEOUT_HEADER,
    WARNINGS_HEADER,
)


class NodeGateway(NodeTransport):
    """The NodeCalls of the server over HTTP (node_transport.py: the session beneath)."""

    @observed_call("submit")
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
        """POST every regular file under files_dir as a multipart part, then `fields` as
        text parts (ours; the original's client ignores them); return the payload id."""
        what = f"dispatch to {node.upload_url}"
        files = await asyncio.to_thread(regular_files, files_dir)
        body = MultipartBody(files, fields)
        async with (
            self._call(what),
            asyncio.timeout(None) as stall,
            self._request(
                "POST",
                node.upload_url,
                data=paced(body.stream(), stall, self._timeout_s),
                headers={
                    "Content-Type": body.content_type,
                    # Given, so aiohttp sends the body with this length and not chunked.
                    "Content-Length": str(body.length),
                    IDEMPOTENCY_HEADER: dispatch_key,
                    **({TIMEOUT_HEADER: f"{timeout_s:g}"} if timeout_s else {}),
                    **self._headers(token),
                },
            ) as response,
        ):
            reply = await response.read()
        if response.status == 404:
            raise PermanentClientError(f"{what}: client answered 404")
        raise_for_status(response, what)
        payload_id = payload_json(reply, what).get("id")
        if not isinstance(payload_id, int) or isinstance(payload_id, bool) or payload_id <= 0:
            raise PermanentClientError(f"{what}: client reply has no valid payload id")
        return payload_id

    @observed_call("retrieve")
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
        """Ask for a payload; a Completed one is streamed into zip_destination (atomically).

        `wait`/`known` ask our client to hold the request until the status differs from
        `known`, and `settle` until that status has held so long; the original client
        ignores them and answers at once.
        """
        what = f"retrieve {payload_id} from {node.download_url}"
        params = None
        if wait_s > 0:
            params = {"wait": f"{wait_s:g}", "known": known.wire}
            if settle_s > 0:
                params["settle"] = f"{settle_s:g}"
        async with (
            self._call(what),
            self._request(
                "GET",
                join_url(node.download_url, payload_id),
                wait_s=wait_s,
                params=params,
                headers={**self._stamp(), **self._headers(token, key)},
            ) as response,
        ):
            raise_for_status(response, what)
            # Dated on arrival of the headers, before the body streams in.
            started_at = started_at_of(response)
            if is_zip(response):
                await stream_to_file(response.content.iter_chunked(CHUNK_BYTES), zip_destination)
                # A Completed result may still say what was left out of it.
                message = unquote(response.headers.get(MESSAGE_HEADER, ""))
                log_bytes = response.headers.get(LOG_BYTES_HEADER, "")
                return RetrieveResult(
                    Status.COMPLETED,
                    message,
                    long_polled=False,
                    exit_code=exit_code_of(response),
                    started_at=started_at,
                    log_bytes=int(log_bytes) if log_bytes.isdigit() else None,
                )
            body = await response.read()
        payload = payload_json(body, what)
        try:
            status = Status.from_wire(str(payload.get("status")))
        except ValueError:
            raise PermanentClientError(
                f"{what}: unknown status {payload.get('status')!r}"
            ) from None
        return RetrieveResult(
            status=status,
            message=unquote(response.headers.get(MESSAGE_HEADER, "")),
            long_polled=response.headers.get(LONG_POLL_HEADER) == "1",
            exit_code=exit_code_of(response),
            started_at=started_at,
        )

    @observed_call("retrieve_partial")
    async def fetch_partial(
        self,
        node: NodeConfig,
        payload_id: int,
        destination: Path,
        *,
        token: str | None,
        key: str | None,
    ) -> None:
        """Store the client's partial ZIP at destination (atomically)."""
        async with self.open_partial(node, payload_id, token=token, key=key) as answer:
            await stream_to_file(answer.chunks, destination)

    @contextlib.asynccontextmanager
    async def open_partial(
        self, node: NodeConfig, payload_id: int, *, token: str | None, key: str | None
    ) -> AsyncIterator[ZipAnswer]:
        """The client's partial ZIP, streamed (for proxying); errors while it streams too."""
        what = f"partial retrieve {payload_id} from {node.partial_url}"
        async with (
            self._call(what),
            self._request(
                "GET", join_url(node.partial_url, payload_id), headers=self._headers(token, key)
            ) as response,
        ):
            if response.status == 413:
                reason = unquote(response.headers.get(MESSAGE_HEADER, "")) or "files too large"
                raise PartialTooLargeError(reason)
            raise_for_status(response, what)
            if not is_zip(response):
                raise PermanentClientError(f"{what}: client did not send a ZIP")
            yield ZipAnswer(
                response.content.iter_chunked(CHUNK_BYTES), response.headers.get(MESSAGE_HEADER)
            )

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
        """Our client's log of a payload from `offset`, streamed for up to `wait_s`.

        The original client has no /logs route: it answers 404, raised as PayloadLostError
        like an unknown payload. Errors while the body streams are classified the same way.
        An offset past the end of the log (our client's 416) raises LogOffsetError.
        """
        url = node_logs_url(node)
        what = f"log of {payload_id} from {url}"
        params = {"offset": str(offset), **({"wait": f"{wait_s:g}"} if wait_s > 0 else {})}
        async with (
            self._call(what),
            self._request(
                "GET",
                join_url(url, payload_id),
                wait_s=wait_s,
                params=params,
                headers=self._headers(token, key),
            ) as response,
        ):
            if response.status == 416:
                raise LogOffsetError(range_size(response))
            raise_for_status(response, what)
            try:
                status = Status.from_wire(response.headers.get(LOG_STATUS_HEADER, ""))
            except ValueError:
                raise PermanentClientError(f"{what}: the answer is not a log") from None
            # Each piece as it arrives: a follower sees a line as soon as the client sends it.
            yield LogAnswer(status.is_terminal(), response.content.iter_any())

    @observed_call("check")
    async def check(self, node: NodeConfig, *, token: str | None) -> NodeReport:
        """The node's /health (with its declared capacity) and /load; raises if it is down."""
        base = node_base_url(node)
        async with (
            self._call(f"health check of {base}"),
            self._request("GET", f"{base}/health", headers=self._headers(token)) as health,
        ):
            await health.read()
        if health.status >= 500:
            raise TransientClientError(f"health check of {base}: answered {health.status}")
        if health.status != 200:
            # It answers HTTP, so it is up; its /health just is not where we derived it
            # (a URL behind a path prefix, say). Nothing more to learn from it, but a 401.
            return NodeReport(None, None, token_refused=health.status == 401)
        capacity = health.headers.get(CAPACITY_HEADER, "")
        load: float | None = None
        refused = False
        # Our client's /health needs no token, its /load does: a cheap probe of the token,
        # so a mismatch shows before a job is sent.
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, TypeError):
            async with self._request("GET", f"{base}/load", headers=self._headers(token)) as answer:
                refused = answer.status == 401
                if answer.status == 200:
                    load = float(json.loads(await answer.read()))
        return NodeReport(
            max_concurrent=int(capacity) if capacity.isdigit() and int(capacity) > 0 else None,
            load_percent=load,
            token_refused=refused,
            server_lease_s=seconds_header(health.headers.get(LEASE_HEADER, "")),
            warnings=tuple(
                unquote(part) for part in health.headers.get(WARNINGS_HEADER, "").split(",") if part
            ),
            refusing=health.headers.get(REFUSING_HEADER) or None,
        )

    @observed_call("changes")
    async def changes(
        self, node: NodeConfig, *, after: str | None, wait_s: float, token: str | None
    ) -> FeedPage | None:
        """The node's change feed after the cursor `after` (client/changes.py); None if it
        has none (the original's client answers 404). Stamped like /retrieve: it renews the
        leases of the payloads this server holds there."""
        base = node_base_url(node)
        what = f"changes of {base}"
        params = {"wait": f"{wait_s:g}", **({"after": after} if after else {})}
        async with (
            self._call(what),
            self._request(
                "GET",
                f"{base}/changes",
                wait_s=wait_s,
                params=params,
                headers={**self._stamp(), **self._headers(token)},
            ) as response,
        ):
            body = await response.read()
        if response.status == 404:
            return None
        raise_for_status(response, what)
        return feed_page(body, what)

    @observed_call("kill")
    async def kill(
        self, node: NodeConfig, payload_id: int, *, token: str | None, key: str | None
    ) -> None:
        what = f"kill {payload_id} at {node.terminate_url}"
        async with (
            self._call(what),
            self._request(
                "POST",
                join_url(node.terminate_url, payload_id),
                headers=self._headers(token, key),
                # An empty POST, as httpx sent it: no Content-Type aiohttp would add.
                skip_auto_headers=("Content-Type",),
            ) as response,
        ):
            await response.read()
        raise_for_status(response, what)
