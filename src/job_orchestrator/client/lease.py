"""The server's lease on unstarted payloads: one starts only while the server still wants it.

A payload waiting for a MAX_CONCURRENT slot starts only if the server asked about it (a
`/retrieve` of its id) within SERVER_LEASE seconds. The server fails a job over to another
client only after it stopped asking about it for FAILOVER_AFTER (longer than the lease), so by
then the old client no longer starts it: a frozen or cut-off client cannot run it twice.

"Asked" counts from when the server *sent* the request, not from when it arrived: a request
that waited in the socket of a frozen client (or in the network) is old news. Our server
stamps each request with its own monotonic clock (`X-Orchestrator-Clock: <instance>
<seconds>`); the smallest observed (arrival - stamp) of an instance is its prompt delivery, so
`stamp + that offset` is the send time on this client's clock, without synchronised clocks.
Requests without the header (the original server polls every 500 ms) count on arrival.

A server follows a client's payloads through one change feed (changes.py) rather than a
request per payload. Its /changes requests renew, at their send time, the lease of every
payload it *holds*: the last server instance to /retrieve the payload (`Payload.holder`). So
a payload is renewed by the feed only after its server asked for it by id once. A dispatch
whose answer was lost made a payload the server never learnt the id of: it never asks for it,
never holds it, and its feed never renews it, so the payload never starts, exactly as before
(docs/concepts/failure-semantics.md, "The lease").
"""

from __future__ import annotations

import asyncio
import math

from job_orchestrator.clock import SYSTEM_CLOCK, Clock

#: How fast the smallest offset is let drift up (clock rates differ by far less).
_DRIFT_PER_S = 1e-3
_MAX_INSTANCES = 16


def stamp_instance(clock: str | None) -> str | None:
    """The server instance of an `X-Orchestrator-Clock` stamp (None without one)."""
    instance, _, _ = (clock or "").partition(" ")
    return instance or None


class ServerLease:
    def __init__(self, lease_s: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self.lease_s = lease_s
        self._clock = clock
        self._asked_at: dict[int, float] = {}
        self._offsets: dict[str, tuple[float, float]] = {}  # instance -> (offset, seen at)
        #: Server instance -> when it last sent a /changes: renews what it holds.
        self._holder_asked_at: dict[str, float] = {}
        self._renewed: dict[int, asyncio.Event] = {}

    def asked(self, payload_id: int, clock: str | None) -> None:
        """The server asked about this payload (in a request stamped `clock`, if any)."""
        _, sent_at = self._sent_at(clock, self._clock.monotonic())
        if sent_at > self._asked_at.get(payload_id, -math.inf):
            self._asked_at[payload_id] = sent_at
        self.wake(payload_id)

    def asked_by(self, clock: str | None) -> str | None:
        """A server asked for its changes (a request stamped `clock`): it still wants every
        payload it holds. Its instance, or None for a request without a stamp (renews none)."""
        instance, sent_at = self._sent_at(clock, self._clock.monotonic())
        if instance is None:
            return None
        if sent_at > self._holder_asked_at.get(instance, -math.inf):
            self._holder_asked_at[instance] = sent_at
            while len(self._holder_asked_at) > _MAX_INSTANCES:
                del self._holder_asked_at[next(iter(self._holder_asked_at))]
        for event in self._renewed.values():
            event.set()
        return instance

    def held(self, payload_id: int, holder: str | None = None) -> bool:
        """Whether the lease is held now, asked for by id or through its holder's feed; if
        not, renewed() returns on the next wake()."""
        asked_at = self._asked_at.get(payload_id, -math.inf)
        if holder is not None:
            asked_at = max(asked_at, self._holder_asked_at.get(holder, -math.inf))
        if self._clock.monotonic() - asked_at < self.lease_s:
            return True
        self._renewed.setdefault(payload_id, asyncio.Event()).clear()
        return False

    def wake(self, payload_id: int) -> None:
        """Wake whoever waits in renewed() (asked again, or killed)."""
        event = self._renewed.get(payload_id)
        if event is not None:
            event.set()

    async def renewed(self, payload_id: int) -> None:
        await self._renewed.setdefault(payload_id, asyncio.Event()).wait()

    def forget(self, payload_id: int) -> None:
        self._asked_at.pop(payload_id, None)
        self._renewed.pop(payload_id, None)

    def _sent_at(self, clock: str | None, now: float) -> tuple[str | None, float]:
        """The stamp's server instance and when it sent the request (None, now: no stamp)."""
        instance, _, raw = (clock or "").partition(" ")
        try:
            stamp = float(raw)
        except ValueError:
            return None, now
        if not instance or not math.isfinite(stamp):
            return None, now
        offset = now - stamp
        best = self._offsets.pop(instance, None)
        if best is not None:
            best_offset, seen_at = best
            offset = min(offset, best_offset + _DRIFT_PER_S * (now - seen_at))
        self._offsets[instance] = (offset, now)
        while len(self._offsets) > _MAX_INSTANCES:
            del self._offsets[next(iter(self._offsets))]
        return instance, min(now, stamp + offset)
