"""The client (executor node) application: the routes the server drives, and its loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import psutil
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from job_orchestrator import __version__
from job_orchestrator._loops import wait_any
from job_orchestrator.archive import ArchiveError, write_directory_zip
from job_orchestrator.client.registry import EMPTY_PAYLOAD, Payload, Registry
from job_orchestrator.client.runner import Runner
from job_orchestrator.config import ClientSettings
from job_orchestrator.filenames import UnsafeFileNameError, sanitize_filename
from job_orchestrator.http_common import (
    HEALTHY,
    PING,
    BearerGuard,
    install_conventions,
    json_response,
    parse_u32,
)
from job_orchestrator.multipart import BoundaryError, MultipartError, read_multipart
from job_orchestrator.status import Status
from job_orchestrator.wire import (
    CAPACITY_HEADER,
    CLOCK_HEADER,
    IDEMPOTENCY_HEADER,
    LONG_POLL_HEADER,
    MESSAGE_HEADER,
    TIMEOUT_HEADER,
)

logger = logging.getLogger(__name__)

MAX_LONG_POLL_S = 60.0


class ClientState:
    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.registry = Registry(settings.data_path)
        self.runner = Runner(settings, self.registry)
        self._stop = asyncio.Event()
        #: Set as soon as a stop signal arrives: long-polls answer at once.
        self.draining = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for payload in self.registry.rebuild():
            self.runner.adopt(payload)
        psutil.cpu_percent(interval=None)  # starts the first measuring window
        self._loops = [asyncio.create_task(self._cleaner_loop(), name="cleaner_loop")]

    async def stop(self) -> None:
        self._stop.set()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.runner.stop()

    async def _cleaner_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.clean_once()
            except OSError:
                logger.exception("cleaning failed")
            await wait_any(self._stop.wait(), timeout_s=self.settings.cleaner_interval_s)

    async def clean_once(self) -> int:
        """Remove payloads that finished more than MAX_AGE ago, and our orphan directories."""
        cutoff = time.time() - self.settings.max_age_s
        cleaned = 0
        for payload in self.registry.finished_before(cutoff):
            await asyncio.to_thread(shutil.rmtree, payload.paths.root, True)
            self.registry.update(payload.id, status=Status.CLEANED)
            cleaned += 1
        with contextlib.suppress(FileNotFoundError):
            for entry in self.settings.data_path.iterdir():
                if (
                    entry.name.isdigit()
                    and entry.is_dir()
                    and self.registry.get(int(entry.name)) is None
                    and entry.stat().st_mtime < cutoff
                ):
                    await asyncio.to_thread(shutil.rmtree, entry, True)
                    cleaned += 1
        return cleaned


def _state(request: Request) -> ClientState:
    state: ClientState = request.app.state.client
    return state


def _payload_response(
    payload: Payload, status_code: int = 200, *, long_polled: bool = False
) -> JSONResponse:
    headers = {}
    if payload.message:
        headers[MESSAGE_HEADER] = quote(payload.message, safe=" :/,.;()'-_=")
    if long_polled:
        headers[LONG_POLL_HEADER] = "1"
    return json_response(payload.wire(), status_code, headers=headers)


_PAYLOAD_SCHEMA = {
    "type": "object",
    "required": ["id", "input", "status", "loc", "pid", "killed"],
    "properties": {
        "id": {"type": "integer", "minimum": 0},
        "input": {"type": "object"},
        "status": {"type": "string", "enum": [status.wire for status in Status]},
        "loc": {"type": "string"},
        "pid": {"type": "integer", "minimum": 0},
        "killed": {"type": "boolean"},
    },
}
_PAYLOAD = {"application/json": {"schema": _PAYLOAD_SCHEMA}}
_ZIP = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
_GUARDED: dict[int | str, dict[str, Any]] = {
    401: {"description": "No valid bearer token (only when CLIENT_TOKEN is set)"}
}
_BY_ID: dict[int | str, dict[str, Any]] = {
    **_GUARDED,
    400: {"description": "The id is not a number", "content": {"text/plain": {}}},
    404: {"description": "No such payload", "content": _PAYLOAD},
    500: {"description": "The payload's files could not be read", "content": _PAYLOAD},
}


def _empty(status_code: int) -> JSONResponse:
    return json_response(EMPTY_PAYLOAD, status_code)


def create_app(settings: ClientSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ClientState(settings)
        app.state.client = state
        app.state.draining = state.draining
        app.state.loop = asyncio.get_running_loop()
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="job-orchestrator client",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api-docs/openapi.json",
        lifespan=lifespan,
    )

    @app.get("/", summary="Ping")
    async def ping() -> JSONResponse:
        return json_response(PING)

    @app.get("/health", summary="Registry health")
    async def health(request: Request) -> Response:
        state = _state(request)
        try:
            state.registry.ping()
        except Exception:  # any failure of the registry means unhealthy
            return Response(status_code=503)
        headers = {}
        if state.settings.max_concurrent:
            headers[CAPACITY_HEADER] = str(state.settings.max_concurrent)
        return json_response(HEALTHY, headers=headers)

    @app.get(
        "/load",
        summary="CPU use of the node in percent (0-100)",
        responses={
            **_GUARDED,
            200: {"content": {"application/json": {"schema": {"type": "number"}}}},
        },
    )
    async def load() -> JSONResponse:
        # CPU use since the previous call: no sampling sleep on the request, no idle cost.
        return json_response(float(psutil.cpu_percent(interval=None)))

    @app.post(
        "/submit",
        summary="Receive a payload (multipart: one part per file)",
        responses={
            **_GUARDED,
            200: {"description": "The payload, Prepared", "content": _PAYLOAD},
            400: {
                "description": "Not a valid multipart body",
                "content": {**_PAYLOAD, "text/plain": {}},
            },
            500: {"description": "The files could not be stored", "content": _PAYLOAD},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "run.sh": {"type": "string", "format": "binary"},
                            },
                        }
                    }
                },
            }
        },
    )
    async def submit(request: Request) -> Response:
        state = _state(request)
        key = request.headers.get(IDEMPOTENCY_HEADER) or None
        if key is not None:
            existing = state.registry.by_dispatch_key(key)
            if existing is not None:
                return _payload_response(existing)
        try:
            timeout_s = _timeout_header(request.headers.get(TIMEOUT_HEADER))
        except ValueError:
            return PlainTextResponse(f"Invalid {TIMEOUT_HEADER} header", status_code=400)
        paths = state.registry.allocate()
        try:
            await read_multipart(
                request.stream(),
                request.headers.get("content-type"),
                paths.work,
                name_for_file=lambda _field, filename: PurePosixPath(sanitize_filename(filename)),
            )
            # A concurrent duplicate of the same dispatch may have won while we read.
            if key is not None and (existing := state.registry.by_dispatch_key(key)) is not None:
                raise _Duplicate(existing)
            payload = state.registry.add(paths, dispatch_key=key, timeout_s=timeout_s)
        except _Duplicate as duplicate:
            await asyncio.to_thread(shutil.rmtree, paths.root, True)
            return _payload_response(duplicate.payload)
        except BoundaryError as error:
            await asyncio.to_thread(shutil.rmtree, paths.root, True)
            return PlainTextResponse(str(error), status_code=400)
        except ClientDisconnect:
            await asyncio.to_thread(shutil.rmtree, paths.root, True)
            return _empty(400)
        except (MultipartError, UnsafeFileNameError):
            await asyncio.to_thread(shutil.rmtree, paths.root, True)
            return _empty(400)
        except OSError:
            logger.exception("could not store payload %s", paths.root.name)
            await asyncio.to_thread(shutil.rmtree, paths.root, True)
            return _empty(500)
        state.runner.start(payload)
        return _payload_response(payload)

    @app.get(
        "/retrieve/{payload_id}",
        summary="The result ZIP when Completed, else the payload",
        responses={
            **_BY_ID,
            200: {"description": "ZIP or payload", "content": {**_ZIP, **_PAYLOAD}},
        },
    )
    async def retrieve(
        request: Request, payload_id: str, wait: float = 0.0, known: str | None = None
    ) -> Response:
        state = _state(request)
        payload = state.registry.get(parse_u32(payload_id))
        if payload is None:
            return _empty(404)
        wait = min(wait, MAX_LONG_POLL_S)
        if payload.status is Status.PREPARED:
            # The server still wants it: renew its lease (runner.py starts it only so).
            state.runner.lease.asked(payload.id, request.headers.get(CLOCK_HEADER))
            # Answer before the lease runs out, so the next ask renews it in time.
            wait = min(wait, state.settings.server_lease_s / 2)
        state.runner.release(payload.id)
        long_polled = wait > 0
        if long_polled:
            payload = await _wait_for_change(state, payload, known or payload.status.wire, wait)
        if payload.status is Status.COMPLETED:
            if not payload.paths.result.is_file():
                return _empty(500)
            return FileResponse(payload.paths.result, media_type="application/zip")
        return _payload_response(payload, long_polled=long_polled)

    @app.get(
        "/retrieve_partial/{payload_id}",
        summary="A ZIP of the payload directory as it is now",
        responses={**_BY_ID, 200: {"description": "ZIP", "content": _ZIP}},
    )
    async def retrieve_partial(request: Request, payload_id: str) -> Response:
        state = _state(request)
        payload = state.registry.get(parse_u32(payload_id))
        if payload is None:
            return _empty(404)
        if payload.status is Status.COMPLETED and payload.paths.result.is_file():
            return FileResponse(payload.paths.result, media_type="application/zip")
        # Built beside (not inside) the work directory, and removed once sent.
        partial = payload.paths.root / f".partial-{secrets.token_hex(8)}.zip"
        try:
            await asyncio.to_thread(write_directory_zip, Path(payload.loc), partial)
        except ArchiveError as error:
            logger.warning("partial zip of payload %d failed: %s", payload.id, error)
            return _empty(500)
        return FileResponse(
            partial, media_type="application/zip", background=BackgroundTask(partial.unlink, True)
        )

    @app.post(
        "/kill/{payload_id}",
        summary="Kill a payload's whole process group",
        responses={**_BY_ID, 200: {"description": "Killed (empty body)", "content": {}}},
    )
    async def kill(request: Request, payload_id: str) -> Response:
        state = _state(request)
        payload = state.registry.get(parse_u32(payload_id))
        if payload is None:
            return _empty(404)
        state.runner.kill(payload)
        return Response(status_code=200)

    app.router.redirect_slashes = False  # the original does no slash normalisation
    install_conventions(app)
    if settings.sandbox == "none" and any(
        (
            settings.job_max_memory_mb,
            settings.job_max_processes,
            settings.job_max_file_mb,
            settings.job_max_cpu_seconds,
        )
    ):
        logger.warning("JOB_MAX_* limits are ignored with SANDBOX=none; use rlimits or bwrap")
    if settings.client_token:
        app.add_middleware(
            BearerGuard, token=settings.client_token, open_paths=frozenset({"/", "/health"})
        )
    else:
        logger.warning(
            "CLIENT_TOKEN is not set: this client runs whatever any caller sends it; "
            "set CLIENT_TOKEN here and on the server"
        )
    return app


def _timeout_header(raw: str | None) -> float | None:
    if raw is None:
        return None
    value = float(raw)
    if not 0 < value < float("inf"):
        raise ValueError(raw)
    return value


class _Duplicate(Exception):
    def __init__(self, payload: Payload) -> None:
        self.payload = payload


async def _wait_for_change(
    state: ClientState, payload: Payload, known: str, wait_s: float
) -> Payload:
    """Hold a /retrieve until the payload is final or its status differs from `known`."""
    deadline = time.monotonic() + wait_s
    registry = state.registry
    with registry.watch(payload.id) as changed:
        while True:
            # Re-read after registering the watch, so no change slips in between.
            payload = registry.get(payload.id) or payload
            remaining = deadline - time.monotonic()
            if (
                payload.status.is_terminal()
                or payload.status.wire != known
                or remaining <= 0
                or state.draining.is_set()
            ):
                return payload
            changed.clear()
            await wait_any(changed.wait(), state.draining.wait(), timeout_s=remaining)
