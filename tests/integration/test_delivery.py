"""The callback delivery loop in-process, on MemoryStore, a real SQLite file and PostgreSQL,
against a real HTTP receiver: two loops sharing one database (two replicas) deliver once,
the deadline ends retries, and a shutdown releases an attempt in flight."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from job_orchestrator.config import load_server_settings
from job_orchestrator.server.delivery import (
    DRAIN_GRACE_S,
    MAX_IN_FLIGHT,
    MAX_IN_FLIGHT_PER_USER,
    CallbackDeliverer,
)
from job_orchestrator.server.storage.callback_verbs import CallbackRecord, CallbackState
from job_orchestrator.server.storage.changes import JobChanges
from job_orchestrator.status import Status
from testkit import eventually_async
from testkit.stores import AnyStore, OpenStore
from tests.callback_receiver import HOLD, CallbackReceiver
from tests.moves import move_to

SECRET = "s" * 32
#: Only to keep a broken test from hanging.
DEADLINE_S = 60.0
#: Longer than any test runs.
NEVER_S = 3600.0


def deliverer(
    store: AnyStore, tmp_path: Path, fallback_tick_s: float = 30.0, **changes: float
) -> CallbackDeliverer:
    settings = load_server_settings(
        {
            "CALLBACK_SECRET": SECRET,
            "CALLBACK_ALLOW": "127.0.0.0/8",
            "CALLBACK_TIMEOUT": "3",
            "DATA_PATH": str(tmp_path),
        }
    )
    return CallbackDeliverer(
        dataclasses.replace(settings, **changes), store, fallback_tick_s=fallback_tick_s
    )


async def final_job(
    store: AnyStore, url: str, status: Status = Status.COMPLETED, *, user_id: int = 1
) -> int:
    job_id = await store.create_job(
        user_id=user_id, service="svc", loc="/nowhere", callback_url=url
    )
    assert await move_to(store, job_id, status, changes=JobChanges(message="done"))
    return job_id


async def until(
    read: Callable[[], Awaitable[CallbackRecord | None]],
    ok: Callable[[CallbackRecord], bool],
) -> CallbackRecord:
    """`read()`'s first record that is `ok` (one must exist from the start)."""
    last: list[CallbackRecord] = []

    async def done() -> CallbackRecord | None:
        record = await read()
        assert record is not None
        last[:] = [record]
        return record if ok(record) else None

    return await eventually_async(done, "the callback record", DEADLINE_S, detail=lambda: last)


async def test_two_loops_on_one_database_deliver_once(reopen: OpenStore, tmp_path: Path) -> None:
    first, second = await reopen(), await reopen()
    with CallbackReceiver() as receiver:
        job_ids = [await final_job(first, f"{receiver.url}/hook/{i}") for i in range(10)]
        loops = [deliverer(first, tmp_path), deliverer(second, tmp_path)]
        await asyncio.gather(*(loop.start() for loop in loops))
        try:
            for job_id in job_ids:
                await until(
                    lambda job_id=job_id: first.callback_of(job_id),
                    lambda record: record.state is CallbackState.DELIVERED,
                )
        finally:
            await asyncio.gather(*(loop.stop() for loop in loops))
        paths = sorted(request.path for request in receiver.received)
    # Each delivery was made by one loop only: once, in its first attempt.
    assert paths == sorted(f"/hook/{i}" for i in range(10))
    for job_id in job_ids:
        record = await first.callback_of(job_id)
        assert record is not None
        assert record.attempts == 1


async def test_a_final_status_wakes_the_loop(store: AnyStore, tmp_path: Path) -> None:
    with CallbackReceiver() as receiver:
        # No fallback tick within the test: only the wake-up can start the delivery.
        loop = deliverer(store, tmp_path, fallback_tick_s=NEVER_S)
        await loop.start()
        try:
            job_id = await store.create_job(
                user_id=1, service="svc", loc="/nowhere", callback_url=receiver.url
            )
            assert await move_to(store, job_id, Status.RUNNING)
            await asyncio.sleep(0.5)
            assert receiver.received == []  # not final yet
            assert await store.transition(
                job_id, [Status.RUNNING], Status.INVALID, changes=JobChanges(message="x")
            )
            await until(
                lambda: store.callback_of(job_id),
                lambda record: record.state is CallbackState.DELIVERED,
            )
        finally:
            await loop.stop()
    assert [request.body for request in receiver.received] == [
        b'{"id":%d,"status":"Invalid","message":"x"}' % job_id
    ]


