"""What MemoryStore adds to the contract suite (test_store.py and its siblings run it beside
SQLite and PostgreSQL): stores on one MemoryDatabase hear of each other's changes as
PostgreSQL replicas do (subscribe, on_final), and a closed store refuses work while its
database keeps the data."""

from __future__ import annotations

import asyncio

import pytest

from job_orchestrator.errors import StoreUnavailableError
from job_orchestrator.server.storage.memory import MemoryDatabase, MemoryStore
from job_orchestrator.status import Status


async def settled() -> None:
    """Let the callbacks already scheduled on the loop run (wake-ups are delivered there)."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_subscribed_store_hears_of_the_others_changes() -> None:
    database = MemoryDatabase()
    here, there = MemoryStore(database), MemoryStore(database)
    assert here.shared
    assert there.shared
    wakes: list[str] = []
    finals: list[int] = []
    here.subscribe(lambda: wakes.append("wake"))
    here.on_final(finals.append)
    await settled()
    assert wakes == ["wake"]  # once on subscribing, for what came before
    job_id = await there.create_job(user_id=1, service="svc", loc="/x")
    await settled()
    assert wakes == ["wake", "wake"]
    assert await there.transition(job_id, [Status.QUEUED], Status.RUNNING)
    await settled()
    assert len(wakes) == 2  # a slot taken frees nothing
    assert await there.transition(job_id, [Status.RUNNING], Status.COMPLETED)
    await settled()
    assert (len(wakes), finals) == (3, [job_id])


async def test_a_store_announces_its_own_final_moves_once() -> None:
    database = MemoryDatabase()
    store = MemoryStore(database)
    finals: list[int] = []
    store.subscribe(lambda: None)
    store.on_final(finals.append)
    job_id = await store.create_job(user_id=1, service="svc", loc="/x")
    assert await store.transition(job_id, [Status.QUEUED], Status.KILLED)
    await settled()
    assert finals == [job_id]


async def test_a_store_that_did_not_subscribe_hears_nothing_of_the_others() -> None:
    database = MemoryDatabase()
    here, there = MemoryStore(database), MemoryStore(database)
    finals: list[int] = []
    here.on_final(finals.append)
    job_id = await there.create_job(user_id=1, service="svc", loc="/x")
    assert await there.transition(job_id, [Status.QUEUED], Status.FAILED)
    await settled()
    assert finals == []


async def test_a_closed_store_refuses_work_and_its_database_keeps_the_data() -> None:
    store = MemoryStore()
    assert not store.shared  # its own database: nobody else's
    job_id = await store.create_job(user_id=1, service="svc", loc="/x")
    await store.close()
    with pytest.raises(StoreUnavailableError):
        await store.get_job(job_id)
    with pytest.raises(StoreUnavailableError):
        await store.ping()
    reopened = MemoryStore(store.database)
    job = await reopened.get_job(job_id)
    assert job is not None
    assert job.status is Status.QUEUED
    assert await reopened.create_job(user_id=1, service="svc", loc="/y") == job_id + 1
