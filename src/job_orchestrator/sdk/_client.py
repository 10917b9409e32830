"""`Client`: the synchronous SDK (httpx.Client underneath)."""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from job_orchestrator.sdk import _exchanges as exchanges
from job_orchestrator.sdk import _protocol as protocol
from job_orchestrator.sdk._exchanges import CursorTrail, JobFilter
from job_orchestrator.sdk._protocol import Call, Connection, Exchange, Target
from job_orchestrator.sdk._upload import Progress
from job_orchestrator.sdk.errors import ServerUnreachable
from job_orchestrator.sdk.models import Job
from job_orchestrator.status import Status

__all__ = ["Client"]

T = TypeVar("T")


class Client:
    """A connection to a job-orchestrator server.

    `server` defaults to `JO_SERVER`, then `http://127.0.0.1:5000`; `token` (an API token, a
    portal token or a portal-signed JWT) to `JO_TOKEN` (sent as `Authorization: Bearer`). Use
    it as a context manager, or call `close()`.
    """

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
    ) -> None:
        self._connection = Connection.resolve(server, token)
        self._http = httpx.Client()

    @property
    def server(self) -> str:
        return self._connection.server

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- the verbs ------------------------------------------------------------------------

    def submit(
        self,
        files: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        service: str,
        user_id: int | None = None,
        *,
        callback_url: str | None = None,
        progress: Progress | None = None,
    ) -> Job:
        """Upload a directory (its files) or files as one job; one of them must be run.sh.

        Without `user_id` the field is left out when a token is set (the server takes the
        user from the token) and is `0` otherwise. `callback_url` asks the server to POST
        the job's signed final status there (a server without callbacks ignores it). Raises
        InvalidSubmission before anything is sent when the files cannot make a job.
        """
        body = protocol.upload_body(self._connection, files, service, user_id, callback_url)
        return self._run(
            exchanges.submit_exchange(self._connection, body.headers, body.chunks(progress))
        )

    def status(self, job_id: int) -> Job:
        return self._run(exchanges.status_exchange(self._connection, job_id))

    def wait(self, job_id: int, timeout: float | None = None) -> Job:
        """Block until the job is final; return it if Completed, else raise JobFailed.

        Raises WaitTimeout when `timeout` seconds pass first.
        """
        return self._run(exchanges.wait_exchange(self._connection, job_id, timeout))

    def services(self) -> list[dict[str, Any]]:
        """The server's services (`GET /services`): name, quotas, queue, clients and states."""
        return self._run(exchanges.services_exchange(self._connection))

    def cancel(self, job_id: int) -> Job:
        """Cancel a queued job or kill a running one (AlreadyFinished if it had ended)."""
        return self._run(exchanges.cancel_exchange(self._connection, job_id))

    def download(
        self, job_id: int, dest: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> Path:
        """Stream the result ZIP of a Completed job to `dest` (a file, or a directory for
        `job-<id>.zip`); JobFailed if it ended otherwise, NotFinished if it has not ended."""
        return self._download(job_id, dest, partial=False, progress=progress)

    def download_partial(
        self, job_id: int, dest: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> Path:
        """Stream a ZIP of the job's files as they are now (running or finished) to `dest`."""
        return self._download(job_id, dest, partial=True, progress=progress)

    def jobs(
        self,
        *,
        user_id: int | None = None,
        status: Status | str | None = None,
        service: str | None = None,
        page_size: int = protocol.DEFAULT_PAGE_SIZE,
    ) -> Iterator[Job]:
        """Every matching job, newest first, fetched a page at a time as you iterate."""
        filters = JobFilter(user_id, status, service, page_size)
        trail = CursorTrail()
        cursor: str | None = None
        while True:
            page, cursor = self._run(exchanges.page_exchange(self._connection, filters, cursor))
            yield from page
            if trail.follow(cursor) is None:
                return

    def logs(self, job_id: int, follow: bool = False) -> Iterator[str]:
        """run.sh's output as text chunks; with `follow`, until the job is final."""
        request = protocol.logs_request(self._connection, job_id, follow=follow)
        with self._stream(request) as response:
            if response.status_code >= 400:
                protocol.check(self._read(response), job_id)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            for chunk in response.iter_raw():
                text = decoder.decode(chunk)
                if text:
                    yield text
            if tail := decoder.decode(b"", final=True):
                yield tail

    # ---- driving the shared protocol --------------------------------------------------------

    def _run(self, exchange: Exchange[T]) -> T:
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
                    reply = self._send(step)
                except ServerUnreachable as error:  # the exchange decides (a wait's deadline)
                    failure = error
            else:
                time.sleep(step.seconds)

    def _send(self, step: Call) -> httpx.Response:
        with self._stream(step.request) as response:
            if protocol.is_zip(response):
                return response  # an exchange reads only the headers of a ZIP
            return self._read(response)

    @staticmethod
    def _read(response: httpx.Response) -> httpx.Response:
        """The answer read whole, up to MAX_ANSWER_BYTES (a larger one is refused unread)."""
        if protocol.declared_too_large(response):
            raise protocol.answer_too_large(response)
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > protocol.MAX_ANSWER_BYTES:
                raise protocol.answer_too_large(response)
        return protocol.buffered(response, bytes(body))

    def _stream(self, request: httpx.Request) -> _Streamed:
        return _Streamed(self, request)

    def _download(
        self,
        job_id: int,
        dest: str | os.PathLike[str],
        *,
        partial: bool,
        progress: Progress | None,
    ) -> Path:
        request = protocol.download_request(self._connection, job_id, partial=partial)
        target = Target.of(dest, job_id, partial=partial)
        with self._stream(request) as response:
            if not protocol.is_zip(response) or response.status_code >= 400:
                protocol.result_job(self._read(response), job_id, partial=partial)
            total = protocol.content_length(response)
            done = 0
            try:
                with os.fdopen(target.create(), "wb") as file:
                    for chunk in response.iter_bytes(protocol.CHUNK_BYTES):
                        file.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
                target.commit()
            except BaseException:
                target.discard()
                raise
        return target.path


class _Streamed:
    """`httpx.Client.send(stream=True)` as a context manager, transport errors mapped."""

    def __init__(self, client: Client, request: httpx.Request) -> None:
        self._client = client
        self._request = request
        self._response: httpx.Response | None = None

    def __enter__(self) -> httpx.Response:
        try:
            self._response = self._client._http.send(self._request, stream=True)
        except httpx.TransportError as error:
            raise self._client._connection.unreachable(error) from error
        return self._response

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._response is not None
        self._response.close()
        if isinstance(exc, httpx.TransportError):
            raise self._client._connection.unreachable(exc) from exc
