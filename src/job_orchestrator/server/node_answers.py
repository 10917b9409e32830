"""What the gateway (gateway.py) reads from its clients' answers: status codes as our errors,
headers as values, and bodies streamed into files.

A 404 about a payload, or our client's 409 (the payload of that id holds another dispatch key),
is PayloadLostError; 401 and 507 say the client refuses the token or is short of disk space;
5xx, 408 and 429 are worth retrying (TransientClientError); any other answer but a 2xx is
PermanentClientError. A failed call itself is classified by `classified_failure`.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from job_orchestrator._descriptors import is_exhaustion
from job_orchestrator._filestream import ThreadedWriter
from job_orchestrator.errors import (
    ClientDiskFullError,
    ClientUnauthorizedError,
    OutOfDescriptorsError,
    PayloadLostError,
    PermanentClientError,
    TransientClientError,
    UndeliveredError,
)
from job_orchestrator.server.jobfiles import temporary_name
from job_orchestrator.server.node_calls import FeedEntry, FeedPage
from job_orchestrator.status import Status
from job_orchestrator.wire import EXIT_CODE_HEADER, STARTED_AGE_HEADER


def exit_code_of(response: aiohttp.ClientResponse) -> int | None:
    raw = response.headers.get(EXIT_CODE_HEADER, "")
    return int(raw) if re.fullmatch(r"-?[0-9]{1,10}", raw) and abs(int(raw)) < 2**31 else None


def started_at_of(response: aiohttp.ClientResponse) -> float | None:
    try:
        age_s = float(response.headers.get(STARTED_AGE_HEADER, ""))
    except ValueError:
        return None
    return time.time() - age_s if 0 <= age_s < float("inf") else None


def raise_for_status(response: aiohttp.ClientResponse, what: str) -> None:
    if response.status == 404:
        raise PayloadLostError(f"{what}: client answered 404 (payload not found)")
    if response.status == 401:
        raise ClientUnauthorizedError(f"{what}: {ClientUnauthorizedError.MESSAGE}")
    if response.status == 507:
        raise ClientDiskFullError(f"{what}: {ClientDiskFullError.MESSAGE}")
    if response.status == 409:
        # Never used as this job's answer: for this job, the client no longer has it.
        raise PayloadLostError(f"{what}: client answered 409 (the payload is another job's)")
    # 408: our client timed the dispatch body out (UPLOAD_IDLE_TIMEOUT); 429: it is busy.
    if response.status >= 500 or response.status in (408, 429):
        raise TransientClientError(f"{what}: client answered {response.status}")
    if not 200 <= response.status < 300:
        raise PermanentClientError(f"{what}: client answered {response.status}")


def seconds_header(text: str) -> float | None:
    """A positive, finite number of seconds from a header; None for anything else."""
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if 0 < seconds < float("inf") else None


def range_size(response: aiohttp.ClientResponse) -> int:
    """The length a 416 gives in `Content-Range: bytes */N` (0 when absent)."""
    found = re.fullmatch(r"bytes \*/([0-9]{1,19})", response.headers.get("Content-Range", ""))
    return int(found.group(1)) if found else 0


def is_zip(response: aiohttp.ClientResponse) -> bool:
    return response.status == 200 and "application/zip" in response.headers.get("content-type", "")


def payload_json(body: bytes, what: str) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError:
        raise PermanentClientError(f"{what}: client sent a reply that is not JSON") from None
    if not isinstance(payload, dict):
        raise PermanentClientError(f"{what}: client sent an unexpected JSON reply")
    return payload


def feed_page(body: bytes, what: str) -> FeedPage:
    """A /changes answer (client/changes.py); PermanentClientError if it is not one."""
    page = payload_json(body, what)
    cursor, entries = page.get("cursor"), page.get("changes")
    if not isinstance(cursor, str) or not isinstance(entries, list):
        raise PermanentClientError(f"{what}: not a change feed answer")
    try:
        return FeedPage(cursor, page.get("snapshot") is True, tuple(map(_feed_entry, entries)))
    except (KeyError, TypeError, ValueError) as error:
        raise PermanentClientError(f"{what}: a change is unreadable ({error!r})") from None


def _feed_entry(raw: Any) -> FeedEntry:
    started_age = raw.get("started_age")
    key = raw.get("key")
    return FeedEntry(
        id=int(raw["id"]),
        status=Status.from_wire(str(raw["status"])),
        key=key if isinstance(key, str) else None,
        age=max(0.0, float(raw.get("age") or 0.0)),
        started_age=None if started_age is None else max(0.0, float(started_age)),
    )


def classified_failure(what: str, error: Exception) -> Exception:
    """The ClientCallError a failed call raises (a plain OSError of our own stays itself)."""
    if is_exhaustion(error):
        # socket(), or opening a file to send or keep, found no descriptor left: the client
        # may never have seen the request, and its health is not in question.
        return OutOfDescriptorsError(f"{what}: this server has no file descriptor left")
    if isinstance(error, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        # No connection was made (refused, DNS, connect timeout), so nothing was sent.
        return UndeliveredError(f"{what}: {type(error).__name__}: {error}")
    if isinstance(error, aiohttp.ServerTimeoutError):
        return TransientClientError(f"{what}: timed out ({type(error).__name__})")
    if isinstance(error, aiohttp.ClientError):
        # Disconnected, reset, a body cut short, a reply that is not HTTP.
        return TransientClientError(f"{what}: {type(error).__name__}: {error}")
    if isinstance(error, TimeoutError):
        # paced(): the client stopped reading the dispatch body.
        return TransientClientError(f"{what}: timed out (writing the body)")
    return error


async def stream_to_file(chunks: AsyncIterator[bytes], destination: Path) -> None:
    # Two collectors of one job (a replica taking over a job its owner still follows) each
    # write their own file; the rename makes one whole copy win.
    partial = temporary_name(destination)
    try:
        with partial.open("wb") as sink:
            # A big ZIP is written on threads while the loop reads on (_filestream.py).
            writer = ThreadedWriter(sink)
            try:
                async for chunk in chunks:
                    await writer.write(chunk)
                await writer.finish()
            except BaseException:
                await writer.abandon()
                raise
        os.replace(partial, destination)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
