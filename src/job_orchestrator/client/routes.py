"""The routes the server drives: ping, health, load, metrics, submit, retrieve, retrieve_partial
and kill (the original client's, with our headers and extensions; logs.py adds /logs).

Each handler reaches the client's state through `client_state(request)` (state.py), answers
about a payload through responses.py, and leaves the work to the registry and the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from dataclasses import replace
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from job_orchestrator._fs import remove_tree
from job_orchestrator.archive import ArchiveError, ResultTooLargeError
from job_orchestrator.client.archives import PartialStream
from job_orchestrator.client.container_request import FIELDS as CONTAINER_FIELDS
from job_orchestrator.client.container_request import ContainerRequest, ContainerRequestError
from job_orchestrator.client.dispatch_keys import refuse_other_dispatch
from job_orchestrator.client.lease import stamp_instance
from job_orchestrator.client.longpoll import LONG_POLL_PARAMETERS, LongPoll, wait_for_change
from job_orchestrator.client.payload import EMPTY_PAYLOAD, Payload, PayloadChanges
from job_orchestrator.client.responses import (
    BY_ID,
    GUARDED,
    PAYLOAD_CONTENT,
    PAYLOAD_ID,
    ZIP_CONTENT,
    empty_response,
    message_headers,
    outcome_headers,
    payload_response,
    refused_for_disk,
)
from job_orchestrator.client.state import ClientState, client_state
from job_orchestrator.file_responses import zip_response
from job_orchestrator.filenames import UnsafeFileNameError, sanitize_filename
from job_orchestrator.http_common import HEALTHY, PING, json_response, path_id
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
    IDEMPOTENCY_HEADER,
    LEASE_HEADER,
    LOG_BYTES_HEADER,
    REFUSING_DISK_FULL,
    REFUSING_HEADER,
    TIMEOUT_HEADER,
    WARNINGS_HEADER,
)

logger = logging.getLogger(__name__)

router = APIRouter()

_SUBMIT_BODY = {
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
}


@router.get("/", summary="Ping")
async def ping() -> JSONResponse:
    return json_response(PING)


@router.get("/health", summary="Registry health")
async def health(request: Request) -> Response:
    state = client_state(request)
    try:
        state.registry.ping()
    except Exception:  # any failure of the registry means unhealthy
        return Response(status_code=503)
    headers = {LEASE_HEADER: f"{state.settings.server_lease_s:g}"}
    if state.warnings:
        # What the client printed at start, for the server's /status (exposure.py).
        headers[WARNINGS_HEADER] = ",".join(quote(warning, safe=" ") for warning in state.warnings)
    capacity = await state.runner.capacity()
    if capacity:
        headers[CAPACITY_HEADER] = str(capacity)
    if (refusal := state.disk.refusal) is not None:
        # Alive (200: its running jobs are fine), but it takes no new payload; our
        # server reads the header, an operator the body.
        headers[REFUSING_HEADER] = REFUSING_DISK_FULL
        return json_response({**HEALTHY, "disk": refusal}, headers=headers)
    return json_response(HEALTHY, headers=headers)


@router.get(
    "/load",
    summary="CPU use of the node in percent (0-100)",
    responses={
        **GUARDED,
        200: {"content": {"application/json": {"schema": {"type": "number"}}}},
    },
)
async def load(request: Request) -> JSONResponse:
    # Local: this machine's CPU use; Slurm: the cluster's allocated CPUs.
    return json_response(await client_state(request).runner.executor.load_percent())


@router.get(
    "/metrics",
    summary="Prometheus metrics (not in the original)",
    response_class=Response,
    responses={
        **GUARDED,
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
    },
)
async def metrics(request: Request) -> Response:
    return Response(client_state(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.post(
    "/submit",
    summary="Receive a payload (multipart: one part per file)",
    responses={
        **GUARDED,
        200: {"description": "The payload, Prepared", "content": PAYLOAD_CONTENT},
        400: {
            "description": "Not a valid multipart body",
            "content": {**PAYLOAD_CONTENT, "text/plain": {}},
        },
        408: {"description": "The body stalled (UPLOAD_IDLE_TIMEOUT)", "content": PAYLOAD_CONTENT},
        500: {"description": "The files could not be stored", "content": PAYLOAD_CONTENT},
        507: {
            "description": "Free space is below DISK_RESERVE_MB (or ran out while "
            "receiving); nothing was kept",
            "content": PAYLOAD_CONTENT,
        },
    },
    openapi_extra=_SUBMIT_BODY,
)
async def submit(request: Request) -> Response:
    state = client_state(request)
    key = request.headers.get(IDEMPOTENCY_HEADER) or None
    if key is not None:
        existing = state.registry.by_dispatch_key(key)
        if existing is not None:
            return payload_response(existing)
    try:
        timeout_s = _timeout_header(request.headers.get(TIMEOUT_HEADER))
    except ValueError:
        return PlainTextResponse(f"Invalid {TIMEOUT_HEADER} header", status_code=400)
    if (refusal := state.disk.refusal) is not None:
        return refused_for_disk(refusal)
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
        return payload_response(duplicate.payload)
    except (BoundaryError, ContainerRequestError) as error:
        await asyncio.to_thread(remove_tree, paths.root)
        return PlainTextResponse(str(error), status_code=400)
    except ClientDisconnect:
        await asyncio.to_thread(remove_tree, paths.root)
        return empty_response(400)
    except BodyIdleError:
        await asyncio.to_thread(remove_tree, paths.root)
        return json_response(EMPTY_PAYLOAD, 408, headers={"Connection": "close"})
    except (MultipartError, UnsafeFileNameError):
        await asyncio.to_thread(remove_tree, paths.root)
        return empty_response(400)
    except OSError as error:
        await asyncio.to_thread(remove_tree, paths.root)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return refused_for_disk(f"disk full while receiving the payload: {error}")
        logger.exception("could not store payload %s", paths.root.name)
        return empty_response(500)
    finally:
        state.receiving.discard(paths.root.name)
    state.runner.start(payload)
    return payload_response(payload)


@router.get(
    "/retrieve/{id}",
    summary="The result ZIP when Completed, else the payload",
    responses={
        **BY_ID,
        200: {"description": "ZIP or payload", "content": {**ZIP_CONTENT, **PAYLOAD_CONTENT}},
    },
    openapi_extra={"parameters": PAYLOAD_ID["parameters"] + LONG_POLL_PARAMETERS},
)
async def retrieve(request: Request) -> Response:
    state = client_state(request)
    payload = requested_payload(request, state)
    if isinstance(payload, Response):
        return payload
    poll = LongPoll.from_query(request.query_params)
    wait_s = poll.wait_s
    clock = request.headers.get(CLOCK_HEADER)
    holder = stamp_instance(clock)
    if holder is not None and holder != payload.holder and not payload.status.is_terminal():
        # That server follows it now: its change feed renews the lease from here on.
        payload = state.registry.change(payload.id, PayloadChanges(holder=holder)) or payload
    if payload.status is Status.PREPARED:
        # The server still wants it: renew its lease (runner.py starts it only so).
        state.runner.lease.asked(payload.id, clock)
        # Answer before the lease runs out, so the next ask renews it in time.
        wait_s = min(wait_s, state.settings.server_lease_s / 2)
    state.runner.release(payload.id)
    long_polled = wait_s > 0
    if long_polled:
        payload = await wait_for_change(
            state.registry,
            state.draining,
            payload,
            poll.known or payload.status.wire,
            wait_s,
            poll.settle_s,
        )
    if payload.status is Status.COMPLETED:
        headers = outcome_headers(payload)
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
            return empty_response(500)
    if payload.status.is_terminal():
        state.registry.mark_collected(payload.id)
    return payload_response(payload, long_polled=long_polled)


@router.get(
    "/retrieve_partial/{id}",
    summary="A ZIP of the payload directory as it is now",
    responses={
        **BY_ID,
        200: {"description": "ZIP", "content": ZIP_CONTENT},
        410: {
            "description": "The payload was cleaned: its files are gone (status Cleaned)",
            "content": PAYLOAD_CONTENT,
        },
        413: {"description": "The files exceed RESULT_MAX_MB", "content": PAYLOAD_CONTENT},
    },
    openapi_extra=PAYLOAD_ID,
)
async def retrieve_partial(request: Request) -> Response:
    state = client_state(request)
    payload = requested_payload(request, state)
    if isinstance(payload, Response):
        return payload
    if payload.status is Status.CLEANED:
        # Retention removed its files: nothing failed (the original answers 500 here).
        return payload_response(payload, 410)
    if payload.status is Status.COMPLETED:
        with contextlib.suppress(OSError):  # gone: a partial copy of what is left
            return zip_response(payload.paths.result, headers=message_headers(payload))
    # Streamed, never written to disk: it works on a disk a job filled (disk.py).
    try:
        stream = await state.runner.archiver.partial(
            payload.id, Path(payload.loc), max_total_bytes=state.settings.result_max_bytes
        )
    except ResultTooLargeError as error:
        return payload_response(replace(payload, message=str(error)), 413)
    except ArchiveError as error:
        logger.warning("partial zip of payload %d failed: %s", payload.id, error)
        return empty_response(500)
    return StreamingResponse(
        stream.chunks(),
        media_type="application/zip",
        background=BackgroundTask(_partial_sent, state, payload.id, stream),
    )


@router.post(
    "/kill/{id}",
    summary="Kill a payload's whole process group",
    responses={**BY_ID, 200: {"description": "Killed (empty body)"}},
    response_class=Response,  # documents the 200 without a media type
    openapi_extra=PAYLOAD_ID,
)
async def kill(request: Request) -> Response:
    state = client_state(request)
    payload = requested_payload(request, state)
    if isinstance(payload, Response):
        return payload
    state.runner.kill(payload)
    return Response(status_code=200)


def requested_payload(request: Request, state: ClientState) -> Payload | Response:
    """The payload the path names, or the answer: 404 if there is none, 409 if the request
    is about another dispatch than the one it holds."""
    payload = state.registry.lookup(path_id(request))
    if payload is None:
        return empty_response(404)
    return refuse_other_dispatch(request, payload) or payload


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
        await state.cleaner.release(payload)


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
