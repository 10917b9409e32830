"""The Store's callback verbs on MemoryStore, a real SQLite file and, when reachable,
PostgreSQL: stored with the job, due once it is final, claimed by exactly one of two stores
(two replicas), leased, retried, delivered, released; all of it kept across a reopen (a server
restart)."""

from __future__ import annotations

import asyncio
import time

from job_orchestrator.server.storage.callback_verbs import CallbackState
from job_orchestrator.server.storage.changes import JobChanges
from job_orchestrator.status import Status
from testkit.stores import AnyStore, OpenStore
from tests.moves import move_to

URL = "http://127.0.0.1:8080/hook"
BODY = b'{"id":1,"status":"Completed","message":""}'


async def job_with_callback(store: AnyStore, status: Status | None = None) -> int:
    job_id = await store.create_job(user_id=1, service="svc", loc="/nowhere", callback_url=URL)
    if status is not None:
        assert await move_to(store, job_id, status)
    return job_id


async def claim(store: AnyStore, job_id: int, seen: int, token: str, lease_s: float = 60.0) -> bool:
    now = time.time()
    claimed = await store.claim_callback(
        job_id, seen, token=token, lease_until=now + lease_s, body=BODY, now=now
    )
    return claimed is not None


async def test_a_job_without_callback_has_none(store: AnyStore) -> None:
    job_id = await store.create_job(user_id=1, service="svc", loc="/nowhere")
    assert await store.callback_of(job_id) is None
    assert await store.callback_url(job_id) is None
    assert await store.callback_url(job_id + 1) is None


async def test_the_callback_is_stored_with_the_job(store: AnyStore) -> None:
    job_id = await job_with_callback(store)
    record = await store.callback_of(job_id)
    assert record is not None
    assert (record.url, record.state, record.attempts, record.body) == (
        URL,
        CallbackState.PENDING,
        0,
        None,
    )
    assert record.job_status is Status.QUEUED
    assert await store.callback_url(job_id) == URL


async def test_due_only_once_the_job_is_final(store: AnyStore) -> None:
    job_id = await job_with_callback(store, Status.RUNNING)
    assert await store.due_callbacks(time.time(), 10) == []
    assert await store.next_callback_at() is None
    assert await store.transition(
        job_id, [Status.RUNNING], Status.FAILED, changes=JobChanges(message="exit 3")
    )
    (due,) = await store.due_callbacks(time.time(), 10)
    assert (due.job_id, due.job_status, due.job_message, due.attempts) == (
        job_id,
        Status.FAILED,
        "exit 3",
        0,
    )
    next_at = await store.next_callback_at()
    assert next_at is not None
    assert next_at <= time.time()
    assert await store.due_callbacks(time.time(), 10, exclude=[job_id]) == []
    assert await store.next_callback_at(exclude=[job_id]) is None


async def test_only_one_of_two_replicas_claims_an_attempt(reopen: OpenStore) -> None:
    first, second = await reopen(), await reopen()
    job_ids = [await job_with_callback(first, Status.COMPLETED) for _ in range(20)]
    for job_id in job_ids:
        won = await asyncio.gather(claim(first, job_id, 0, "a"), claim(second, job_id, 0, "b"))
        assert sorted(won) == [False, True]
        record = await first.callback_of(job_id)
        assert record is not None
        assert record.attempts == 1


