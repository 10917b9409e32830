"""The callback delivery loop: POST each final job's signed status to its callback URL.

The loop wakes when this process moves a job to a final status (the Store's `on_final`), when
an attempt ends, when the next retry falls due, or on a slow fallback tick (deliveries made due
by another replica, or left by one that died). Each attempt is claimed in the Store with a
compare-and-set and a lease (`claim_callback`), runs in its own task bounded by
CALLBACK_TIMEOUT, and its outcome is written shielded from cancellation. On shutdown the loop
stops claiming, gives attempts in flight a short grace, then cancels them and releases their
claims so the next start makes them again at once. Delivery is at least once: an attempt cut
short after the receiver got it (a crash, a lost answer) is made again.

Attempts in flight are shared between users: one user holds at most MAX_IN_FLIGHT_PER_USER of
them, so a user whose receivers are slow (or who queued thousands of callbacks) delays only
their own callbacks, never another user's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import uuid
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import httpx

from job_orchestrator import __version__
from job_orchestrator._loops import Wakeup, backoff_s, wait_any
from job_orchestrator.clock import SYSTEM_CLOCK, Clock
from job_orchestrator.config import ServerSettings
from job_orchestrator.errors import StoreError
from job_orchestrator.server.callbacks import (
    AddressPolicy,
    CallbackURLError,
    ClientEndpoints,
    IPAddress,
    callback_body,
    delivery_id,
    parse_callback_url,
    resolve_permitted,
    signed_headers,
)
from job_orchestrator.server.storage import Store
from job_orchestrator.server.storage.callback_verbs import CallbackRecord, CallbackState
from job_orchestrator.status import Status

logger = logging.getLogger(__name__)

#: Attempts in flight at once in this process.
MAX_IN_FLIGHT = 16
#: Of which one user may hold at most this many (the others stay free for other users).
MAX_IN_FLIGHT_PER_USER = 4
#: A lease outlives its attempt's timeout by this much, for the outcome's write.
LEASE_MARGIN_S = 5.0
#: Retries back off from 1 s, doubling up to this, with jitter.
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 600.0
#: The loop looks for due deliveries at least this often, for those no event announces here.
FALLBACK_TICK_S = 30.0
#: Wait after a database error before looking again.
STORE_RETRY_S = 5.0
#: How long attempts in flight may finish on shutdown before they are cut short.
DRAIN_GRACE_S = 5.0
DISABLED = "callbacks are disabled on this server (CALLBACK_SECRET is not set)"


class CallbackDeliverer:
    def __init__(
        self,
        settings: ServerSettings,
        store: Store,
        *,
        fallback_tick_s: float = FALLBACK_TICK_S,
        clock: Clock = SYSTEM_CLOCK,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`transport`: where the POSTs go (default: the network); the engine tier gives a
        receiver in process."""
        self._clock = clock
        self.policy = AddressPolicy.from_settings(settings)
        self.clients = ClientEndpoints.from_settings(settings)
        self._secret = settings.callback_secret
        self._deadline_s = settings.callback_deadline_s
        self._timeout_s = settings.callback_timeout_s
        self._store = store
        self._fallback_tick_s = fallback_tick_s
        self._wakeup = Wakeup()
        self._stop = asyncio.Event()
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        #: The user of each job in flight (the fair share is counted from it).
        self._in_flight_users: dict[int, int | None] = {}
        self._writes: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.Task[None] | None = None
        # No proxies from the environment (they would bypass the address check), no redirects
        # (a 3xx is a failed attempt), no kept connections (each is pinned to one checked
        # address and, for https, verified for one host name). SSL_CERT_FILE / SSL_CERT_DIR
        # still choose the trusted certificates (a private CA for intranet receivers).
        self._http = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            verify=httpx.create_ssl_context(trust_env=True),
            timeout=self._timeout_s,
            limits=httpx.Limits(max_keepalive_connections=0),
            transport=transport,
        )
        store.on_final(lambda _job_id: self._wakeup.set())

    @property
    def enabled(self) -> bool:
        return self._secret is not None

    async def accept_url(self, raw: str) -> str:
        """The callback URL to store for an upload; CallbackURLError says why it is refused."""
        if not self.enabled:
            raise CallbackURLError(DISABLED)
        url = parse_callback_url(raw)
        try:
            async with asyncio.timeout(self._timeout_s):
                await resolve_permitted(url, self.policy, self.clients)
        except TimeoutError:
            raise CallbackURLError(
                f"host {url.host!r} did not resolve within {self._timeout_s:g} s"
            ) from None
        return str(url)

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.enabled:
            with contextlib.suppress(StoreError):
                if await self._store.next_callback_at() is not None:
                    logger.warning("callbacks are pending but CALLBACK_SECRET is not set: held")
            return
        self._loop = asyncio.create_task(self._deliver_loop(), name="callback_loop")
        self._loop.add_done_callback(self._loop_died)

    async def stop(self) -> None:
        self._stop.set()
        if self._loop is not None:
            await asyncio.gather(self._loop, return_exceptions=True)
        attempts = list(self._in_flight.values())
        if attempts:
            await asyncio.wait(attempts, timeout=DRAIN_GRACE_S)
            for task in attempts:
                task.cancel()
            await asyncio.gather(*attempts, return_exceptions=True)
        await asyncio.gather(*self._writes, return_exceptions=True)
        await self._http.aclose()

    def _loop_died(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stop.is_set():
            return
        logger.critical("callback loop died: %r; stopping the server", task.exception())
        os.kill(os.getpid(), signal.SIGTERM)

    # ---- the loop --------------------------------------------------------------------------

    async def _deliver_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.deliver_once()
                # At capacity, the end of an attempt wakes the loop: more due ones must wait.
                full = len(self._in_flight) >= MAX_IN_FLIGHT
                next_at = (
                    None
                    if full
                    else await self._store.next_callback_at(
                        self._in_flight, exclude_users=self._users_at_share()
                    )
                )
            except StoreError:
                logger.exception("callback delivery failed; retrying in %g s", STORE_RETRY_S)
                next_at = self._clock.now() + STORE_RETRY_S
            timeout_s = self._fallback_tick_s
            if next_at is not None:
                timeout_s = min(timeout_s, max(0.0, next_at - self._clock.now()) + 0.01)
            await wait_any(self._wakeup.wait(), self._stop.wait(), timeout_s=timeout_s)

    def _users_at_share(self) -> set[int]:
        held = Counter(user for user in self._in_flight_users.values() if user is not None)
        return {user for user, count in held.items() if count >= MAX_IN_FLIGHT_PER_USER}

    async def deliver_once(self) -> int:
        """Claim the due deliveries (as many as there is room for, each user within their
        share) and start their attempts."""
        started = 0
        while (free := MAX_IN_FLIGHT - len(self._in_flight)) > 0 and not self._stop.is_set():
            batch = await self._store.due_callbacks(
                self._clock.now(),
                free,
                exclude=self._in_flight,
                exclude_users=self._users_at_share(),
            )
            started_now = await self._start_within_shares(batch)
            started += started_now
            if started_now == 0:
                break  # nothing claimable now (claimed elsewhere, or every user at their share)
        return started

    async def _start_within_shares(self, batch: list[CallbackRecord]) -> int:
        started = 0
        for due in batch:
            at_share = self._users_at_share()
            if due.user_id in at_share or len(self._in_flight) >= MAX_IN_FLIGHT:
                continue
            now = self._clock.now()
            token = uuid.uuid4().hex
            claimed = await self._store.claim_callback(
                due.job_id,
                due.attempts,
                token=token,
                lease_until=now + self._timeout_s + LEASE_MARGIN_S,
                body=callback_body(due.job_id, due.job_status or Status.UNKNOWN, due.job_message),
                now=now,
            )
            if claimed is None:
                continue  # another loop or replica was first
            task = asyncio.create_task(self._attempt(claimed, token), name=f"callback-{due.job_id}")
            self._in_flight[due.job_id] = task
            self._in_flight_users[due.job_id] = due.user_id
            task.add_done_callback(functools.partial(self._attempt_done, due.job_id))
            started += 1
        return started

    def _attempt_done(self, job_id: int, task: asyncio.Task[None]) -> None:
        if self._in_flight.get(job_id) is task:
            del self._in_flight[job_id]
            self._in_flight_users.pop(job_id, None)
        if not task.cancelled() and (error := task.exception()) is not None:
            # Its lease runs out and the attempt is made again.
            logger.error("callback attempt of job %d failed: %r", job_id, error, exc_info=error)
        self._wakeup.set()

    # ---- one attempt -----------------------------------------------------------------------

    async def _attempt(self, delivery: CallbackRecord, token: str) -> None:
        try:
            error = await self._post(delivery)
        except asyncio.CancelledError:
            await self._shielded(self._store.release_callback(delivery.job_id, token))
            raise
        except Exception as unexpected:
            # Settled like any failed attempt, so backoff and the deadline still apply.
            logger.exception("callback attempt of job %d failed unexpectedly", delivery.job_id)
            error = f"internal error: {unexpected!r}"
        await self._shielded(self._settle(delivery, token, error))

    async def _shielded(self, write: Coroutine[Any, Any, Any]) -> None:
        """Await a Store write that a cancellation must not cut off (stop() awaits it)."""
        task = asyncio.create_task(write)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        await asyncio.shield(task)

    async def _settle(self, delivery: CallbackRecord, token: str, error: str | None) -> None:
        job_id, attempt = delivery.job_id, delivery.attempts
        now = self._clock.now()
        fields = {"job_id": job_id, "attempt": attempt}
        if error is None:
            state, next_at = CallbackState.DELIVERED, None
            logger.info("callback of job %d delivered (attempt %d)", job_id, attempt, extra=fields)
        elif now >= (deadline := (delivery.first_attempt_at or now) + self._deadline_s):
            state, next_at = CallbackState.EXPIRED, None
            logger.warning(
                "callback of job %d given up after %d attempts (CALLBACK_DEADLINE): %s",
                job_id,
                attempt,
                error,
                extra=fields,
            )
        else:
            state = CallbackState.PENDING
            next_at = min(
                now + backoff_s(attempt, base_s=BACKOFF_BASE_S, cap_s=BACKOFF_CAP_S), deadline
            )
            logger.info(
                "callback of job %d failed (attempt %d): %s; next in %.1f s",
                job_id,
                attempt,
                error,
                next_at - now,
                extra=fields,
            )
        try:
            kept = await self._store.settle_callback(
                job_id, token, state, now=now, next_attempt_at=next_at, error=error
            )
        except StoreError:
            logger.exception("callback of job %d: outcome not stored; it is sent again", job_id)
            return
        if not kept:
            logger.warning("callback of job %d: its lease ran out before the answer", job_id)

    async def _post(self, delivery: CallbackRecord) -> str | None:
        """Make one attempt; None on a 2xx answer, else why it failed."""
        assert delivery.body is not None
        assert self._secret is not None
        assert delivery.first_attempt_at is not None, "set by the claim"
        delivery_of_job = delivery_id(delivery.job_id, delivery.first_attempt_at)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"job-orchestrator/{__version__}",
            **signed_headers(self._secret, delivery_of_job, delivery.url, delivery.body),
        }
        try:
            url = parse_callback_url(delivery.url)
            async with asyncio.timeout(self._timeout_s):
                # Checked again now: the name may point elsewhere than at upload.
                addresses = await resolve_permitted(url, self.policy, self.clients)
                return await self._post_to_any(url, addresses, delivery.body, headers)
        except CallbackURLError as error:
            return f"not sent: {error}"
        except TimeoutError:
            return f"no answer within CALLBACK_TIMEOUT ({self._timeout_s:g} s)"

    async def _post_to_any(
        self, url: httpx.URL, addresses: list[IPAddress], body: bytes, headers: dict[str, str]
    ) -> str | None:
        failure = "no address"
        for address in addresses:
            request = self._http.build_request(
                "POST",
                url.copy_with(host=str(address)),
                content=body,
                # The name as given, for virtual hosts and (https) the certificate check.
                headers={**headers, "Host": url.netloc.decode("ascii")},
                extensions={"sni_hostname": url.raw_host.decode("ascii")}
                if url.scheme == "https"
                else {},
            )
            try:
                response = await self._http.send(request, stream=True)
            except httpx.ConnectError as error:
                failure = f"cannot connect to {address}: {error or type(error).__name__}"
                continue  # nothing was sent: the next address may answer
            except (httpx.HTTPError, OSError) as error:
                return f"{type(error).__name__} from {address}: {error}"
            await response.aclose()
            if 200 <= response.status_code < 300:
                return None
            if response.is_redirect:
                return f"HTTP {response.status_code} (redirects are not followed)"
            return f"HTTP {response.status_code}"
        return failure
