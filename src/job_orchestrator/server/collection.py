"""Collection: follow each job on its client until its outcome is known, and settle it.

One `JobCollector.collect` call per job on a client long-polls the client (or polls, for
clients without long-polling), mirrors Prepared/Running into the Store, enforces the
server's time-limit backstop, and writes the final status with a compare-and-set that a
shutdown cannot interrupt. Each runs in the job's one task (job_tasks.py).

Our client reports a status only once it has held for STATUS_SETTLE (`?settle=`), so a job
shorter than that costs one held request and no Store write before the final one; its start
comes as an age (seconds since run.sh started), dated here on this server's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from job_orchestrator._loops import backoff_s, forget, wait_any
from job_orchestrator.clock import SYSTEM_CLOCK, Clock
from job_orchestrator.config import ServerSettings, ServiceConfig
from job_orchestrator.errors import (
    ClientCallError,
    ClientLeftError,
    ClientUnauthorizedError,
    OutOfDescriptorsError,
    PayloadLostError,
    PermanentClientError,
    TransientClientError,
)
from job_orchestrator.server import lifecycle
from job_orchestrator.server.feeds import FOLLOW_WAIT_S, Ask, ClientFeed, Feeds
from job_orchestrator.server.jobfiles import RESULT_NAME, log_path, partial_path
from job_orchestrator.server.metrics import ServerMetrics
from job_orchestrator.server.node_calls import RetrieveResult
from job_orchestrator.server.node_client import NodeClient
from job_orchestrator.server.nodes import NOT_STARTED, Fleet
from job_orchestrator.server.storage import JobRecord, Store
from job_orchestrator.status import TERMINAL, Status

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: How long past a service's TIMEOUT the server itself kills a job (clients that cannot).
LIMIT_BACKSTOP_S = 60.0
#: How long the first ask about a payload may be held on a client with a feed (_ask).
FIRST_HOLD_S = 5.0


def job_fields(job: JobRecord) -> dict[str, object]:
    """The structured log fields of a job (LOG_FORMAT=json)."""
    return {"job_id": job.id, "service": job.service, "client": job.node}


class JobCollector:
    def __init__(
        self,
        settings: ServerSettings,
        store: Store,
        fleet: Fleet,
        metrics: ServerMetrics,
        stop: asyncio.Event,
        wake_dispatch: Callable[[], None],
        clock: Clock = SYSTEM_CLOCK,
        feeds: Feeds | None = None,
    ) -> None:
        self._settings = settings
        self._feeds = feeds
        self._clock = clock
        self._store = store
        self._fleet = fleet
        self._metrics = metrics
        self._stop = stop
        self._wake_dispatch = wake_dispatch

    async def collect(self, job: JobRecord, recorded: Awaitable[bool] | None = None) -> bool:
        """Follow one job on its client until it reaches a final status.

        `recorded`: the write of its Submitted (`job` as it will be), still under way. The
        first question to the client goes out meanwhile: that write is a commit the job's slot
        waits for (on PostgreSQL, a shared batch: tens of ms), and a short job has often ended
        by the time the client answers. Nothing is written here before it is done, since every
        write expects the job where it puts it. False: it was not made (the job moved
        meanwhile, a terminate), and nothing was written.
        """
        record = None if recorded is None else _Record(asyncio.ensure_future(recorded))
        feed = self._feeds.of(job.node) if self._feeds is not None and job.node else None
        if feed is not None:
            feed.follow(job.dest_id)
        try:
            await self._follow(job, feed, record)
        except _NotRecordedError:
            return False
        finally:
            if record is not None:
                forget(record.write)  # cancelled with the task: its commit may still be made
            self._fleet.asked_at.pop(job.id, None)
            if feed is not None:
                feed.forget(job.dest_id)
        return True

    async def _follow(
        self, job: JobRecord, feed: ClientFeed | None, record: _Record | None
    ) -> None:
        try:
            client = self._fleet.client_for(job)
        except ClientLeftError as error:
            # At once: only a restart with another configuration brings it back, and in the
            # meantime the job would hold its user's slot (docs/concepts/failure-semantics.md).
            await _written(record)
            await self.fail(job, lifecycle.FAIL_ON_CLIENT, f"job lost: {error}")
            return
        service = self._settings.services.get(job.service)
        if service is None or client is None:
            await _written(record)
            await self.fail(
                job, lifecycle.FAIL_ON_CLIENT, f"service {job.service!r} is not configured"
            )
            return
        known, failures, failing_since = job.status, 0, None
        # Asked by id first (which makes this server the payload's holder there), then
        # through the client's feed; per job only where the client has no feed (feeds.py).
        ask: Ask | None = Ask.BY_ID if feed is not None else Ask.LONG_POLL
        # Clients enforce the limit themselves; this backstop covers those that cannot.
        limit_at = (
            (job.dispatched_at or self._clock.now()) + service.timeout_s + LIMIT_BACKSTOP_S
            if service.timeout_s
            else None
        )
        while not self._stop.is_set():
            # A wait on the feed costs no request: it may be long (it wakes on any news).
            wait_s = self._settings.long_poll_s if ask is not None else FOLLOW_WAIT_S
            if limit_at is not None:
                if self._clock.now() >= limit_at:
                    await _written(record)
                    await self._enforce_time_limit(job, client, service)
                    return
                wait_s = max(0.1, min(wait_s, limit_at - self._clock.now()))
            try:
                answer = self._answer(client, job, feed, ask, known, wait_s)
                if record is not None:
                    answer, record = record.after(answer), None
                ask, result = await answer
            except (TransientClientError, ClientUnauthorizedError) as error:
                if isinstance(error, ClientUnauthorizedError):
                    # Retried like a lost contact: it recovers once the tokens agree.
                    self._fleet.report_refusing(client.url, "unauthorized")
                    reason = ClientUnauthorizedError.MESSAGE
                elif isinstance(error, OutOfDescriptorsError):  # ours, not the client's
                    reason = f"the server is out of file descriptors: {error}"
                else:
                    self._fleet.report_failure(client.url, reason=str(error))
                    reason = f"lost contact with the client: {error}"
                failures += 1
                failing_since = failing_since or self._clock.now()
                if self._clock.now() - failing_since >= self._settings.retry_deadline_s:
                    # If the client comes back, the script must not run on unaccounted for.
                    await self._fleet.revoke(client.url, job)
                    await self.fail(job, lifecycle.FAIL_ON_CLIENT, reason)
                    return
                await wait_any(self._stop.wait(), timeout_s=backoff_s(failures))
                while (
                    known in NOT_STARTED
                    and self._fleet.is_down(client.url)
                    and not self._stop.is_set()
                ):
                    # Stop asking about it: its lease on the client runs out, so failover
                    # can move it without the client starting it too.
                    await wait_any(
                        self._stop.wait(), timeout_s=self._settings.node_check_interval_s
                    )
                continue
            except PayloadLostError as error:
                await self._payload_lost(job, str(error))
                return
            except (PermanentClientError, OSError) as error:
                await self.fail(
                    job, lifecycle.FAIL_ON_CLIENT, f"could not collect the result: {error}"
                )
                return
            asked, ask = ask, None if feed is not None else Ask.LONG_POLL
            failures, failing_since = 0, None
            # Learnt at the end only: the Running of a short job was never reported.
            late_start = result.started_at if known is not Status.RUNNING else None
            if result.status is Status.COMPLETED:
                if result.log_bytes == 0:
                    # Nothing to fetch: LogKeeper finds this copy and asks the client nothing.
                    with contextlib.suppress(OSError):
                        log_path(job.loc).touch()
                await self._settle(
                    job, Status.COMPLETED, result.message, result.exit_code, late_start
                )
                return
            if result.status in TERMINAL:
                if result.status is Status.CLEANED:
                    await self._settle(
                        job,
                        Status.FAILED,
                        "the client removed the payload before its result was collected",
                    )
                    return
                await self.keep_partial(job, client)
                await self._settle(job, result.status, result.message, result.exit_code, late_start)
                return
            if result.status in lifecycle.ON_CLIENT_REPORT.reaches and result.status is not known:
                if not await lifecycle.mark_on_client(
                    self._store, job.id, result.status, result.started_at or self._clock.now()
                ):
                    return  # terminated or otherwise moved by someone else
                known = result.status
            if asked is Ask.LONG_POLL and not result.long_polled:
                await wait_any(self._stop.wait(), timeout_s=self._settings.poll_interval_s)

    async def _answer(
        self,
        client: NodeClient,
        job: JobRecord,
        feed: ClientFeed | None,
        ask: Ask | None,
        known: Status,
        wait_s: float,
    ) -> tuple[Ask | None, RetrieveResult]:
        """The client's next word on the job, from its feed or by asking (`ask`), and how it
        was asked."""
        if feed is not None and ask is None:
            news = await feed.wait(
                job.dest_id, job.dispatch_key, known, wait_s, self._settings.status_settle_s
            )
            if not isinstance(news, Ask):
                return None, news
            ask = news
        assert ask is not None
        return ask, await self._ask(client, job, ask, known, wait_s, feed)

    async def _ask(
        self,
        client: NodeClient,
        job: JobRecord,
        ask: Ask,
        known: Status,
        wait_s: float,
        feed: ClientFeed | None,
    ) -> RetrieveResult:
        """Ask the client about the job's payload itself (feeds.py `Ask`).

        The first ask after a dispatch (known: Submitted) is held a little, a bounded number
        at a time per client: a short job then ends in that one request, as before the feed.
        """
        hold_s, settle_s = min(wait_s, self._settings.long_poll_s), self._settings.status_settle_s
        slots: contextlib.AbstractAsyncContextManager[object] = contextlib.nullcontext()
        if feed is not None and ask is Ask.BY_ID:
            if known is Status.SUBMITTED and not feed.holding.locked():
                slots, hold_s = feed.holding, min(wait_s, FIRST_HOLD_S)
            else:
                # The answers of a burst of endings come together: a few at a time.
                slots, hold_s, settle_s = feed.asking, 0.0, 0.0
        async with slots:
            self._fleet.asked_at[job.id] = self._clock.now()
            return await client.retrieve(
                job.dest_id,
                Path(job.loc) / RESULT_NAME,
                key=job.dispatch_key,
                wait_s=hold_s,
                known=known,
                settle_s=settle_s,
            )

    async def _enforce_time_limit(
        self, job: JobRecord, client: NodeClient, service: ServiceConfig
    ) -> None:
        try:
            await client.kill(job.dest_id, key=job.dispatch_key)
        except ClientCallError as error:
            logger.warning("could not kill job %d past its time limit: %s", job.id, error)
        await self.keep_partial(job, client)
        await self._settle(
            job, Status.FAILED, f"wall-time limit of {service.timeout_s:g} s exceeded"
        )

    async def _settle(
        self,
        job: JobRecord,
        status: Status,
        message: str,
        exit_code: int | None = None,
        started_at: float | None = None,
    ) -> None:
        # Shielded: once the client told us the outcome, a shutdown must not lose it.
        outcome = lifecycle.Outcome(status, message, exit_code, started_at)
        if await asyncio.shield(lifecycle.settle(self._store, job.id, outcome)):
            self._metrics.job_finished(job, status, ran=True)
            logger.info("job %d finished: %s", job.id, status.wire, extra=job_fields(job))
        self._wake_dispatch()

    async def keep_partial(self, job: JobRecord, client: NodeClient) -> None:
        """Copy a failed job's files to the server so /download_partial outlives the client.

        The client streams the copy as it zips it, so only a deadline of our own bounds it (a
        sparse terabyte zips for a quarter of an hour, into a stream that never stalls).
        """
        limit_s = self._settings.partial_keep_timeout_s
        try:
            async with asyncio.timeout(limit_s):
                await client.fetch_partial(job.dest_id, partial_path(job.loc), key=job.dispatch_key)
        except TimeoutError:
            logger.warning(
                "could not keep the files of job %d: the copy took more than "
                "PARTIAL_KEEP_TIMEOUT (%g s)",
                job.id,
                limit_s,
            )
        except (ClientCallError, OSError) as error:
            logger.warning("could not keep the files of job %d: %s", job.id, error)

    async def _payload_lost(self, job: JobRecord, reason: str) -> None:
        if job.attempts + 1 >= self._settings.dispatch_attempts:
            await self.fail(
                job,
                lifecycle.FAIL_ON_CLIENT,
                f"payload lost on the client {job.attempts + 1} times: {reason}",
            )
            return
        logger.warning("job %d: %s; dispatching it again", job.id, reason)
        # A fresh key: the client lost the old payload, it must create a new one.
        await lifecycle.requeue_lost(self._store, job)
        self._wake_dispatch()

    async def fail(self, job: JobRecord, move: lifecycle.Move, message: str) -> None:
        """Fail the job with `message` if it is still where `move` (a FAIL_* move) takes it."""
        logger.warning("job %d failed: %s", job.id, message, extra=job_fields(job))
        if await lifecycle.fail(self._store, job.id, move, message):
            self._metrics.job_finished(job, Status.FAILED)
        self._wake_dispatch()


class _NotRecordedError(Exception):
    """The job's Submitted was not written: it moved while its dispatch was in flight."""


@dataclass(frozen=True)
class _Record:
    """The write of a job's Submitted, under way while its first answer is asked for."""

    write: asyncio.Future[bool]

    async def after(self, answer: Awaitable[T]) -> T:
        """`answer` (asked at once), once the write is made; _NotRecordedError if it was not.
        The client's answer, or its error, is acted on only then."""
        asking = asyncio.ensure_future(answer)
        try:
            await _written(self)
        except BaseException:
            forget(asking)
            raise
        return await asking


async def _written(record: _Record | None) -> None:
    """Return once the job's Submitted is written (at once without a pending write)."""
    if record is not None and not await record.write:
        raise _NotRecordedError