async def test_a_claimed_attempt_is_leased(store: AnyStore) -> None:
    job_id = await job_with_callback(store, Status.COMPLETED)
    now = time.time()
    claimed = await store.claim_callback(
        job_id, 0, token="a", lease_until=now + 60, body=BODY, now=now
    )
    assert claimed is not None
    assert (claimed.attempts, claimed.body, claimed.first_attempt_at) == (1, BODY, now)
    assert await store.due_callbacks(time.time(), 10) == []
    assert not await claim(store, job_id, 1, "b")
    assert await store.next_callback_at() == now + 60
    # Once the lease has run out (its holder died), the attempt can be made again.
    assert len(await store.due_callbacks(now + 61, 10)) == 1
    retaken = await store.claim_callback(
        job_id, 1, token="b", lease_until=now + 200, body=b"other", now=now + 61
    )
    assert retaken is not None
    # The body and the first attempt's time are those of the first claim.
    assert (retaken.attempts, retaken.body, retaken.first_attempt_at) == (2, BODY, now)
    # The first holder's outcome no longer counts.
    assert not await store.settle_callback(job_id, "a", CallbackState.DELIVERED, now=now)


async def test_a_failed_attempt_is_due_again_at_its_retry_time(store: AnyStore) -> None:
    job_id = await job_with_callback(store, Status.KILLED)
    assert await claim(store, job_id, 0, "a")
    retry_at = time.time() + 30
    assert await store.settle_callback(
        job_id, "a", CallbackState.PENDING, now=time.time(), next_attempt_at=retry_at, error="500"
    )
    record = await store.callback_of(job_id)
    assert record is not None
    assert (record.state, record.last_error, record.lease_until) == (
        CallbackState.PENDING,
        "500",
        None,
    )
    assert await store.due_callbacks(time.time(), 10) == []
    assert await store.next_callback_at() == retry_at
    assert not await claim(store, job_id, 1, "b")
    assert [d.job_id for d in await store.due_callbacks(retry_at, 10)] == [job_id]


async def test_delivered_and_expired_are_never_due_again(store: AnyStore) -> None:
    delivered = await job_with_callback(store, Status.COMPLETED)
    expired = await job_with_callback(store, Status.INVALID)
    for job_id, state in ((delivered, CallbackState.DELIVERED), (expired, CallbackState.EXPIRED)):
        assert await claim(store, job_id, 0, "a")
        assert await store.settle_callback(job_id, "a", state, now=123.0, error=None)
        assert not await claim(store, job_id, 1, "b")
    assert await store.due_callbacks(time.time() + 10**6, 10) == []
    assert await store.next_callback_at() is None
    record = await store.callback_of(delivered)
    assert record is not None
    assert (record.state, record.delivered_at) == (CallbackState.DELIVERED, 123.0)
    record = await store.callback_of(expired)
    assert record is not None
    assert (record.state, record.delivered_at) == (CallbackState.EXPIRED, None)


async def test_a_released_attempt_is_due_at_once(store: AnyStore) -> None:
    job_id = await job_with_callback(store, Status.COMPLETED)
    assert await claim(store, job_id, 0, "a")
    assert not await store.release_callback(job_id, "someone else")
    assert await store.release_callback(job_id, "a")
    (due,) = await store.due_callbacks(time.time(), 10)
    assert due.attempts == 1
    assert await claim(store, job_id, 1, "b")


async def test_due_deliveries_come_oldest_due_first_up_to_the_limit(store: AnyStore) -> None:
    job_ids = [await job_with_callback(store, Status.COMPLETED) for _ in range(4)]
    assert await claim(store, job_ids[0], 0, "a")
    assert await store.settle_callback(
        job_ids[0], "a", CallbackState.PENDING, now=time.time(), next_attempt_at=time.time() - 1
    )
    due = await store.due_callbacks(time.time(), 3)
    # Never tried (due since 0) first, by id; the retry after them.
    assert [d.job_id for d in due] == job_ids[1:4]


async def test_deliveries_survive_a_reopen(reopen: OpenStore) -> None:
    first = await reopen()
    job_id = await job_with_callback(first, Status.COMPLETED)
    assert await claim(first, job_id, 0, "a", lease_s=-1)  # its holder is gone
    await first.close()
    second = await reopen()
    (due,) = await second.due_callbacks(time.time(), 10)
    assert (due.job_id, due.url, due.attempts, due.body) == (job_id, URL, 1, BODY)
