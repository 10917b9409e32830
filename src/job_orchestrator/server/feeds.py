"""One status channel per client: the server follows all its payloads on one of our clients
through that client's change feed (client/changes.py), one held `/changes` request at a time,
instead of one long-poll per running job. Its connections grow with clients, not with jobs.

Each job still has its collector task (collection.py); it waits here, in memory, for news of
its payload, and speaks to the client about it by id only twice: once when it starts following
(which makes this server instance the payload's holder on the client and renews its lease) and
once when the payload is final (to fetch the result, which also tells the client it was
collected). A client without a feed (the original's answers 404) is followed per job, as
before: `Ask.LONG_POLL`. The feed asks only while a collector waits on it (or to find out
that a failure is over): when every job there is in an ask of its own, or there is none,
nobody needs its news, and no payload needs its renewal.

The lease (docs/concepts/failure-semantics.md): every /changes request renews, at its send
time, the lease of each payload this instance holds on that client. Two rules keep a job from
running twice:
- the feed sends nothing while the fleet takes its client for down, so a node that is down
  for FAILOVER_AFTER has had no renewal for that long (`Fleet.fail_over` counts from the
  feed's last send, `Fleet.feed_asked_at`), as it had none from the per-job requests before;
- before its first request after revocations were recorded for its client (jobs failed over
  or given up while it was down), the feed kills those payloads: this server never renews
  what it gave up.
A payload whose dispatch answer was lost is never asked for by id, so never held, and the
feed never renews it (client/lease.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from dataclasses import dataclass, field

from job_orchestrator._loops import backoff_s, wait_any
from job_orchestrator.clock import SYSTEM_CLOCK, Clock
from job_orchestrator.config import NodeConfig
from job_orchestrator.errors import ClientCallError, TransientClientError
from job_orchestrator.server.node_calls import FeedEntry, FeedPage, NodeCalls, RetrieveResult
from job_orchestrator.server.nodes import Fleet
from job_orchestrator.status import Status

logger = logging.getLogger(__name__)

#: How long a /changes request may be held (the client answers within SERVER_LEASE/2).
FEED_WAIT_S = 25.0
#: How long a collector waits here with no news before it looks again (a wait costs no
#: request; news, a failing feed and the server's stop end it sooner).
FOLLOW_WAIT_S = 600.0
#: Failed requests in a row before the collectors are told (as nodes.FAILURES_BEFORE_DOWN).
FAILURES_BEFORE_FAILING = 2
#: Requests by id to one client at once: its connections stay few when thousands of jobs end.
ASKS_AT_ONCE = 16
#: First asks held at once per client (a short job ends in that one request). Each is held
#: only until its payload's first settled status (STATUS_SETTLE), so they turn over fast.
HELD_ASKS_AT_ONCE = 64


class Ask(enum.Enum):
    """What a job's collector must ask the client itself, the feed cannot answer it."""

    #: One plain /retrieve of the payload: it is final (fetch the outcome), or the feed has
    #: lost sight of it (a snapshot without it, another dispatch key under its id).
    BY_ID = enum.auto()
    #: The client has no change feed: long-poll its /retrieve, as for the original's client.
    LONG_POLL = enum.auto()


def _progress(status: Status) -> int:
    """How far along a status is: news is only ever a status further along than the known."""
    if status.is_terminal():
        return 2
    return 1 if status is Status.RUNNING else 0


@dataclass(slots=True)
class _Following:
    """A payload a collector follows: how many snapshots had arrived when it began, and an
    event set on news of it (one each: news of one payload wakes one collector)."""

    snapshots: int
    changed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class _Seen:
    entry: FeedEntry
    #: When the entry's status began, on this server's monotonic clock.
    since: float


