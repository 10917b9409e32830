"""Wake-ups across replicas on PostgreSQL: NOTIFY where it matters, LISTEN on a connection
of its own.

The Store notifies right after the change commits (whatever committed meanwhile in one
statement, outside the writers' transactions: see `take_announcements`), on a new job, a job
back in the queue and a job reaching a final status (a freed slot; the final one also
carries the job id for held `?wait=` requests). Every replica listens; its listener
reconnects by itself after the database restarts, and then wakes its dispatcher once, for
whatever was announced while it was not listening.

Its connection also elects the replica that dispatches: the one holding a session advisory
lock (`LEAD_DISPATCH`) on it. Every replica's decision still takes the per-service lock in
its own transaction, so the election saves work and never guards a quota: with no leader,
or two for a moment, dispatch stays correct. When the leader's connection ends (the process
died, the database restarted) PostgreSQL releases the lock, and another replica takes it at
its next check, within CHECK_INTERVAL_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Container
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from job_orchestrator._loops import backoff_s

logger = logging.getLogger(__name__)

DISPATCH_CHANNEL = "job_orchestrator_dispatch"
FINAL_CHANNEL = "job_orchestrator_final"
#: Where a transaction's announcements wait for its end, in the connection's `info`.
_ANNOUNCEMENTS = "job_orchestrator_announcements"
#: Every announcement made since the last, in one statement outside any transaction.
NOTIFY_ALL = (
    "SELECT pg_notify(channel, payload) FROM unnest($1::text[], $2::text[]) AS n(channel, payload)"
)

Announcements = dict[tuple[str, str], None]
#: Seconds between checks that the listening connection is still alive.
CHECK_INTERVAL_S = 2.0
#: The session lock whose holder dispatches (Listener.leading).
LEAD_DISPATCH = "SELECT pg_try_advisory_lock(hashtext('job-orchestrator:dispatch-leader'))"
#: What a lost or refused connection raises.
CONNECTION_LOST = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def announce(connection: Connection, channel: str, payload: str = "") -> None:
    """NOTIFY `channel` once this transaction has committed (see `take_announcements`)."""
    connection.info.setdefault(_ANNOUNCEMENTS, {})[(channel, payload)] = None


def forget_announcements(connection: Connection) -> None:
    """At a transaction's start: what a rolled-back one announced is not sent."""
    connection.info.pop(_ANNOUNCEMENTS, None)


def take_announcements(connection: Connection) -> Announcements:
    """What this transaction announced, each once, to send after its COMMIT.

    Not in the transaction itself: PostgreSQL takes a database-wide lock to commit a
    transaction that notified, and holds it through the WAL flush, so transactions that
    notify commit one at a time; our writers' commits queued behind it (bench/README.md).
    Sent after the commit, a wake-up can be lost with a crash in between; the dispatchers'
    safety tick and the `?wait=` timeouts cover that, as they cover a restarted listener.
    """
    taken: Announcements = connection.info.pop(_ANNOUNCEMENTS, {})
    return taken


def asyncpg_dsn(url: str) -> str:
    """The asyncpg DSN of a SQLAlchemy `postgresql+asyncpg://` URL.

    SQLAlchemy hands `?ssl=` to asyncpg.connect as its `ssl` argument; in a DSN asyncpg reads
    the same choice as `sslmode` and would send an `ssl` parameter to the server as a setting,
    which the server refuses. So the read pool and the listener connect as the engine does.
    """
    parsed = sa.make_url(url).set(drivername="postgresql")
    query = dict(parsed.query)
    if "ssl" in query:
        query["sslmode"] = query.pop("ssl")
    return parsed.set(query=query).render_as_string(hide_password=False)


class Listener:
    """Hears the other replicas' announcements.

    Not this process's own: it acted on them when it made them (the Store's final listeners,
    the engine's dispatch wake-ups), and hearing them again made every final job read and
    its log copied twice (bench/README.md). They are told apart by the database session
    they were sent from, `own`, which the announcer adds to before it sends: NOTIFY's
    payloads and channels stay what replicas of other versions read.
    """

    def __init__(
        self,
        dsn: str,
        on_dispatch: Callable[[], None],
        on_final: Callable[[int], None],
        own: Container[int] = frozenset(),
    ) -> None:
        self._dsn = dsn
        self._on_dispatch = on_dispatch
        self._on_final = on_final
        self._own = own
        self._task: asyncio.Task[None] | None = None
        #: Whether this replica holds LEAD_DISPATCH (only while its connection lives).
        self.leading = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen_loop(), name="notify_listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _listen_loop(self) -> None:
        failures = 0
        while True:
            try:
                connection = await asyncpg.connect(self._dsn, timeout=5)
            except CONNECTION_LOST as error:
                failures += 1
                if failures == 1:
                    logger.warning("cannot listen for wake-ups: %s; retrying", error)
                await asyncio.sleep(backoff_s(failures, cap_s=5.0))
                continue
            try:
                await connection.add_listener(DISPATCH_CHANNEL, self._dispatch)
                await connection.add_listener(FINAL_CHANNEL, self._final)
                if failures:
                    logger.info("listening for wake-ups again")
                failures = 0
                missed = True  # whatever was announced before this connection listened
                while True:
                    was_leading = self.leading
                    # A held lock is kept (a second take would only stack it): a ping.
                    check = "SELECT 1" if was_leading else LEAD_DISPATCH
                    answer = await asyncio.wait_for(connection.fetchval(check), timeout=5)
                    if not was_leading and answer is True:
                        self.leading = True
                        logger.info("this replica now dispatches for every replica")
                    if missed or self.leading != was_leading:
                        missed = False
                        self._on_dispatch()
                    await asyncio.sleep(CHECK_INTERVAL_S)
            except CONNECTION_LOST as error:
                failures += 1
                logger.warning("lost the wake-up connection: %s; reconnecting", error)
            finally:
                # The lock goes with the connection (or is about to, if it only seems lost).
                self.leading = False
                with contextlib.suppress(*CONNECTION_LOST):
                    await asyncio.wait_for(connection.close(), timeout=2)

    def _dispatch(self, _connection: Any, pid: int, _channel: str, _payload: str) -> None:
        if pid not in self._own:
            self._on_dispatch()

    def _final(self, _connection: Any, pid: int, _channel: str, payload: str) -> None:
        if pid in self._own:
            return
        with contextlib.suppress(ValueError):
            self._on_final(int(payload))
