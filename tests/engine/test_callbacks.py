"""The callbacks' retry schedule, in the engine tier: the real CallbackDeliverer on the
in-memory Store, posting to a receiver in process (an httpx transport) on the virtual-time
loop, so a schedule of minutes plays out in milliseconds. The real HTTP path (signatures,
address checks, a receiver on loopback, replicas) stays in tests/acceptance/test_callbacks.py.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from job_orchestrator.server.callbacks import DELIVERY_HEADER
from job_orchestrator.server.delivery import BACKOFF_BASE_S, CallbackDeliverer
from job_orchestrator.server.storage.callback_verbs import CallbackRecord, CallbackState
from tests.engine.engines import Engine, running, until

pytestmark = [pytest.mark.timeout(30), pytest.mark.looptime]

RECEIVER = "http://127.0.0.1:8099/hook"
CALLBACKS = {"CALLBACK_SECRET": "s" * 32, "CALLBACK_ALLOW": "127.0.0.0/8"}


class Receiver:
    """Answers the n-th POST with `answers(n)`, keeping each request and when it came."""

    def __init__(self, engine: Engine, answers: Callable[[int], int]) -> None:
        self.engine, self.answers = engine, answers
        self.times: list[float] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.times.append(self.engine.clock.now())
        self.requests.append(request)
        status = self.answers(len(self.times))
        headers = {"Location": "http://127.0.0.1:8099/elsewhere"} if status == 302 else {}
        return httpx.Response(status, headers=headers)


@asynccontextmanager
async def delivering(engine: Engine, receiver: Receiver) -> AsyncIterator[CallbackDeliverer]:
    deliverer = CallbackDeliverer(
        engine.settings,
        engine.store,
        clock=engine.clock,
        transport=httpx.MockTransport(receiver),
    )
    await deliverer.start()
    try:
        yield deliverer
    finally:
        await deliverer.stop()


async def settled(engine: Engine, job_id: int) -> CallbackRecord:
    async def done() -> bool:
        record = await engine.store.callback_of(job_id)
        return record is not None and record.state is not CallbackState.PENDING

    await until(done, within_s=3600, step_s=1.0)
    record = await engine.store.callback_of(job_id)
    assert record is not None
    return record


async def test_a_failing_receiver_is_retried_with_growing_waits_until_it_answers(
    tmp_path: Path,
) -> None:
    answers = {1: 500, 2: 302, 3: 404, 4: 503, 5: 204}
    async with running(tmp_path, **CALLBACKS) as engine:
        receiver = Receiver(engine, answers.__getitem__)
        async with delivering(engine, receiver):
            job_id = await engine.upload(callback_url=RECEIVER)
            await engine.final(job_id)
            record = await settled(engine, job_id)
    assert record.state is CallbackState.DELIVERED, record
    assert record.attempts == len(receiver.times) == 5
    # Full jitter: the wait after attempt n is within [c/2, c], c = 1 s doubled n-1 times
    # (plus the loop's wake-up slack).
    for attempt, (sent, next_sent) in enumerate(itertools.pairwise(receiver.times), start=1):
        ceiling = BACKOFF_BASE_S * 2 ** (attempt - 1)
        assert ceiling / 2 <= next_sent - sent <= ceiling + 0.1, (attempt, receiver.times)
    # Every attempt sends the same bytes to the same URL (the redirect was not followed),
    # under one delivery id, so a receiver can drop what it already saw.
    assert {str(request.url) for request in receiver.requests} == {RECEIVER}
    assert len({request.content for request in receiver.requests}) == 1
    assert len({request.headers[DELIVERY_HEADER] for request in receiver.requests}) == 1
    assert receiver.requests[0].headers[DELIVERY_HEADER].startswith(f"{job_id}.")


async def test_a_receiver_that_never_answers_is_given_up_at_the_deadline(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, CALLBACK_DEADLINE="600", **CALLBACKS) as engine:
        receiver = Receiver(engine, lambda _attempt: 500)
        async with delivering(engine, receiver):
            job_id = await engine.upload(callback_url=RECEIVER)
            await engine.final(job_id)
            record = await settled(engine, job_id)
    assert record.state is CallbackState.EXPIRED, record
    assert record.last_error == "HTTP 500"
    first, last = receiver.times[0], receiver.times[-1]
    # Retried up to the deadline, the last attempt at it at the latest, and not beyond.
    assert 600 - 2 * 60 <= last - first <= 600 + 0.1, receiver.times
    assert 8 <= len(receiver.times) <= 20, receiver.times
