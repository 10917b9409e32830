"""The client (executor node) application: the routes the server drives, and its loops."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from job_orchestrator import __version__
from job_orchestrator._fs import remove_tree
from job_orchestrator.archive import ArchiveError, ResultTooLargeError
from job_orchestrator.client import logs
from job_orchestrator.client.archives import PartialStream
from job_orchestrator.client.container_request import FIELDS as CONTAINER_FIELDS
from job_orchestrator.client.container_request import ContainerRequest, ContainerRequestError
from job_orchestrator.client.dispatch_keys import refuse_other_dispatch
from job_orchestrator.client.longpoll import (
    LONG_POLL_PARAMETERS,
    MAX_LONG_POLL_S,
    seconds_query,
    status_query,
    wait_for_change,
)
from job_orchestrator.client.payload import EMPTY_PAYLOAD, Payload
from job_orchestrator.client.state import ClientState, client_state
from job_orchestrator.config import ClientSettings
from job_orchestrator.exposure import client_warnings
from job_orchestrator.file_responses import zip_response
from job_orchestrator.filenames import UnsafeFileNameError, sanitize_filename
from job_orchestrator.http_common import (
    HEALTHY,
    PING,
    BearerGuard,
    id_parameter,
    install_conventions,
    json_response,
    path_id,
)
from job_orchestrator.multipart import (
    BodyIdleError,
    BoundaryError,
    MultipartError,
    read_multipart,
)
from job_orchestrator.status import Status
from job_orchestrator.wire import (
    CAPACITY_HEADER,
    CLOCK_HEADER,
    EXIT_CODE_HEADER,
    IDEMPOTENCY_HEADER,
    LEASE_HEADER,
    LOG_BYTES_HEADER,
    LONG_POLL_HEADER,
    MESSAGE_HEADER,
    REFUSING_DISK_FULL,
    REFUSING_HEADER,
    STARTED_AGE_HEADER,
    TIMEOUT_HEADER,
    WARNINGS_HEADER,
)

logger = logging.getLogger(__name__)


async def _mark_collected(state: ClientState, payload_id: int) -> None:
    state.registry.mark_collected(payload_id)


async def _partial_sent(state: ClientState, payload_id: int, stream: PartialStream) -> None:
    """A payload stopped for disk space gives its space back once its files were sent."""
    payload = state.registry.get(payload_id)
    if (
        stream.complete
        and payload is not None
        and payload.disk_stop is not None
        and payload.status.is_terminal()  # a running one is released once it ended
    ):
        await state.release(payload)


def _refused_for_disk(reason: str) -> JSONResponse:
    """507 Insufficient Storage: nothing of the payload was kept; send it elsewhere."""
    return json_response(
        EMPTY_PAYLOAD,
        507,
        headers={MESSAGE_HEADER: _quote(reason), REFUSING_HEADER: REFUSING_DISK_FULL},
    )


def _quote(message: str) -> str:
    return quote(message, safe=" :/,.;()'-_=")


def _message(payload: Payload) -> dict[str, str] | None:
    return {MESSAGE_HEADER: _quote(payload.message)} if payload.message else None


def _outcome(payload: Payload) -> dict[str, str]:
    """The headers of a /retrieve answer: why it ended, run.sh's exit status and start, if known."""
    headers = _message(payload) or {}
    if payload.exit_code is not None and payload.status.is_terminal():
        headers[EXIT_CODE_HEADER] = str(payload.exit_code)
    if payload.started_at is not None:
        # An age, not a time: the server subtracts it from its own clock.
        headers[STARTED_AGE_HEADER] = f"{max(0.0, time.time() - payload.started_at):.3f}"
    return headers


def _payload_response(
    payload: Payload, status_code: int = 200, *, long_polled: bool = False
) -> JSONResponse:
    headers = _outcome(payload)
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
    400: {"description": "The id is not a u32", "content": {"text/plain": {}}},
    404: {"description": "No such payload", "content": _PAYLOAD},
    409: {
        "description": "The payload holds another dispatch key than X-Orchestrator-Dispatch-Key",
        "content": _PAYLOAD,
    },
    500: {"description": "The payload's files could not be read", "content": _PAYLOAD},
}


