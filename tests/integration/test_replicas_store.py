"""The Store verbs replicas rely on (issue 11), on MemoryStore, SQLite and PostgreSQL alike:
the dispatch claim under concurrency, heartbeats and the take-over of expired leases."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import asyncpg
import pytest

from job_orchestrator.server.scheduler import NodeSlot, Placement, ServiceLimits
from job_orchestrator.server.storage import open_store
from job_orchestrator.server.storage.changes import JobChanges
from job_orchestrator.status import ON_CLIENT, SLOT_HOLDING, Status
from testkit.pg import fresh_database
from testkit.stores import AnyStore
from tests.moves import move_to

IN_FLIGHT = (Status.PROCESSING, *ON_CLIENT, Status.LOCKED)


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


#: Every job of the service may go to one node.
ON_N1 = {"svc": Placement((NodeSlot("http://n1/submit", None, 0.0),))}


async def new_job(store: AnyStore, user_id: int) -> int:
    return await store.create_job(user_id=user_id, service="svc", loc=f"/data/{uuid.uuid4()}")


async def test_claim_dispatchable_respects_quotas_and_sets_the_owner(store: AnyStore) -> None:
    for user in (1, 1, 1, 2, 2, 3):
        await new_job(store, user)
    limits = {"svc": ServiceLimits(runs_per_user=2, max_runs=4)}
    claimed = await store.claim_dispatchable(limits, time.time(), ON_N1, owner="a")
    assert len(claimed) == 4
    assert {job.owner for job in claimed} == {"a"}
    assert {job.status for job in claimed} == {Status.PROCESSING}
    assert {job.node for job in claimed} == {"http://n1/submit"}
    assert max(Counter(job.user_id for job in claimed).values()) <= 2
    assert {job.user_id for job in claimed} == {1, 2, 3}  # fair: every user got a slot
    again = await store.claim_dispatchable(limits, time.time(), ON_N1, owner="b")
    assert again == []  # the service is full


async def test_claim_dispatchable_without_a_node_leaves_jobs_queued(store: AnyStore) -> None:
    job_id = await new_job(store, 1)
    limits = {"svc": ServiceLimits(runs_per_user=2, max_runs=4)}
    assert await store.claim_dispatchable(limits, time.time(), {"svc": Placement(())}) == []
    job = await store.get_job(job_id)
    assert job is not None
    assert job.status is Status.QUEUED


async def test_a_probing_placement_claims_one_job_of_the_service(store: AnyStore) -> None:
    for user in (1, 2, 3):
        await new_job(store, user)
    limits = {"svc": ServiceLimits(runs_per_user=2, max_runs=4)}
    probe = {"svc": Placement(ON_N1["svc"].nodes, at_most=1)}
    claimed = await store.claim_dispatchable(limits, time.time(), probe)
    assert [job.node for job in claimed] == ["http://n1/submit"]


@pytest.mark.postgres
async def test_concurrent_dispatchers_never_exceed_the_quotas(pg_url: str) -> None:
    """Six stores (as six replicas) claim at once, over and over, while slots free up."""
    if True:
        stores = [await open_store(pg_url) for _ in range(6)]
        try:
            for number in range(120):
                await new_job(stores[0], number % 10 + 1)
            limits = {"svc": ServiceLimits(runs_per_user=2, max_runs=4)}
            finished = 0
            while finished < 120:
                claims = await asyncio.gather(
                    *(
                        s.claim_dispatchable(limits, time.time(), ON_N1, owner=f"r{i}")
                        for i, s in enumerate(stores)
                    )
                )
                active = [
                    job
                    for job in await stores[0].jobs_with_status(SLOT_HOLDING)
                    if job.service == "svc"
                ]
                assert len(active) <= 4
                assert max(Counter(job.user_id for job in active).values(), default=0) <= 2
                assert sum(len(c) for c in claims) <= 4
                for job in active:  # end them all: the next round finds free slots again
                    assert await move_to(stores[1], job.id, Status.COMPLETED, start=job.status)
                    finished += 1
        finally:
            for opened in stores:
                await opened.close()


async def test_take_over_only_expired_leases(store: AnyStore) -> None:
    now = time.time()
    await store.heartbeat("alive", "d", now)
    await store.heartbeat("me", "d", now)
    await store.heartbeat("dead", "d", now - 60)
    jobs = {}
    for owner in ("alive", "dead", "me", None):
        job_id = await new_job(store, 1)
        assert await move_to(store, job_id, Status.RUNNING, changes=JobChanges(owner=owner))
        jobs[owner] = job_id
    queued = await new_job(store, 2)

    taken = await store.take_over("me", IN_FLIGHT, now - 15, own=False)
    assert {job.id for job in taken} == {jobs["dead"], jobs[None]}
    assert {job.owner for job in taken} == {"me"}
    # Taken once: another replica finds nothing left (every owner is alive now).
    assert await store.take_over("other", IN_FLIGHT, now - 15, own=False) == []
    # At start-up a replica resumes what it owns; with alive_since 0 no live owner is robbed.
    mine = await store.take_over("me", IN_FLIGHT, 0.0, own=True)
    assert {job.id for job in mine} == {jobs["dead"], jobs[None], jobs["me"]}
    alive = await store.get_job(jobs["alive"])
    assert alive is not None
    assert alive.owner == "alive"
    job = await store.get_job(queued)
    assert job is not None
    assert job.owner is None  # Queued work is nobody's


async def test_a_retired_replica_leaves_its_jobs_at_once(store: AnyStore) -> None:
    now = time.time()
    await store.heartbeat("leaving", "d", now)
    job_id = await new_job(store, 1)
    assert await move_to(store, job_id, Status.SUBMITTED, changes=JobChanges(owner="leaving"))
    assert await store.take_over("me", IN_FLIGHT, 0.0, own=False) == []
    await store.retire_replica("leaving")
    [taken] = await store.take_over("me", IN_FLIGHT, 0.0, own=False)
    assert taken.id == job_id


async def test_heartbeat_returns_the_previous_incarnation(store: AnyStore) -> None:
    now = time.time()
    assert await store.heartbeat("a", "d", now, "first") is None
    assert await store.heartbeat("a", "d", now + 1, "first") == "first"
    assert await store.heartbeat("a", "d", now + 2, "second") == "first"
    assert await store.heartbeat("a", "d", now + 3, "second") == "second"


async def test_heartbeats_and_live_replicas(store: AnyStore) -> None:
    now = time.time()
    await store.heartbeat("a", "digest-1", now - 100)
    await store.heartbeat("b", "digest-2", now)
    assert await store.live_replicas(now - 10) == {"b": "digest-2"}
    await store.heartbeat("a", "digest-3", now)
    assert await store.live_replicas(now - 10) == {"a": "digest-3", "b": "digest-2"}


@pytest.mark.postgres
async def test_concurrent_take_overs_take_each_job_once(pg_url: str) -> None:
    if True:
        stores = [await open_store(pg_url) for _ in range(4)]
        try:
            await stores[0].heartbeat("dead", "d", time.time() - 600)
            ids = []
            for _ in range(40):
                job_id = await new_job(stores[0], 1)
                await move_to(stores[0], job_id, Status.RUNNING, changes=JobChanges(owner="dead"))
                ids.append(job_id)
            results = await asyncio.gather(
                *(
                    s.take_over(f"r{i}", IN_FLIGHT, time.time() - 15, own=False)
                    for i, s in enumerate(stores)
                )
            )
            taken = Counter(job.id for result in results for job in result)
            assert taken == Counter(ids)
        finally:
            for opened in stores:
                await opened.close()


async def test_a_replica_finding_the_dispatch_lock_taken_claims_nothing_at_once(
    pg_url: str,
) -> None:
    """It does not queue behind the replica deciding (that one decides for every replica's
    jobs); the jobs are claimed once the lock is free."""
    store = await open_store(pg_url)
    holder = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        job_id = await new_job(store, 1)
        limits = {"svc": ServiceLimits(runs_per_user=2, max_runs=4)}
        await holder.execute(
            "SELECT pg_advisory_lock(hashtext($1))", "job-orchestrator:dispatch:svc"
        )
        # A hang guard, not a timing goal: queueing for the lock would never return.
        claimed = await asyncio.wait_for(
            store.claim_dispatchable(limits, time.time(), ON_N1, owner="r1"), timeout=30
        )
        assert claimed == []
        await holder.execute(
            "SELECT pg_advisory_unlock(hashtext($1))", "job-orchestrator:dispatch:svc"
        )
        claimed = await store.claim_dispatchable(limits, time.time(), ON_N1, owner="r1")
        assert [job.id for job in claimed] == [job_id]
    finally:
        await holder.close()
        await store.close()


async def test_a_claim_skips_a_queued_job_another_transaction_is_moving(pg_url: str) -> None:
    """A row locked by another transaction (a terminate moving it) is left for the next
    decision, not waited on; the user's other job is claimed meanwhile, and its turn stamped."""
    store = await open_store(pg_url)
    mover = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        moving, other = await new_job(store, 1), await new_job(store, 1)
        limits = {"svc": ServiceLimits(runs_per_user=2, max_runs=4)}
        moved = mover.transaction()
        await moved.start()
        await mover.execute("SELECT id FROM jobs WHERE id = $1 FOR UPDATE", moving)
        # A hang guard, not a timing goal: waiting for the row would never return.
        claimed = await asyncio.wait_for(
            store.claim_dispatchable(limits, time.time(), ON_N1, owner="r1"), timeout=30
        )
        assert [job.id for job in claimed] == [other]
        await moved.rollback()
        claimed = await store.claim_dispatchable(limits, time.time(), ON_N1, owner="r1")
        assert [job.id for job in claimed] == [moving]
        turns = await mover.fetch("SELECT user_id, served_turn FROM service_users")
        assert [(row["user_id"], row["served_turn"]) for row in turns] == [(1, 2)]
    finally:
        await mover.close()
        await store.close()
