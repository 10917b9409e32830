"""What MemoryStore adds to the contract suite (test_store.py and its siblings run it beside
SQLite and PostgreSQL): stores on one MemoryDatabase hear of each other's changes as
PostgreSQL replicas do (subscribe, on_final), and a closed store refuses work while its
database keeps the data."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from job_orchestrator.config import load_server_settings
from job_orchestrator.errors import StoreUnavailableError
from job_orchestrator.server.dispatcher import Orchestrator
from job_orchestrator.server.gateway import NodeGateway
from job_orchestrator.server.storage.memory import MemoryDatabase, MemoryStore
from job_orchestrator.status import Status
from testkit.harness import Cluster


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
    assert await there.transition(job_id, [Status.QUEUED], Status.PROCESSING)
    assert await there.transition(job_id, [Status.PROCESSING], Status.SUBMITTED)
    await settled()
    assert len(wakes) == 2  # a slot taken frees nothing
    assert await there.transition(job_id, [Status.SUBMITTED], Status.COMPLETED)
    await settled()
    assert (len(wakes), finals) == (3, [job_id])


async def test_the_first_store_to_subscribe_leads_dispatch_until_it_closes() -> None:
    database = MemoryDatabase()
    first, second, bystander = (MemoryStore(database) for _ in range(3))
    woken: list[str] = []
    first.subscribe(lambda: woken.append("first"))
    second.subscribe(lambda: woken.append("second"))
    await settled()
    assert (first.leads_dispatch(), second.leads_dispatch()) == (True, False)
    assert bystander.leads_dispatch()  # it never subscribed: no wake-ups, no election
    woken.clear()
    await first.close()
    await settled()
    assert second.leads_dispatch()
    assert woken == ["second"]  # woken to decide at once, as the PostgreSQL listener does


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


async def test_the_engine_runs_a_job_to_its_end_on_a_memory_store(tmp_path: Path) -> None:
    """The Orchestrator on a MemoryStore, with a real client process: what the engine tests
    will build on, with no database anywhere."""
    cluster = Cluster(tmp_path)
    cluster.add_client()
    try:
        settings = load_server_settings(
            {
                "DB_PATH": str(tmp_path / "never-opened.db"),
                "DATA_PATH": str(tmp_path / "server-data"),
                "SERVICE_EXAMPLE_CLIENTS": cluster.clients[0].url,
            }
        )
        store = MemoryStore()
        gateway = NodeGateway(timeout_s=settings.client_timeout_s)
        orchestrator = Orchestrator(settings, store, gateway)
        await orchestrator.start()
        try:
            loc = settings.data_path / str(uuid.uuid4())
            (loc / "input").mkdir(parents=True)
            (loc / "input" / "run.sh").write_text("echo done > output.txt\n")
            job_id = await store.create_job(user_id=1, service="example", loc=str(loc))
            orchestrator.wake_dispatch()
            await orchestrator.wait_final(job_id, timeout_s=60)
            job = await store.get_job(job_id)
        finally:
            await orchestrator.stop()
            await gateway.close()
            await store.close()
        assert job is not None
        assert job.status is Status.COMPLETED, job
        assert (loc / "output.zip").is_file()
        assert not (tmp_path / "never-opened.db").exists()
    finally:
        assert cluster.shutdown() == []