_PAYLOAD_ID = id_parameter("Payload identifier")


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

    # What the client printed at start, for the server's /status (exposure.py).
    advertised_warnings = ",".join(
        quote(warning, safe=" ") for warning in client_warnings(settings)
    )

    @app.get("/health", summary="Registry health")
    async def health(request: Request) -> Response:
        state = client_state(request)
        try:
            state.registry.ping()
        except Exception:  # any failure of the registry means unhealthy
            return Response(status_code=503)
        headers = {LEASE_HEADER: f"{state.settings.server_lease_s:g}"}
        if advertised_warnings:
            headers[WARNINGS_HEADER] = advertised_warnings
        capacity = await state.runner.capacity()
        if capacity:
            headers[CAPACITY_HEADER] = str(capacity)
        if (refusal := state.disk.refusal) is not None:
            # Alive (200: its running jobs are fine), but it takes no new payload; our
            # server reads the header, an operator the body.
            headers[REFUSING_HEADER] = REFUSING_DISK_FULL
            return json_response({**HEALTHY, "disk": refusal}, headers=headers)
        return json_response(HEALTHY, headers=headers)

    @app.get(
        "/load",
        summary="CPU use of the node in percent (0-100)",
        responses={
            **_GUARDED,
            200: {"content": {"application/json": {"schema": {"type": "number"}}}},
        },
    )
    async def load(request: Request) -> JSONResponse:
        # Local: this machine's CPU use; Slurm: the cluster's allocated CPUs.
        return json_response(await client_state(request).runner.executor.load_percent())

    @app.get(
        "/metrics",
        summary="Prometheus metrics (not in the original)",
        response_class=Response,
        responses={
            **_GUARDED,
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        },
    )
    async def metrics(request: Request) -> Response:
        return Response(client_state(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

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
            408: {"description": "The body stalled (UPLOAD_IDLE_TIMEOUT)", "content": _PAYLOAD},
            500: {"description": "The files could not be stored", "content": _PAYLOAD},
            507: {
                "description": "Free space is below DISK_RESERVE_MB (or ran out while "
                "receiving); nothing was kept",
                "content": _PAYLOAD,
            },
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
                                "container_image": {
                                    "type": "string",
                                    "description": "EXECUTOR=docker or podman: the image to "
                                    "run the payload in (one of CONTAINER_IMAGES)",
                                },
                                "container_mounts": {
                                    "type": "string",
                                    "description": 'JSON [{"source": "sub/dir", "target": '
                                    '"/abs"}]: directories of the payload also mounted at '
                                    "these paths",
                                },
                            },
                        }
                    }
                },
            }
        },
    )
    async def submit(request: Request) -> Response:
        state = client_state(request)
        key = request.headers.get(IDEMPOTENCY_HEADER) or None
        if key is not None:
            existing = state.registry.by_dispatch_key(key)
            if existing is not None:
                return _payload_response(existing)
        try:
            timeout_s = _timeout_header(request.headers.get(TIMEOUT_HEADER))
        except ValueError:
            return PlainTextResponse(f"Invalid {TIMEOUT_HEADER} header", status_code=400)
        if (refusal := state.disk.refusal) is not None:
            return _refused_for_disk(refusal)
        paths = state.registry.allocate()
        state.receiving.add(paths.root.name)
        try:
            form = await read_multipart(
                request.stream(),
                request.headers.get("content-type"),
                paths.work,
                name_for_file=lambda _field, filename: PurePosixPath(sanitize_filename(filename)),
                # Upstream ignores text parts; ours are only what a container may be asked.
                keep_fields=CONTAINER_FIELDS,
                idle_timeout_s=state.settings.upload_idle_timeout_s or None,
            )
            ContainerRequest.parse(form.fields).write(paths.root)
            # A concurrent duplicate of the same dispatch may have won while we read.
            if key is not None and (existing := state.registry.by_dispatch_key(key)) is not None:
                raise _Duplicate(existing)
            payload = state.registry.add(paths, dispatch_key=key, timeout_s=timeout_s)
        except _Duplicate as duplicate:
            await asyncio.to_thread(remove_tree, paths.root)
            return _payload_response(duplicate.payload)
        except (BoundaryError, ContainerRequestError) as error:
            await asyncio.to_thread(remove_tree, paths.root)
            return PlainTextResponse(str(error), status_code=400)
        except ClientDisconnect:
            await asyncio.to_thread(remove_tree, paths.root)
            return _empty(400)
        except BodyIdleError:
            await asyncio.to_thread(remove_tree, paths.root)
            return json_response(EMPTY_PAYLOAD, 408, headers={"Connection": "close"})
        except (MultipartError, UnsafeFileNameError):
            await asyncio.to_thread(remove_tree, paths.root)
            return _empty(400)
        except OSError as error:
            await asyncio.to_thread(remove_tree, paths.root)
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                return _refused_for_disk(f"disk full while receiving the payload: {error}")
            logger.exception("could not store payload %s", paths.root.name)
            return _empty(500)
        finally:
            state.receiving.discard(paths.root.name)
        state.runner.start(payload)
        return _payload_response(payload)

    @app.get(
        "/retrieve/{id}",
        summary="The result ZIP when Completed, else the payload",
        responses={
            **_BY_ID,
            200: {"description": "ZIP or payload", "content": {**_ZIP, **_PAYLOAD}},
        },
        openapi_extra={"parameters": _PAYLOAD_ID["parameters"] + LONG_POLL_PARAMETERS},
    )
    async def retrieve(request: Request) -> Response:
        state = client_state(request)
        payload = state.registry.lookup(path_id(request))
        if payload is None:
            return _empty(404)
        if (refusal := refuse_other_dispatch(request, payload)) is not None:
            return refusal
        wait = min(seconds_query(request.query_params.get("wait")), MAX_LONG_POLL_S)
        known = status_query(request.query_params.get("known"))
        settle = min(seconds_query(request.query_params.get("settle")), MAX_LONG_POLL_S)
        if payload.status is Status.PREPARED:
            # The server still wants it: renew its lease (runner.py starts it only so).
            state.runner.lease.asked(payload.id, request.headers.get(CLOCK_HEADER))
            # Answer before the lease runs out, so the next ask renews it in time.
            wait = min(wait, state.settings.server_lease_s / 2)
        state.runner.release(payload.id)
        long_polled = wait > 0
        if long_polled:
            payload = await wait_for_change(
                state, payload, known or payload.status.wire, wait, settle
            )
        if payload.status is Status.COMPLETED:
            headers = _outcome(payload)
            if state.runner.executor.log_is_local:
                # The process has ended, so its log is whole.
                with contextlib.suppress(OSError):
                    headers[LOG_BYTES_HEADER] = str(payload.paths.log.stat().st_size)
            try:
                return zip_response(
                    payload.paths.result,
                    headers=headers,
                    # A coroutine: a plain function would cost a hop to a worker thread.
                    background=BackgroundTask(_mark_collected, state, payload.id),
                )
            except OSError:
                return _empty(500)
        if payload.status.is_terminal():
            state.registry.mark_collected(payload.id)
        return _payload_response(payload, long_polled=long_polled)

    @app.get(
        "/retrieve_partial/{id}",
        summary="A ZIP of the payload directory as it is now",
        responses={
            **_BY_ID,
            200: {"description": "ZIP", "content": _ZIP},
            410: {
                "description": "The payload was cleaned: its files are gone (status Cleaned)",
                "content": _PAYLOAD,
            },
            413: {"description": "The files exceed RESULT_MAX_MB", "content": _PAYLOAD},
        },
        openapi_extra=_PAYLOAD_ID,
    )
    async def retrieve_partial(request: Request) -> Response:
        state = client_state(request)
        payload = state.registry.lookup(path_id(request))
        if payload is None:
            return _empty(404)
        if (refusal := refuse_other_dispatch(request, payload)) is not None:
            return refusal
        if payload.status is Status.CLEANED:
            # Retention removed its files: nothing failed (the original answers 500 here).
            return _payload_response(payload, 410)
        if payload.status is Status.COMPLETED:
            with contextlib.suppress(OSError):  # gone: a partial copy of what is left
                return zip_response(payload.paths.result, headers=_message(payload))
        # Streamed, never written to disk: it works on a disk a job filled (disk.py).
        try:
            stream = await state.runner.archiver.partial(
                payload.id, Path(payload.loc), max_total_bytes=state.settings.result_max_bytes
            )
        except ResultTooLargeError as error:
            return _payload_response(replace(payload, message=str(error)), 413)
        except ArchiveError as error:
            logger.warning("partial zip of payload %d failed: %s", payload.id, error)
            return _empty(500)
        return StreamingResponse(
            stream.chunks(),
            media_type="application/zip",
            background=BackgroundTask(_partial_sent, state, payload.id, stream),
        )

    @app.post(
        "/kill/{id}",
        summary="Kill a payload's whole process group",
        responses={**_BY_ID, 200: {"description": "Killed (empty body)"}},
        response_class=Response,  # documents the 200 without a media type
        openapi_extra=_PAYLOAD_ID,
    )
    async def kill(request: Request) -> Response:
        state = client_state(request)
        payload = state.registry.lookup(path_id(request))
        if payload is None:
            return _empty(404)
        if (refusal := refuse_other_dispatch(request, payload)) is not None:
            return refusal
        state.runner.kill(payload)
        return Response(status_code=200)

    app.include_router(logs.router)
    app.router.redirect_slashes = False  # the original does no slash normalisation
    install_conventions(app)
    contained = settings.executor in ("docker", "podman")  # the engine sets the limits
    if (
        settings.sandbox == "none"
        and not contained
        and any(
            (
                settings.job_max_memory_mb,
                settings.job_max_processes,
                settings.job_max_file_mb,
                settings.job_max_cpu_seconds,
            )
        )
    ):
        logger.warning("JOB_MAX_* limits are ignored with SANDBOX=none; use rlimits or bwrap")
    if not settings.validate_scripts:
        logger.warning("VALIDATE_SCRIPTS=0: run.sh is run without the validator's screen")
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