class ClientFeed:
    """One client's change feed as this server follows it."""

    def __init__(
        self,
        node: NodeConfig,
        token: str | None,
        gateway: NodeCalls,
        fleet: Fleet,
        stop: asyncio.Event,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.node = node
        self._token = token
        self._gateway = gateway
        self._fleet = fleet
        self._stop = stop
        self._clock = clock
        #: None until the client first answered; False: it has no feed (Ask.LONG_POLL).
        self.supported: bool | None = None
        #: Why the last request failed (None: it did not).
        self.error: str | None = None
        self._cursor: str | None = None
        self._followed: dict[int, _Following] = {}
        #: Collectors waiting here now; the feed asks the client only while one does.
        self._waiting = 0
        self._wanted = asyncio.Event()
        self._seen: dict[int, _Seen] = {}
        self._snapshots = 0
        #: Collectors asking by id at once (the answers of a burst of endings come together),
        #: and those holding their first ask (collection.py `_ask`).
        self.asking = asyncio.Semaphore(ASKS_AT_ONCE)
        self.holding = asyncio.Semaphore(HELD_ASKS_AT_ONCE)

    @property
    def url(self) -> str:
        return self.node.upload_url

    # ---- a job's collector -----------------------------------------------------------------

    def follow(self, payload_id: int) -> None:
        """Keep what the feed says of this payload (before the collector first asks by id, so
        no change between that answer and the first wait is lost)."""
        if payload_id not in self._followed:
            self._followed[payload_id] = _Following(self._snapshots)

    def forget(self, payload_id: int) -> None:
        self._followed.pop(payload_id, None)
        self._seen.pop(payload_id, None)

    async def wait(
        self, payload_id: int, key: str | None, known: Status, wait_s: float, settle_s: float
    ) -> RetrieveResult | Ask:
        """Up to `wait_s`: news of a followed payload, a status further along than `known`
        that has held `settle_s` (a final one at once: Ask.BY_ID fetches it); `known` again
        if there is none. Raises TransientClientError while the feed's requests fail."""
        deadline = self._clock.monotonic() + wait_s
        self.follow(payload_id)
        following = self._followed[payload_id]
        while True:
            following.changed.clear()
            if self.supported is False:
                return Ask.LONG_POLL
            if self.error is not None:
                raise TransientClientError(self.error)
            timeout_s = deadline - self._clock.monotonic()
            seen = self._seen.get(payload_id)
            if seen is None:
                if following.snapshots != self._snapshots:
                    # A snapshot since, without it: ask the client, once for that snapshot.
                    following.snapshots = self._snapshots
                    return Ask.BY_ID
            elif key is not None and seen.entry.key != key:
                return Ask.BY_ID  # another job's payload under this id: the client says so
            elif _progress(seen.entry.status) > _progress(known):
                if seen.entry.status.is_terminal():
                    return Ask.BY_ID
                unsettled_s = settle_s - (self._clock.monotonic() - seen.since)
                if unsettled_s <= 0:
                    return self._news(seen.entry)
                timeout_s = min(timeout_s, unsettled_s)
            if timeout_s <= 0:
                return RetrieveResult(known, "", long_polled=True)
            # No task per wait: a wait is the common case, thousands at a time.
            self._waiting += 1
            self._wanted.set()
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout_s):
                        await following.changed.wait()
            finally:
                self._waiting -= 1
                if not self._waiting:
                    self._wanted.clear()
            if self._stop.is_set():
                return RetrieveResult(known, "", long_polled=True)

    def _news(self, entry: FeedEntry) -> RetrieveResult:
        started_at = None
        if entry.started_age is not None:
            started_at = self._clock.now() - entry.started_age
        return RetrieveResult(entry.status, "", long_polled=True, started_at=started_at)

    # ---- the feed's own loop ---------------------------------------------------------------

    async def run(self) -> None:
        """Hold /changes until the server stops (the loop of feeds.py's module doc)."""
        try:
            await self._run()
        finally:
            self._wake()  # the server stops: every collector waiting here returns

    async def _run(self) -> None:
        failures, was_down = 0, False
        while not self._stop.is_set():
            if self._fleet.is_down(self.url):
                # Nothing is sent: the leases of what it holds there run out (module doc).
                # Its collectors count this like their own failed calls, as they did.
                was_down = True
                if self.error is None:
                    self.error = f"client {self.url} is down"
                    self._wake()
                await self._pause()
                continue
            if was_down and self.supported is False:
                self.supported = None  # it may come back as another program: ask again
            was_down = False
            if self.supported is False:
                await self._pause()
                continue
            if not self._waiting and self.error is None:
                # Nobody to tell: every job here is being asked about by id, or there is none
                # (and what nobody waits for needs no renewal). The cursor keeps the changes.
                # After a failure it asks anyway: its collectors wait only once it answers.
                await self._pause(self._wanted)
                continue
            try:
                if not await self._fleet.flush_revocations(self.url):
                    raise TransientClientError(f"could not revoke payloads on {self.url}")
                self._fleet.feed_asked_at[self.url] = self._clock.now()
                page = await self._gateway.changes(
                    self.node, after=self._cursor, wait_s=FEED_WAIT_S, token=self._token
                )
            except ClientCallError as error:
                failures += 1
                self._failed(str(error), failures)
                await wait_any(self._stop.wait(), timeout_s=backoff_s(failures))
                continue
            failures = 0
            self._received(page)

    async def _pause(self, until: asyncio.Event | None = None) -> None:
        """Until the next look at the fleet (or `until` is set, or the server stops)."""
        events = (self._stop, *((until,) if until is not None else ()))
        await wait_any(
            *(event.wait() for event in events),
            timeout_s=self._fleet.settings.node_check_interval_s,
        )

    def _failed(self, reason: str, failures: int) -> None:
        """A request failed. From the second in a row, its collectors raise the error and
        count it like their own failed calls (one lost answer is only retried)."""
        if failures < FAILURES_BEFORE_FAILING:
            return
        if self.error is None:
            logger.warning("change feed of %s failed: %s", self.url, reason)
        self.error = reason
        self._wake()

    def _received(self, page: FeedPage | None) -> None:
        if self.error is not None:
            logger.info("change feed of %s answers again", self.url)
        self.error = None
        if page is None:
            if self.supported is not False:
                logger.info("client %s has no change feed: its jobs are polled each", self.url)
            self.supported = False
            self._wake()
            return
        self.supported = True
        now = self._clock.monotonic()
        if page.snapshot:
            self._snapshots += 1
            self._seen.clear()
        for entry in page.entries:
            following = self._followed.get(entry.id)
            if following is not None:
                self._seen[entry.id] = _Seen(entry, now - entry.age)
                following.changed.set()
        self._cursor = page.cursor
        if page.snapshot:
            self._wake()  # those it leaves out are asked for by id

    def _wake(self) -> None:
        """Wake every collector waiting here (the feed failed, ended, or said all)."""
        for following in self._followed.values():
            following.changed.set()


class Feeds:
    """The change feeds of every client of every service, one each (a client of several
    services is followed once)."""

    def __init__(
        self, fleet: Fleet, gateway: NodeCalls, stop: asyncio.Event, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._feeds = {
            node.upload_url: ClientFeed(node, token, gateway, fleet, stop, clock)
            for node, token in fleet.endpoints()
        }

    def of(self, url: str) -> ClientFeed | None:
        return self._feeds.get(url)

    def loops(self) -> list[asyncio.Task[None]]:
        return [
            asyncio.create_task(feed.run(), name=f"feed {url}") for url, feed in self._feeds.items()
        ]
