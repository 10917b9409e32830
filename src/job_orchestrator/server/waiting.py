"""Holding a request until a job is final: `GET /download/{id}?wait=S`; capping held requests.

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
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from job_orchestrator._loops import wait_any
from job_orchestrator.errors import StoreError
from job_orchestrator.server.storage import Store
from job_orchestrator.status import TERMINAL

logger = logging.getLogger(__name__)

#: The longest `?wait=` accepted, in seconds (documented in docs/api.md and the OpenAPI).
MAX_WAIT_S = 60
#: How often a held request re-reads its job, for changes made by other processes.
RECHECK_S = 1.0

# Plain decimal seconds only: float() would also take "1_0", " 5", "1e1", "nan" and "inf".
_SECONDS = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")


#: Seconds a request refused by a cap on held requests is told to wait (429 Retry-After).
HELD_RETRY_AFTER_S = 10


class Hold:
    """One held request's place under its caps; released once, however the request ends."""

    def __init__(self, held: HeldRequests, user_id: int) -> None:
        self._held: HeldRequests | None = held
        self._user_id = user_id

    def release(self) -> None:
        if self._held is not None:
            self._held._release(self._user_id)
            self._held = None

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a request may not be held now (answered 429 with Retry-After)."""

    message: str


class HeldRequests:
    """Counts requests of one kind held open (log follows, waits): per user and in total.

    Each costs the server one descriptor or two for as long as it is held (docs/api.md,
    "Held requests"), so the caps keep one user from taking them all.
    """

    def __init__(
        self, what: str, max_per_user: int, max_total: int, settings: tuple[str, str]
    ) -> None:
        self.what = what
        self.max_per_user = max_per_user
        self.max_total = max_total
        self._per_user_setting, self._total_setting = settings
        self._by_user: Counter[int] = Counter()
        self.total = 0

    def take(self, user_id: int) -> Hold | Refused:
        if self.max_per_user and self._by_user[user_id] >= self.max_per_user:
            return Refused(
                f"Too many {self.what} held for user {user_id} (at most {self.max_per_user}, "
                f"{self._per_user_setting}); retry later"
            )
        if self.max_total and self.total >= self.max_total:
            return Refused(
                f"Too many {self.what} held on this server (at most {self.max_total}, "
                f"{self._total_setting}); retry later"
            )
        self._by_user[user_id] += 1
        self.total += 1
        return Hold(self, user_id)

    def held_by(self, user_id: int) -> int:
        return self._by_user[user_id]

    def _release(self, user_id: int) -> None:
        self.total -= 1
        self._by_user[user_id] -= 1
        if self._by_user[user_id] <= 0:
            del self._by_user[user_id]


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