async def test_retries_end_at_the_deadline(store: AnyStore, tmp_path: Path) -> None:
    with CallbackReceiver(*[500] * 1000) as receiver:
        job_id = await final_job(store, receiver.url)
        loop = deliverer(store, tmp_path, callback_deadline_s=2.0)
        await loop.start()
        try:
            record = await until(
                lambda: store.callback_of(job_id),
                lambda record: record.state is not CallbackState.PENDING,
            )
        finally:
            await loop.stop()
        sent = len(receiver.received)
    assert record.state is CallbackState.EXPIRED
    assert record.last_error == "HTTP 500"
    assert record.attempts == sent >= 2
    assert record.first_attempt_at is not None


async def test_a_shutdown_releases_the_attempt_in_flight(store: AnyStore, tmp_path: Path) -> None:
    with CallbackReceiver(HOLD) as receiver:
        job_id = await final_job(store, receiver.url)
        # An attempt that outlasts the shutdown's grace (DRAIN_GRACE_S).
        loop = deliverer(store, tmp_path, callback_timeout_s=DRAIN_GRACE_S + 30)
        await loop.start()
        await asyncio.to_thread(receiver.wait_for, 1)
        await loop.stop()  # the grace passes with the request held, then it is cut short
        record = await store.callback_of(job_id)
        assert record is not None
        assert (record.state, record.attempts, record.lease_until) == (
            CallbackState.PENDING,
            1,
            None,
        )
        # Due at once for the next start, not after the lease would have run out.
        assert [due.job_id for due in await store.due_callbacks(time.time(), 10)] == [job_id]
        receiver.release()


async def test_attempts_in_flight_are_bounded_and_the_rest_follow(
    store: AnyStore, tmp_path: Path
) -> None:
    count = MAX_IN_FLIGHT + 4
    with CallbackReceiver(*[HOLD] * count) as receiver:
        # Spread over enough users that their shares add up to every slot.
        users = -(-MAX_IN_FLIGHT // MAX_IN_FLIGHT_PER_USER) + 1
        job_ids = [
            await final_job(store, f"{receiver.url}/{i}", user_id=i % users) for i in range(count)
        ]
        loop = deliverer(store, tmp_path, callback_timeout_s=60.0)
        await loop.start()
        try:
            await asyncio.to_thread(receiver.wait_for, MAX_IN_FLIGHT)
            # Every slot holds an unanswered request, so no further one can have been sent.
            assert len(receiver.received) == MAX_IN_FLIGHT
            receiver.release()
            for job_id in job_ids:
                record = await until(
                    lambda job_id=job_id: store.callback_of(job_id),
                    lambda record: record.state is CallbackState.DELIVERED,
                )
                assert record.attempts == 1
        finally:
            await loop.stop()
    assert len(receiver.received) == count


async def test_one_users_slow_receivers_never_hold_another_users_callback(
    store: AnyStore, tmp_path: Path
) -> None:
    """Issue 21, finding 5: 160 callbacks of one user to a slow receiver took every delivery
    slot, and another user's callback waited 99 s."""
    slow_count = MAX_IN_FLIGHT + 4
    with CallbackReceiver(*[HOLD] * slow_count) as slow, CallbackReceiver() as quick:
        for i in range(slow_count):
            await final_job(store, f"{slow.url}/{i}", user_id=1)
        loop = deliverer(store, tmp_path, callback_timeout_s=60.0)
        await loop.start()
        try:
            await asyncio.to_thread(slow.wait_for, MAX_IN_FLIGHT_PER_USER)
            other = await final_job(store, f"{quick.url}/other", user_id=2)
            record = await until(
                lambda: store.callback_of(other),
                lambda record: record.state is CallbackState.DELIVERED,
            )
            assert record.attempts == 1
            # User 1 still holds only their share, however many of theirs are due.
            assert len(slow.received) == MAX_IN_FLIGHT_PER_USER
        finally:
            slow.release()
            await loop.stop()
