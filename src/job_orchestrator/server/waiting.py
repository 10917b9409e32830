"""Holding a request until a job is final: `GET /download/{id}?wait=S`.

This process's own status changes wake a waiter at once (the Store announces every move to a
final status). A change made by another process sharing the database (several replicas on
PostgreSQL, later woken by LISTEN/NOTIFY behind the same `wait_final`) is seen by re-reading
the job every `RECHECK_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterator

from job_orchestrator._loops import wait_any
from job_orchestrator.errors import StoreError
from job_orchestrator.server.storage import Store
from job_orchestrator.status import TERMINAL

logger = logging.getLogger(__name__)

#: The longest `?wait=` accepted, in seconds (documented in the README and the OpenAPI).
MAX_WAIT_S = 60
#: How often a held request re-reads its job, for changes made by other processes.
RECHECK_S = 1.0

# Plain decimal seconds only: float() would also take "1_0", " 5", "1e1", "nan" and "inf".
_SECONDS = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")


class WaitValueError(ValueError):
    """A `?wait=` that is not a number of seconds from 0 to MAX_WAIT_S."""


def parse_wait(text: str) -> float:
    if _SECONDS.fullmatch(text) is None or not 0 <= (value := float(text)) <= MAX_WAIT_S:
        raise WaitValueError(
            f"Invalid wait {text!r}: expected a number of seconds from 0 to {MAX_WAIT_S}"
        )
    return value


class FinalWaiters:
    """Per-job events, set when this process moves the job to a final status."""

    def __init__(self) -> None:
        self._events: dict[int, set[asyncio.Event]] = {}

    def notify(self, job_id: int) -> None:
        for event in self._events.get(job_id, ()):
            event.set()

    @contextlib.contextmanager
    def watch(self, job_id: int) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._events.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            events = self._events[job_id]
            events.discard(event)
            if not events:
                del self._events[job_id]


async def wait_final(
    store: Store,
    waiters: FinalWaiters,
    job_id: int,
    timeout_s: float,
    stop: asyncio.Event,
    recheck_s: float = RECHECK_S,
) -> None:
    """Return once the job is final or absent, `timeout_s` passed, or `stop` is set."""
    deadline = time.monotonic() + timeout_s
    with waiters.watch(job_id) as changed:
        while not stop.is_set():
            # Cleared before the read, so a change announced during the read still wakes us.
            changed.clear()
            try:
                job = await store.get_job(job_id)
            except StoreError:
                # The caller's own read of the job then answers as it would without a wait.
                logger.exception("wait on job %d: its status could not be read", job_id)
                return
            remaining = deadline - time.monotonic()
            if job is None or job.status in TERMINAL or remaining <= 0:
                return
            await wait_any(changed.wait(), stop.wait(), timeout_s=min(remaining, recheck_s))
