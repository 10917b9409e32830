"""`AsyncClient`: the asynchronous SDK (httpx.AsyncClient underneath); same verbs as `Client`."""

from __future__ import annotations

import codecs
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import httpx

from job_orchestrator.sdk import _exchanges as exchanges
from job_orchestrator.sdk import _protocol as protocol
from job_orchestrator.sdk._exchanges import CursorTrail, JobFilter
from job_orchestrator.sdk._protocol import Call, Connection, Exchange, Target
from job_orchestrator.sdk._upload import Progress
from job_orchestrator.sdk.errors import ServerUnreachable
from job_orchestrator.sdk.models import Job
from job_orchestrator.status import Status

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient:
    """The asynchronous twin of `Client`: `async with AsyncClient() as jo: await jo.wait(7)`."""

    def __init__(self, server: str | None = None, token: str | None = None) -> None:
        self._connection = Connection.resolve(server, token)
        self._http = httpx.AsyncClient()

    @property
    def server(self) -> str:
        return self._connection.server

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- the verbs (documented on Client) ---------------------------------------------------

    async def submit(
        self,
        files: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        service: str,
        user_id: int | None = None,
        *,
        callback_url: str | None = None,
        progress: Progress | None = None,
    ) -> Job:
        body = protocol.upload_body(self._connection, files, service, user_id, callback_url)
        return await self._run(
            exchanges.submit_exchange(self._connection, body.headers, body.achunks(progress))
        )

    async def status(self, job_id: int) -> Job:
        return await self._run(exchanges.status_exchange(self._connection, job_id))

    # The same signature as Client.wait; the exchange itself bounds every request it holds.
    async def wait(self, job_id: int, timeout: float | None = None) -> Job:  # noqa: ASYNC109
        return await self._run(exchanges.wait_exchange(self._connection, job_id, timeout))

    async def services(self) -> list[dict[str, Any]]:
        """The server's services (`GET /services`): name, quotas, queue, clients and states."""
        return await self._run(exchanges.services_exchange(self._connection))

    async def cancel(self, job_id: int) -> Job:
        return await self._run(exchanges.cancel_exchange(self._connection, job_id))

    async def download(
        self, job_id: int, dest: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> Path:
        return await self._download(job_id, dest, partial=False, progress=progress)

    async def download_partial(
        self, job_id: int, dest: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> Path:
        return await self._download(job_id, dest, partial=True, progress=progress)

    async def jobs(
        self,
        *,
        user_id: int | None = None,
        status: Status | str | None = None,
        service: str | None = None,
        page_size: int = protocol.DEFAULT_PAGE_SIZE,
    ) -> AsyncIterator[Job]:
        filters = JobFilter(user_id, status, service, page_size)
        trail = CursorTrail()
        cursor: str | None = None
        while True:
            exchange = exchanges.page_exchange(self._connection, filters, cursor)
            page, cursor = await self._run(exchange)
            for job in page:
                yield job
            if trail.follow(cursor) is None:
                return

    async def logs(self, job_id: int, follow: bool = False) -> AsyncIterator[str]:
        request = protocol.logs_request(self._connection, job_id, follow=follow)
        async with self._stream(request) as response:
            if response.status_code >= 400:
                protocol.check(await self._read(response), job_id)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            async for chunk in response.aiter_raw():
                text = decoder.decode(chunk)
                if text:
                    yield text
            if tail := decoder.decode(b"", final=True):
                yield tail

    # ---- driving the shared protocol --------------------------------------------------------

    async def _run(self, exchange: Exchange[T]) -> T:
        reply: httpx.Response | None = None
        failure: ServerUnreachable | None = None
        while True:
            try:
                step = exchange.throw(failure) if failure else exchange.send(reply)
            except StopIteration as done:
                result: T = done.value
                return result
            reply, failure = None, None
            if isinstance(step, Call):
                try:
                    reply = await self._send(step)
                except ServerUnreachable as error:  # the exchange decides (a wait's deadline)
                    failure = error
            else:
                await anyio.sleep(step.seconds)

    async def _send(self, step: Call) -> httpx.Response:
        async with self._stream(step.request) as response:
            if protocol.is_zip(response):
                return response  # an exchange reads only the headers of a ZIP
            return await self._read(response)

    @staticmethod
    async def _read(response: httpx.Response) -> httpx.Response:
        """The answer read whole, up to MAX_ANSWER_BYTES (a larger one is refused unread)."""
        if protocol.declared_too_large(response):
            raise protocol.answer_too_large(response)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > protocol.MAX_ANSWER_BYTES:
                raise protocol.answer_too_large(response)
        return protocol.buffered(response, bytes(body))

    def _stream(self, request: httpx.Request) -> _Streamed:
        return _Streamed(self, request)

    async def _download(
        self,
        job_id: int,
        dest: str | os.PathLike[str],
        *,
        partial: bool,
        progress: Progress | None,
    ) -> Path:
        request = protocol.download_request(self._connection, job_id, partial=partial)
        target = Target.of(dest, job_id, partial=partial)
        async with self._stream(request) as response:
            if not protocol.is_zip(response) or response.status_code >= 400:
                protocol.result_job(await self._read(response), job_id, partial=partial)
            total = protocol.content_length(response)
            done = 0
            try:
                async with anyio.wrap_file(os.fdopen(target.create(), "wb")) as file:
                    async for chunk in response.aiter_bytes(protocol.CHUNK_BYTES):
                        await file.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
                target.commit()
            except BaseException:
                target.discard()
                raise
        return target.path


class _Streamed:
    """`httpx.AsyncClient.send(stream=True)` as a context manager, transport errors mapped."""

    def __init__(self, client: AsyncClient, request: httpx.Request) -> None:
        self._client = client
        self._request = request
        self._response: httpx.Response | None = None

    async def __aenter__(self) -> httpx.Response:
        try:
            self._response = await self._client._http.send(self._request, stream=True)
        except httpx.TransportError as error:
            raise self._client._connection.unreachable(error) from error
        return self._response

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._response is not None
        await self._response.aclose()
        if isinstance(exc, httpx.TransportError):
            raise self._client._connection.unreachable(exc) from exc
