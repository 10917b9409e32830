"""wait_final on a real SQLite file: woken by this store's own transitions at once, and by
another store's (another process or replica) through its periodic re-read."""

from __future__ import annotations

import asyncio
from pathlib import Path

from job_orchestrator.server.storage import SqlStore, open_store
from job_orchestrator.server.storage.changes import JobChanges
from job_orchestrator.server.waiting import FinalWaiters, wait_final
from job_orchestrator.status import Status
from testkit.waiting import eventually_async
from tests.moves import move_to

#: Longer than any test may run: a waiter that needs it to end has not been woken.
NEVER_S = 3600.0
#: Only to keep a broken test from hanging.
DEADLINE_S = 30.0


async def registered(waiters: FinalWaiters, job_id: int) -> None:
    """Return once a waiter of the job is registered (it has read the job, not final)."""
    await eventually_async(
        lambda: asyncio.sleep(0, job_id in waiters._events), "the waiter to register"
    )


async def running_job(store: SqlStore) -> int:
    job_id = await store.create_job(user_id=1, service="example", loc="/nowhere")
    assert await move_to(store, job_id, Status.RUNNING)
    return job_id


async def test_a_transition_in_this_store_wakes_the_waiter(tmp_path: Path) -> None:
    store = await open_store(str(tmp_path / "server.db"))
    waiters = FinalWaiters()
    store.on_final(waiters.notify)
    try:
        job_id = await running_job(store)
        other_id = await running_job(store)
        stop = asyncio.Event()
        waiter = asyncio.create_task(
            wait_final(store, waiters, job_id, NEVER_S, stop, recheck_s=NEVER_S)
        )
        await registered(waiters, job_id)
        # Another job's change, and a non-final one, leave it waiting.
        assert await store.transition(other_id, [Status.RUNNING], Status.COMPLETED)
        assert await store.transition(job_id, [Status.RUNNING], Status.PREPARED)
        await asyncio.sleep(0.2)
        assert not waiter.done()
        assert await store.transition(
            job_id, [Status.PREPARED], Status.FAILED, changes=JobChanges(message="x")
        )
        await asyncio.wait_for(waiter, DEADLINE_S)
    finally:
        await store.close()


async def test_a_transition_in_another_store_is_seen_by_the_re_read(tmp_path: Path) -> None:
    db_path = str(tmp_path / "server.db")
    store, elsewhere = await open_store(db_path), await open_store(db_path)
    waiters = FinalWaiters()
    store.on_final(waiters.notify)
    try:
        job_id = await running_job(store)
        waiter = asyncio.create_task(
            wait_final(store, waiters, job_id, NEVER_S, asyncio.Event(), recheck_s=0.05)
        )
        await registered(waiters, job_id)
        assert not waiter.done()
        assert await elsewhere.transition(job_id, [Status.RUNNING], Status.KILLED)
        await asyncio.wait_for(waiter, DEADLINE_S)
    finally:
        await store.close()
        await elsewhere.close()


async def test_stop_and_timeout_end_the_wait(tmp_path: Path) -> None:
    store = await open_store(str(tmp_path / "server.db"))
    waiters = FinalWaiters()
    try:
        job_id = await running_job(store)
        stop = asyncio.Event()
        waiter = asyncio.create_task(wait_final(store, waiters, job_id, NEVER_S, stop))
        await registered(waiters, job_id)
        stop.set()
        await asyncio.wait_for(waiter, DEADLINE_S)
        await asyncio.wait_for(
            wait_final(store, waiters, job_id, 0.1, asyncio.Event(), recheck_s=NEVER_S),
            DEADLINE_S,
        )
        # Finished waiters leave nothing registered.
        assert waiters._events == {}
        assert (await store.get_job(job_id)) is not None
    finally:
        await store.close()
