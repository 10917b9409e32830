"""The Store's verbs for completion callbacks (one stored delivery per job that asked).

A delivery is pending from the upload until a 2xx answer (delivered) or its deadline
(expired). It becomes due once its job is final. Each attempt is claimed with a
compare-and-set on the attempt count plus a lease, so two loops or two replicas never make
the same attempt at once; an attempt whose claimer died is made again when its lease runs out
(delivery is at least once).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Collection
from dataclasses import dataclass

from job_orchestrator.status import Status


class CallbackState(enum.Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class CallbackRecord:
    job_id: int
    url: str
    state: CallbackState
    #: Attempts claimed so far (the one in flight included).
    attempts: int
    next_attempt_at: float | None
    lease_until: float | None
    #: The exact bytes every attempt sends, fixed by the first claim.
    body: bytes | None
    first_attempt_at: float | None
    last_error: str | None
    delivered_at: float | None
    #: The job's status and message, where the query read them (None otherwise).
    job_status: Status | None = None
    job_message: str = ""
    #: The job's user, where the query read it (None otherwise).
    user_id: int | None = None


class CallbackVerbs(abc.ABC):
    @abc.abstractmethod
    async def due_callbacks(
        self,
        now: float,
        limit: int,
        exclude: Collection[int] = (),
        exclude_users: Collection[int] = (),
    ) -> list[CallbackRecord]:
        """Pending deliveries of final jobs whose next attempt is due and not leased, oldest
        due first, with the job's status, message and user; `exclude` are job ids in flight
        here, `exclude_users` users who have all the attempts in flight they may have."""

    @abc.abstractmethod
    async def next_callback_at(
        self, exclude: Collection[int] = (), exclude_users: Collection[int] = ()
    ) -> float | None:
        """When the next pending delivery of a final job becomes due (a time in the past if
        one is due now), or None when there is none (`exclude*` as in due_callbacks)."""

    @abc.abstractmethod
    async def claim_callback(
        self,
        job_id: int,
        attempts_seen: int,
        *,
        token: str,
        lease_until: float,
        body: bytes,
        now: float,
    ) -> CallbackRecord | None:
        """Claim the next attempt if the delivery still has `attempts_seen` attempts, is due
        and unleased: count it, lease it to `token`, fix the body (kept if already fixed).
        Returns the claimed delivery, or None if another claimer was first."""

    @abc.abstractmethod
    async def settle_callback(
        self,
        job_id: int,
        token: str,
        state: CallbackState,
        *,
        now: float,
        next_attempt_at: float | None = None,
        error: str | None = None,
    ) -> bool:
        """End the attempt leased to `token`: delivered, expired, or pending again (retried at
        `next_attempt_at`). False if the lease was lost (another claimer took over)."""

    @abc.abstractmethod
    async def release_callback(self, job_id: int, token: str) -> bool:
        """Give up the lease of an attempt cut short (a shutdown), so it is made again at once."""
