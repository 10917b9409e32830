"""The Store contract (server/storage), on MemoryStore, a real SQLite file and, when reachable,
PostgreSQL.

Also the upstream tests of §14 "models/job_dto.rs" and "models/queue_dto.rs", the latter by
combining store.queue_heads + store.occupancy with scheduler.plan_dispatch, and the in-place
upgrade of a database written by the original (UPSTREAM §9.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from job_orchestrator.errors import IllegalMoveError, QueueFullError, StoreError
from job_orchestrator.server.scheduler import Occupancy, ServiceLimits, UserQueue, plan_dispatch
from job_orchestrator.server.storage import (
    JobRecord,
    ServerStore,
    Store,
    StoreViews,
    open_store,
)
from job_orchestrator.server.storage.changes import JobChanges
from job_orchestrator.status import SERVER_MOVES, SLOT_HOLDING, TERMINABLE, TERMINAL, Status

# The backends this contract runs on (other modules reach them through conftest.py).
from testkit.stores import AnyStore, OpenStore
from testkit.stores import backend as backend
from testkit.stores import db_url as db_url
from testkit.stores import pg_database as pg_database
from testkit.stores import reopen as reopen
from testkit.stores import sql_url as sql_url
from testkit.stores import store as store
from tests.moves import move_to

# --- helpers --------------------------------------------------------------------------------------


async def new_job(store: Store, user_id: int = 1, service: str = "svc") -> int:
    return await store.create_job(user_id=user_id, service=service, loc=f"/data/{uuid.uuid4()}")


async def job_in(store: Store, status: Status, user_id: int = 1, service: str = "svc") -> int:
    """A job moved (through compare-and-set, as SERVER_MOVES allows) from Queued to `status`."""
    job_id = await new_job(store, user_id, service)
    await move_to(store, job_id, status)
    return job_id


async def get(store: Store, job_id: int) -> JobRecord:
    job = await store.get_job(job_id)
    assert job is not None
    return job


async def plan(store: AnyStore, limits: dict[str, ServiceLimits]) -> list[int]:
    queues = await store.queue_heads(limits, time.time())
    return plan_dispatch(queues, await store.occupancy(), limits)


async def owners(store: AnyStore, job_ids: list[int]) -> list[int]:
    return [(await get(store, job_id)).user_id for job_id in job_ids]


# --- create / get ---------------------------------------------------------------------------------


async def test_store_is_a_store(store: AnyStore) -> None:
    assert isinstance(store, ServerStore)
    assert isinstance(store, Store)
    assert isinstance(store, StoreViews)


async def test_create_job_ids_increment_from_one(store: AnyStore) -> None:
    # test_add_to_db, test_add_to_db_assigns_incremental_ids
    assert [await new_job(store) for _ in range(5)] == [1, 2, 3, 4, 5]


async def test_created_job_is_queued(store: AnyStore) -> None:
    before = time.time()
    job_id = await store.create_job(user_id=42, service="svc", loc="/data/x")
    job = await get(store, job_id)
    assert job.status is Status.QUEUED
    assert job.dest_id == 0
    assert job.message == ""
    assert job.node is None
    assert job.dispatch_key is None
    assert job.attempts == 0
    assert job.not_before is None
    assert job.failing_since is None
    assert job.finished_at is None
    assert job.queued_at is not None
    assert before - 1 <= job.queued_at <= time.time() + 1


async def test_get_job_not_found(store: AnyStore) -> None:
    # test_retrieve_id_not_found
    assert await store.get_job(1) is None
    assert await store.get_job(0) is None
    await new_job(store)
    assert await store.get_job(2) is None


async def test_get_job_round_trips_all_fields(store: AnyStore) -> None:
    # test_retrieve_id
    job_id = await store.create_job(user_id=2**31 - 1, service="my_app", loc="/data/é x")
    assert await move_to(
        store,
        job_id,
        Status.SUBMITTED,
        changes=JobChanges(
            dest_id=123,
            message="on its way",
            node="http://a:9000/submit",
            dispatch_key="key-1",
            attempts=2,
            not_before=1_700_000_000.25,
            failing_since=1_700_000_001.5,
        ),
    )
    job = await get(store, job_id)
    assert job.id == job_id
    assert job.user_id == 2**31 - 1
    assert job.service == "my_app"
    assert job.status is Status.SUBMITTED
    assert job.loc == "/data/é x"
    assert job.dest_id == 123
    assert job.message == "on its way"
    assert job.node == "http://a:9000/submit"
    assert job.dispatch_key == "key-1"
    assert job.attempts == 2
    assert job.not_before == 1_700_000_000.25
    assert job.failing_since == 1_700_000_001.5
    assert job.finished_at is None


async def test_negative_user_id_round_trips(store: AnyStore) -> None:
    job_id = await store.create_job(user_id=-(2**31), service="svc", loc="/l")
    assert (await get(store, job_id)).user_id == -(2**31)


async def test_ids_never_reused(reopen: OpenStore) -> None:
    store = await reopen()
    first = [await new_job(store) for _ in range(3)]
    # A job moved to any status still holds its id; a new job always gets a fresh one.
    assert await move_to(store, first[-1], Status.CLEANED)
    await store.close()
    store = await reopen()
    assert await new_job(store) == 4


# --- transition: compare-and-set ------------------------------------------------------------------


async def test_update_status(store: AnyStore) -> None:
    job_id = await new_job(store)
    assert await store.transition(job_id, [Status.QUEUED], Status.PROCESSING)
    assert (await get(store, job_id)).status is Status.PROCESSING


async def test_update_status_multiple_transitions(store: AnyStore) -> None:
    job_id = await new_job(store)
    assert await store.transition(job_id, [Status.QUEUED], Status.PROCESSING)
    assert await move_to(store, job_id, Status.COMPLETED, start=Status.PROCESSING)
    assert (await get(store, job_id)).status is Status.COMPLETED


async def test_transition_only_from_an_expected_status(store: AnyStore) -> None:
    job_id = await job_in(store, Status.PROCESSING)
    assert not await store.transition(job_id, [Status.QUEUED, Status.RUNNING], Status.FAILED)
    assert (await get(store, job_id)).status is Status.PROCESSING
    assert await store.transition(job_id, [Status.PROCESSING, Status.RUNNING], Status.LOCKED)
    assert (await get(store, job_id)).status is Status.LOCKED
    # Stale view: someone else moved it already.
    assert not await store.transition(job_id, [Status.PROCESSING], Status.SUBMITTED)
    assert (await get(store, job_id)).status is Status.LOCKED


async def test_transition_refuses_a_move_the_table_lacks(store: AnyStore) -> None:
    job_id = await job_in(store, Status.COMPLETED)
    with pytest.raises(IllegalMoveError, match="no move from Completed to Failed"):
        await store.transition(job_id, [Status.COMPLETED], Status.FAILED)
    # Refused for any status it names, even one the job is not in.
    with pytest.raises(IllegalMoveError, match="no move from Queued to Submitted"):
        await store.transition(job_id, [Status.PROCESSING, Status.QUEUED], Status.SUBMITTED)
    with pytest.raises(IllegalMoveError, match="no move from Completed to Failed"):
        await store.transition_returning(job_id, [Status.COMPLETED], Status.FAILED)
    # The failover's move in SQL consults the same table.
    with pytest.raises(IllegalMoveError, match="no move from Locked to Queued"):
        await store.revoke_to_queue(await get(store, job_id), [Status.LOCKED])
    assert (await get(store, job_id)).status is Status.COMPLETED


async def test_transition_with_no_expected_status_changes_nothing(store: AnyStore) -> None:
    job_id = await new_job(store)
    assert not await store.transition(job_id, [], Status.FAILED)
    assert (await get(store, job_id)).status is Status.QUEUED


async def test_transition_of_missing_job(store: AnyStore) -> None:
    assert not await store.transition(99, [Status.QUEUED], Status.PROCESSING)
    assert await store.get_job(99) is None


async def test_final_status_is_never_overwritten_by_terminate(store: AnyStore) -> None:
    job_id = await job_in(store, Status.COMPLETED)
    assert not await store.transition(
        job_id, TERMINABLE - {Status.QUEUED, Status.LOCKED}, Status.LOCKED
    )
    assert not await store.transition(job_id, [Status.QUEUED, Status.LOCKED], Status.KILLED)
    assert (await get(store, job_id)).status is Status.COMPLETED


async def test_update_dest_id(store: AnyStore) -> None:
    # test_update_dest_id, test_update_dest_id_can_change: changes without a status change.
    job_id = await job_in(store, Status.SUBMITTED)
    assert await store.transition(job_id, [Status.SUBMITTED], changes=JobChanges(dest_id=100))
    job = await get(store, job_id)
    assert (job.status, job.dest_id) == (Status.SUBMITTED, 100)
    assert await store.transition(job_id, [Status.SUBMITTED], None, changes=JobChanges(dest_id=200))
    assert (await get(store, job_id)).dest_id == 200
    assert not await store.transition(job_id, [Status.RUNNING], changes=JobChanges(dest_id=300))
    assert (await get(store, job_id)).dest_id == 200


async def test_transition_returning_gives_the_changed_row(store: AnyStore) -> None:
    job_id = await job_in(store, Status.PROCESSING)
    finals: list[int] = []
    store.on_final(finals.append)
    moved = await store.transition_returning(
        job_id, [Status.PROCESSING], Status.SUBMITTED, changes=JobChanges(dest_id=42, message="")
    )
    assert moved == await store.get_job(job_id)
    assert moved is not None
    assert (moved.status, moved.dest_id) == (Status.SUBMITTED, 42)
    assert await store.transition_returning(job_id, [Status.PROCESSING], Status.FAILED) is None
    assert (await get(store, job_id)).status is Status.SUBMITTED
    done = await store.transition_returning(job_id, [Status.SUBMITTED], Status.COMPLETED)
    assert done is not None
    assert done.finished_at is not None
    assert finals == [job_id]


async def test_full_job_lifecycle(store: AnyStore) -> None:
    job_id = await new_job(store, user_id=7)
    assert (await get(store, job_id)).status is Status.QUEUED
    assert await store.transition(job_id, [Status.QUEUED], Status.PROCESSING)
    assert await store.transition(
        job_id, [Status.PROCESSING], Status.SUBMITTED, changes=JobChanges(dest_id=555)
    )
    assert await store.transition(job_id, [Status.SUBMITTED], Status.RUNNING)
    assert await store.transition(job_id, [Status.RUNNING], Status.COMPLETED)
    job = await get(store, job_id)
    assert (job.status, job.dest_id, job.user_id) == (Status.COMPLETED, 555, 7)


@pytest.mark.parametrize("final", [s for s in Status if s in TERMINAL and s is not Status.CLEANED])
async def test_final_statuses_are_stamped(store: AnyStore, final: Status) -> None:
    job_id = await job_in(store, Status.RUNNING)
    assert (await get(store, job_id)).finished_at is None
    before = time.time()
    assert await store.transition(job_id, [Status.RUNNING], final)
    job = await get(store, job_id)
    assert job.status is final
    assert job.finished_at is not None
    assert before - 1 <= job.finished_at <= time.time() + 1


@pytest.mark.parametrize("status", [s for s in Status if s in SLOT_HOLDING])
async def test_active_statuses_are_not_stamped(store: AnyStore, status: Status) -> None:
    job_id = await job_in(store, status)
    assert (await get(store, job_id)).finished_at is None


async def test_cleaned_keeps_the_finish_time(store: AnyStore) -> None:
    job_id = await job_in(store, Status.COMPLETED)
    assert await store.transition(
        job_id, [Status.COMPLETED], changes=JobChanges(finished_at=1000.0)
    )
    assert await store.transition(job_id, [Status.COMPLETED], Status.CLEANED)
    job = await get(store, job_id)
    assert job.status is Status.CLEANED
    assert job.finished_at == 1000.0


async def test_concurrent_transitions_exactly_one_wins(store: AnyStore) -> None:
    job_id = await new_job(store)
    results = await asyncio.gather(
        *(store.transition(job_id, [Status.QUEUED], Status.PROCESSING) for _ in range(20))
    )
    assert sorted(results) == [False] * 19 + [True]
    assert (await get(store, job_id)).status is Status.PROCESSING


async def test_concurrent_different_targets_exactly_one_wins(store: AnyStore) -> None:
    job_id = await job_in(store, Status.RUNNING)
    targets = [Status.COMPLETED, Status.FAILED, Status.KILLED, Status.LOCKED] * 5
    results = await asyncio.gather(
        *(store.transition(job_id, [Status.RUNNING], target) for target in targets)
    )
    assert results.count(True) == 1
    winner = targets[results.index(True)]
    assert (await get(store, job_id)).status is winner


# --- claim ----------------------------------------------------------------------------------------


async def test_claim_moves_queued_jobs_to_processing(store: AnyStore) -> None:
    a, b = await new_job(store), await new_job(store, user_id=2)
    claimed = await store.claim([a, b], {a: "http://n1/submit", b: "http://n2/submit"})
    assert [job.id for job in claimed] == [a, b]
    for job, node in zip(claimed, ["http://n1/submit", "http://n2/submit"], strict=True):
        assert job.status is Status.PROCESSING
        assert job.node == node
        assert job.dispatch_key
        stored = await get(store, job.id)
        assert (stored.status, stored.node, stored.dispatch_key) == (
            Status.PROCESSING,
            node,
            job.dispatch_key,
        )
    assert claimed[0].dispatch_key != claimed[1].dispatch_key


async def test_claim_skips_jobs_that_are_not_queued(store: AnyStore) -> None:
    queued = await new_job(store)
    processing = await job_in(store, Status.PROCESSING)
    completed = await job_in(store, Status.COMPLETED)
    nodes = {queued: "http://n/submit", processing: "http://n/submit", completed: "http://n/sub"}
    claimed = await store.claim([processing, queued, completed], nodes)
    assert [job.id for job in claimed] == [queued]
    for job_id, status in [(processing, Status.PROCESSING), (completed, Status.COMPLETED)]:
        job = await get(store, job_id)
        assert (job.status, job.node, job.dispatch_key) == (status, None, None)


async def test_claim_nothing(store: AnyStore) -> None:
    assert await store.claim([], {}) == []


async def test_claim_keeps_an_existing_dispatch_key_and_node(store: AnyStore) -> None:
    job_id = await new_job(store)
    [first] = await store.claim([job_id], {job_id: "http://n1/submit"})
    assert first.dispatch_key
    # A transient dispatch failure puts it back in the queue; the retry keeps the key and
    # goes to the same node (the first request may have reached it).
    assert await store.transition(
        job_id, [Status.PROCESSING], Status.QUEUED, changes=JobChanges(attempts=1)
    )
    [second] = await store.claim([job_id], {job_id: "http://n2/submit"})
    assert second.dispatch_key == first.dispatch_key
    assert second.node == "http://n1/submit"
    assert second.attempts == 1
    # A job sent back without a node (lost payload, failover) takes the one chosen now.
    assert await store.transition(
        job_id, [Status.PROCESSING], Status.QUEUED, changes=JobChanges(node=None)
    )
    [third] = await store.claim([job_id], {job_id: "http://n2/submit"})
    assert third.node == "http://n2/submit"


async def test_claim_keeps_a_preset_dispatch_key(store: AnyStore) -> None:
    job_id = await new_job(store)
    assert await store.transition(job_id, [Status.QUEUED], changes=JobChanges(dispatch_key="mine"))
    [claimed] = await store.claim([job_id], {job_id: "http://n/submit"})
    assert claimed.dispatch_key == "mine"


async def test_concurrent_claims_claim_each_job_once(store: AnyStore) -> None:
    ids = [await new_job(store, user_id=user) for user in range(10)]
    nodes = dict.fromkeys(ids, "http://n/submit")
    results = await asyncio.gather(*(store.claim(ids, nodes) for _ in range(5)))
    claimed = [job.id for result in results for job in result]
    assert sorted(claimed) == ids


# --- occupancy ------------------------------------------------------------------------------------


async def test_occupancy_counts_exactly_the_slot_holding_statuses(store: AnyStore) -> None:
    for status in SERVER_MOVES:
        await job_in(store, status, user_id=1, service="svc")
    occupancy = await store.occupancy()
    assert occupancy.per_user == {("svc", 1): len(SLOT_HOLDING)} == {("svc", 1): 5}
    assert occupancy.per_service == {"svc": 5}


async def test_occupancy_per_user_and_service(store: AnyStore) -> None:
    await job_in(store, Status.RUNNING, user_id=1, service="a")
    await job_in(store, Status.PREPARED, user_id=1, service="a")
    await job_in(store, Status.LOCKED, user_id=2, service="a")
    await job_in(store, Status.SUBMITTED, user_id=1, service="b")
    await job_in(store, Status.PROCESSING, user_id=3, service="b")
    await job_in(store, Status.QUEUED, user_id=4, service="b")
    await job_in(store, Status.COMPLETED, user_id=5, service="c")
    occupancy = await store.occupancy()
    assert isinstance(occupancy, Occupancy)
    assert dict(occupancy.per_user) == {("a", 1): 2, ("a", 2): 1, ("b", 1): 1, ("b", 3): 1}
    assert dict(occupancy.per_service) == {"a": 3, "b": 2}


async def test_occupancy_empty(store: AnyStore) -> None:
    occupancy = await store.occupancy()
    assert (dict(occupancy.per_user), dict(occupancy.per_service)) == ({}, {})


async def test_status_counts_group_by_service_and_status(store: AnyStore) -> None:
    assert await store.status_counts() == {}
    for status in SERVER_MOVES:  # every status the server writes
        await job_in(store, status, user_id=1, service="a")
    await job_in(store, Status.QUEUED, user_id=2, service="a")
    await job_in(store, Status.QUEUED, user_id=1, service="b")
    expected = {("a", status): 1 for status in SERVER_MOVES}
    expected[("a", Status.QUEUED)] = 2
    expected[("b", Status.QUEUED)] = 1
    assert await store.status_counts() == expected


async def test_node_occupancy(store: AnyStore) -> None:
    n1, n2 = "http://n1/submit", "http://n2/submit"
    jobs = [await new_job(store, user_id=u) for u in range(6)]
    other = await new_job(store, service="other")
    await store.claim(
        [*jobs, other], {**dict.fromkeys(jobs[:4], n1), jobs[4]: n2, jobs[5]: n2, other: n1}
    )
    assert await move_to(store, jobs[1], Status.RUNNING, start=Status.PROCESSING)
    assert await move_to(store, jobs[2], Status.COMPLETED, start=Status.PROCESSING)
    assert await store.transition(jobs[4], [Status.PROCESSING], Status.QUEUED)
    assert await store.node_occupancy("svc") == {n1: 3, n2: 1}
    assert await store.node_occupancy("other") == {n1: 1}
    assert await store.node_occupancy("nobody") == {}


async def test_node_occupancy_ignores_jobs_without_a_node(store: AnyStore) -> None:
    await job_in(store, Status.RUNNING)
    assert await store.node_occupancy("svc") == {}


# --- queue_heads ----------------------------------------------------------------------------------


async def test_queue_heads_oldest_first_at_most_runs_per_user(store: AnyStore) -> None:
    ids: dict[int, list[int]] = {1: [], 2: []}
    for _ in range(5):
        for user in (1, 2):
            ids[user].append(await new_job(store, user_id=user))
    heads = await store.queue_heads(
        {"svc": ServiceLimits(runs_per_user=3, max_runs=10)}, time.time()
    )
    assert sorted(heads, key=lambda q: q.user_id) == [
        UserQueue("svc", 1, tuple(ids[1][:3])),
        UserQueue("svc", 2, tuple(ids[2][:3])),
    ]


async def test_queue_heads_only_queued_jobs(store: AnyStore) -> None:
    for status in SERVER_MOVES:
        await job_in(store, status)
    queued = await new_job(store)
    heads = await store.queue_heads({"svc": ServiceLimits(5, 10)}, time.time())
    assert heads == [UserQueue("svc", 1, (1, queued))]


async def test_queue_heads_only_services_in_limits(store: AnyStore) -> None:
    a = await new_job(store, service="a")
    await new_job(store, service="unconfigured")
    heads = await store.queue_heads(
        {"a": ServiceLimits(5, 10), "b": ServiceLimits(5, 10)}, time.time()
    )
    assert heads == [UserQueue("a", 1, (a,))]
    assert await store.queue_heads({}, time.time()) == []


async def test_queue_heads_respects_each_services_runs_per_user(store: AnyStore) -> None:
    for _ in range(4):
        await new_job(store, service="narrow")
        await new_job(store, service="wide")
    limits = {"narrow": ServiceLimits(runs_per_user=1, max_runs=10), "wide": ServiceLimits(3, 10)}
    heads = {q.service: q.job_ids for q in await store.queue_heads(limits, time.time())}
    assert len(heads["wide"]) == 3
    assert len(heads["narrow"]) <= 1


async def test_queue_heads_skips_jobs_not_yet_due(store: AnyStore) -> None:
    now = time.time()
    later, due, fresh = await new_job(store), await new_job(store), await new_job(store)
    assert await store.transition(later, [Status.QUEUED], changes=JobChanges(not_before=now + 60))
    assert await store.transition(due, [Status.QUEUED], changes=JobChanges(not_before=now - 1))
    limits = {"svc": ServiceLimits(5, 10)}
    assert await store.queue_heads(limits, now) == [UserQueue("svc", 1, (due, fresh))]
    assert await store.queue_heads(limits, now + 61) == [UserQueue("svc", 1, (later, due, fresh))]


async def test_queue_heads_not_due_jobs_do_not_use_up_the_depth(store: AnyStore) -> None:
    now = time.time()
    first = await new_job(store)
    rest = [await new_job(store) for _ in range(3)]
    assert await store.transition(first, [Status.QUEUED], changes=JobChanges(not_before=now + 60))
    heads = await store.queue_heads({"svc": ServiceLimits(2, 10)}, now)
    assert heads == [UserQueue("svc", 1, tuple(rest[:2]))]


# --- next_retry_at --------------------------------------------------------------------------------


async def test_next_retry_at(store: AnyStore) -> None:
    assert await store.next_retry_at() is None
    plain = await new_job(store)
    assert await store.next_retry_at() is None
    a, b, done = await new_job(store), await new_job(store), await new_job(store)
    assert await store.transition(a, [Status.QUEUED], changes=JobChanges(not_before=2000.5))
    assert await store.transition(b, [Status.QUEUED], changes=JobChanges(not_before=1500.25))
    assert await store.transition(
        done, [Status.QUEUED], Status.FAILED, changes=JobChanges(not_before=10.0)
    )
    assert await store.next_retry_at() == 1500.25
    # Dispatch asks only for retries still to come: one already due was left by its pass.
    assert await store.next_retry_at(after=1500.25) == 2000.5
    assert await store.next_retry_at(after=2000.5) is None
    assert await store.transition(b, [Status.QUEUED], Status.PROCESSING)
    assert await store.next_retry_at() == 2000.5
    assert plain


async def test_queue_max_counts_one_users_queued_jobs_in_every_service(store: AnyStore) -> None:
    await job_in(store, Status.QUEUED, user_id=1, service="svc")
    await job_in(store, Status.QUEUED, user_id=1, service="other")
    await job_in(store, Status.RUNNING, user_id=1)
    await job_in(store, Status.QUEUED, user_id=2)
    with pytest.raises(QueueFullError):
        await store.create_job(user_id=1, service="svc", loc="/l/full", queue_max=2)
    # Neither the refused job nor its user row was written.
    assert await store.known_locs(["/l/full"]) == set()
    assert await store.create_job(user_id=1, service="svc", loc="/l/3", queue_max=3)
    assert await store.create_job(user_id=2, service="new", loc="/l/2", queue_max=2)
    assert await store.create_job(user_id=1, service="svc", loc="/l/any")  # no limit


async def test_uploads_at_the_queue_limit_at_once_never_both_pass(store: AnyStore) -> None:
    """Counted in the insert's own transaction: a separate read let both pass (each saw one
    job queued). On PostgreSQL the calls queued together share one transaction."""
    await job_in(store, Status.QUEUED, user_id=1)
    outcomes = await asyncio.gather(
        *(store.create_job(user_id=1, service="svc", loc=f"/l/{n}", queue_max=2) for n in range(5)),
        return_exceptions=True,
    )
    assert sum(isinstance(outcome, int) for outcome in outcomes) == 1
    assert sum(isinstance(outcome, QueueFullError) for outcome in outcomes) == 4


# --- jobs_with_status, finished_before, known_locs, ping ------------------------------------------


async def test_list_per_status_jobs(store: AnyStore) -> None:
    # queue_dto::test_list_per_status_jobs: NULL dest_id rows are readable.
    await job_in(store, Status.QUEUED)
    submitted = await job_in(store, Status.SUBMITTED)
    running = await job_in(store, Status.RUNNING)
    await job_in(store, Status.COMPLETED)
    found = await store.jobs_with_status({Status.SUBMITTED, Status.RUNNING})
    assert [job.id for job in found] == [submitted, running]
    assert [job.status for job in found] == [Status.SUBMITTED, Status.RUNNING]
    assert all(job.dest_id == 0 for job in found)
    assert await store.jobs_with_status([]) == []
    assert await store.jobs_with_status([Status.CLEANED]) == []


async def test_jobs_with_status_in_id_order(store: AnyStore) -> None:
    ids = [await job_in(store, Status.RUNNING, user_id=u) for u in (3, 1, 2)]
    assert [job.id for job in await store.jobs_with_status([Status.RUNNING])] == ids


async def test_owned_job_ids_are_those_of_the_owner_in_the_statuses(store: AnyStore) -> None:
    mine = [await job_in(store, Status.RUNNING, user_id=u) for u in (3, 1)]
    submitted = await job_in(store, Status.SUBMITTED)
    others = await job_in(store, Status.RUNNING, user_id=2)
    await job_in(store, Status.RUNNING)  # no owner at all
    for job_id, status in [*((i, Status.RUNNING) for i in mine), (submitted, Status.SUBMITTED)]:
        assert await store.transition(job_id, [status], changes=JobChanges(owner="me"))
    assert await store.transition(others, [Status.RUNNING], changes=JobChanges(owner="other"))
    assert await store.owned_job_ids([Status.RUNNING], "me") == mine
    both = [Status.RUNNING, Status.SUBMITTED]
    assert await store.owned_job_ids(both, "me") == sorted([*mine, submitted])
    assert await store.owned_job_ids([Status.QUEUED], "me") == []


async def test_finished_before(store: AnyStore) -> None:
    old_done = await job_in(store, Status.COMPLETED)
    old_failed = await job_in(store, Status.FAILED)
    recent = await job_in(store, Status.KILLED)
    cleaned = await job_in(store, Status.INVALID)
    running = await job_in(store, Status.RUNNING)
    queued = await new_job(store)
    assert await store.transition(
        old_done, [Status.COMPLETED], changes=JobChanges(finished_at=200.0)
    )
    assert await store.transition(
        old_failed, [Status.FAILED], changes=JobChanges(finished_at=100.0)
    )
    assert await store.transition(cleaned, [Status.INVALID], changes=JobChanges(finished_at=50.0))
    assert await store.transition(cleaned, [Status.INVALID], Status.CLEANED)
    # Active jobs are never "finished", even with a stray finish time.
    assert await store.transition(running, [Status.RUNNING], changes=JobChanges(finished_at=10.0))
    assert await store.transition(queued, [Status.QUEUED], changes=JobChanges(finished_at=10.0))

    found = await store.finished_before(1000.0)
    assert [job.id for job in found] == [old_failed, old_done]
    assert [job.id for job in await store.finished_before(1000.0, limit=1)] == [old_failed]
    assert await store.finished_before(100.0) == []
    everything = await store.finished_before(time.time() + 60)
    assert [job.id for job in everything] == [old_failed, old_done, recent]


async def test_retrieve_by_loc(store: AnyStore) -> None:
    # job_dto::test_retrieve_by_loc(_not_found) as the orphan-directory check.
    await store.create_job(user_id=1, service="svc", loc="/data/a")
    await store.create_job(user_id=2, service="svc", loc="/data/b")
    assert await store.known_locs(["/data/a", "/data/b", "/data/c", "/data/A"]) == {
        "/data/a",
        "/data/b",
    }
    assert await store.known_locs(["/data/zzz"]) == set()
    assert await store.known_locs([]) == set()


async def test_known_locs_many(store: AnyStore) -> None:
    locs = [f"/data/{i}" for i in range(50)]
    for loc in locs[:25]:
        await store.create_job(user_id=1, service="svc", loc=loc)
    assert await store.known_locs(locs) == set(locs[:25])


async def test_ping(store: AnyStore) -> None:
    await store.ping()


# --- persistence and migrations -------------------------------------------------------------------


async def test_reopen_keeps_the_data(reopen: OpenStore) -> None:
    store = await reopen()
    first = await store.create_job(user_id=1, service="svc", loc="/data/1")
    second = await job_in(store, Status.COMPLETED, user_id=2)
    await store.close()

    again = await reopen()
    assert (await get(again, first)).loc == "/data/1"
    assert (await get(again, second)).status is Status.COMPLETED
    assert await new_job(again) == second + 1
    await again.close()

    # Migrations are idempotent: a third open is fine and sees everything.
    third = await reopen()
    assert len(await third.jobs_with_status(list(Status))) == 3
    await third.ping()


async def test_two_stores_on_one_database_share_the_queue(reopen: OpenStore) -> None:
    one, two = await reopen(), await reopen()
    job_id = await new_job(one)
    results = await asyncio.gather(
        one.transition(job_id, [Status.QUEUED], Status.PROCESSING),
        two.transition(job_id, [Status.QUEUED], Status.PROCESSING),
    )
    assert sorted(results) == [False, True]
    assert (await get(two, job_id)).status is Status.PROCESSING


async def test_open_store_creates_missing_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "db.sqlite"
    store = await open_store(str(path))
    try:
        assert await new_job(store) == 1
    finally:
        await store.close()
    assert path.is_file()


async def test_open_store_unusable_path_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        await open_store(str(tmp_path))  # a directory, not a database file


UPSTREAM_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    service TEXT NOT NULL,
    status TEXT NOT NULL,
    loc TEXT NOT NULL,
    dest_id INTEGER,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP
)
"""


@pytest.fixture
def upstream_db(tmp_path: Path) -> Path:
    """A database as the Rust server leaves it (UPSTREAM §9.1): no other tables, no columns
    of ours, lower-case statuses, NULL dest_id for jobs never dispatched."""
    path = tmp_path / "upstream.sqlite"
    rows = [
        (1, 10, "svc", "completed", "/data/u1", 7),
        (2, 10, "svc", "queued", "/data/u2", None),
        (3, 11, "svc", "queued", "/data/u3", None),
        (4, 11, "svc", "running", "/data/u4", 9),
        (5, 12, "svc", "ComPlEtEd", "/data/u5", 3),
        (6, 12, "svc", "pending", "/data/u6", None),
        (7, 10, "svc", "queued", "/data/u7", None),
        (8, 13, "gone", "queued", "/data/u8", None),
        (9, 10, "svc", "killed", "/data/u9", 11),
    ]
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute(UPSTREAM_SCHEMA)
        connection.executemany(
            "INSERT INTO jobs (id, user_id, service, status, loc, dest_id) VALUES (?,?,?,?,?,?)",
            rows,
        )
        # Upstream ids are never reused, even after the newest row disappears.
        connection.execute(
            "INSERT INTO jobs (user_id, service, status, loc) VALUES (1,'s','queued','/x')"
        )
        connection.execute("DELETE FROM jobs WHERE id = 10")
        connection.commit()
    return path


async def test_upstream_database_is_upgraded_in_place(upstream_db: Path) -> None:
    store = await open_store(str(upstream_db))
    try:
        expected = {
            1: (10, Status.COMPLETED, 7),
            2: (10, Status.QUEUED, 0),
            3: (11, Status.QUEUED, 0),
            4: (11, Status.RUNNING, 9),
            5: (12, Status.COMPLETED, 3),
            6: (12, Status.UNKNOWN, 0),
            7: (10, Status.QUEUED, 0),
            8: (13, Status.QUEUED, 0),
            9: (10, Status.KILLED, 11),
        }
        for job_id, (user_id, status, dest_id) in expected.items():
            job = await get(store, job_id)
            assert (job.user_id, job.status, job.dest_id) == (user_id, status, dest_id), job_id
            assert job.loc == f"/data/u{job_id}"
            assert job.message == ""
            assert job.attempts == 0
            assert job.node is None
            assert job.dispatch_key is None

        limits = {"svc": ServiceLimits(runs_per_user=5, max_runs=10)}
        heads = await store.queue_heads(limits, time.time())
        assert sorted(heads, key=lambda q: q.user_id) == [
            UserQueue("svc", 10, (2, 7)),
            UserQueue("svc", 11, (3,)),
        ]
        occupancy = await store.occupancy()
        assert dict(occupancy.per_user) == {("svc", 11): 1}
        assert sorted(await plan(store, limits)) == [2, 3, 7]

        # Jobs that ended upstream count their retention from the upgrade.
        done = await store.finished_before(time.time() + 60)
        assert {job.id for job in done} >= {1, 9}

        # New ids continue after the highest ever used.
        assert await new_job(store) == 11
        claimed = await store.claim([2], {2: "http://c/submit"})
        assert [job.id for job in claimed] == [2]
    finally:
        await store.close()

    # And opening it again changes nothing.
    store = await open_store(str(upstream_db))
    try:
        assert (await get(store, 2)).status is Status.PROCESSING
        assert (await get(store, 1)).status is Status.COMPLETED
        assert await new_job(store) == 12
    finally:
        await store.close()

    with contextlib.closing(sqlite3.connect(upstream_db)) as connection:
        # The original's columns are still there, first and in order, for a rollback.
        columns = [row[1] for row in connection.execute("PRAGMA table_info(jobs)")]
        assert columns[:7] == ["id", "user_id", "service", "status", "loc", "dest_id", "created_at"]
        statuses = dict(connection.execute("SELECT id, status FROM jobs").fetchall())
        assert statuses[2] == "processing"  # still the lower-case storage form


# --- upstream models/queue_dto.rs, through queue_heads + occupancy + plan_dispatch ----------------


async def test_load_round_robin_distribution(store: AnyStore) -> None:
    for user in (1, 2, 3):
        for _ in range(5):
            await new_job(store, user_id=user)
    chosen = await plan(store, {"svc": ServiceLimits(runs_per_user=5, max_runs=3)})
    assert len(chosen) == 3
    assert sorted(await owners(store, chosen)) == [1, 2, 3]
    # Each user's oldest job.
    assert sorted(chosen) == [1, 6, 11]


async def test_load_round_robin_interleaved_submissions(store: AnyStore) -> None:
    for _ in range(5):
        for user in (1, 2, 3):
            await new_job(store, user_id=user)
    chosen = await plan(store, {"svc": ServiceLimits(runs_per_user=5, max_runs=3)})
    assert sorted(chosen) == [1, 2, 3]


async def test_load_respects_max_runs_per_service(store: AnyStore) -> None:
    busy = [await job_in(store, Status.SUBMITTED, user_id=9) for _ in range(5)]
    for user in (1, 2, 3):
        for _ in range(5):
            await new_job(store, user_id=user)
    limits = {"svc": ServiceLimits(runs_per_user=5, max_runs=2)}
    assert await plan(store, limits) == []
    for job_id in busy:  # upstream deletes them; ours finish
        assert await store.transition(job_id, [Status.SUBMITTED], Status.COMPLETED)
    chosen = await plan(store, limits)
    assert len(chosen) == 2
    assert len(set(await owners(store, chosen))) == 2


async def test_load_respects_user_quota(store: AnyStore) -> None:
    for _ in range(2):
        await job_in(store, Status.SUBMITTED, user_id=1)
    for user in (1, 2):
        for _ in range(5):
            await new_job(store, user_id=user)
    chosen = await plan(store, {"svc": ServiceLimits(runs_per_user=2, max_runs=10)})
    assert len(chosen) == 2
    assert await owners(store, chosen) == [2, 2]


async def test_prepared_and_locked_hold_slots(store: AnyStore) -> None:
    # Deliberate fix: upstream did not count prepared or locked jobs.
    await job_in(store, Status.PREPARED, user_id=1)
    await job_in(store, Status.LOCKED, user_id=1)
    for user in (1, 2):
        for _ in range(3):
            await new_job(store, user_id=user)
    chosen = await plan(store, {"svc": ServiceLimits(runs_per_user=2, max_runs=3)})
    assert await owners(store, chosen) == [2]


async def test_quota_zero_keeps_jobs_queued(store: AnyStore) -> None:
    await new_job(store)
    assert await plan(store, {"svc": ServiceLimits(runs_per_user=0, max_runs=10)}) == []
    assert await plan(store, {"svc": ServiceLimits(runs_per_user=5, max_runs=0)}) == []


async def test_dispatch_round_then_claim(store: AnyStore) -> None:
    """One scheduling round as the dispatcher runs it: plan, claim, and the next plan
    sees the claimed jobs as holding slots."""
    for user in (1, 2):
        for _ in range(3):
            await new_job(store, user_id=user)
    limits = {"svc": ServiceLimits(runs_per_user=2, max_runs=3)}
    chosen = await plan(store, limits)
    assert len(chosen) == 3
    claimed = await store.claim(chosen, dict.fromkeys(chosen, "http://n/submit"))
    assert sorted(job.id for job in claimed) == sorted(chosen)
    assert await plan(store, limits) == []
    occupancy = await store.occupancy()
    assert occupancy.per_service == {"svc": 3}
    assert sorted(occupancy.per_user.values()) == [1, 2]


# --- dispatch_candidates: the same decision as seeing every queue ---------------------------------


async def claim_some(store: AnyStore, rng: random.Random, limits: dict[str, ServiceLimits]) -> None:
    """Served history: one dispatch decision claimed as the dispatcher would, or one queued job
    claimed out of turn; most claimed jobs then end, freeing their slots."""
    if rng.random() < 0.7:
        picked = await plan(store, limits)
    else:
        queued = [job.id for job in await store.jobs_with_status([Status.QUEUED])]
        picked = rng.sample(queued, min(len(queued), 1))
    for job in await store.claim(picked, dict.fromkeys(picked, "http://n/submit")):
        if rng.random() < 0.8:
            assert await move_to(store, job.id, Status.COMPLETED, start=Status.PROCESSING)


@pytest.mark.parametrize("seed", range(12))
async def test_dispatch_candidates_decide_like_the_full_queue(store: AnyStore, seed: int) -> None:
    rng = random.Random(seed)
    limits = {
        "svc": ServiceLimits(rng.randint(1, 3), rng.randint(1, 8)),
        "other": ServiceLimits(rng.randint(1, 3), rng.randint(1, 8)),
    }
    now = time.time()
    for _ in range(rng.randint(5, 90)):
        service = rng.choice(["svc", "other"])
        job_id = await new_job(store, service=service, user_id=rng.randint(1, 20))
        roll = rng.random()
        if roll < 0.1:
            status = rng.choice([Status.RUNNING, Status.SUBMITTED, Status.PREPARED])
            assert await move_to(store, job_id, status)
        elif roll < 0.15:
            assert await store.transition(
                job_id, [Status.QUEUED], changes=JobChanges(not_before=now + 60)
            )
        elif roll < 0.2:
            assert await move_to(store, job_id, Status.COMPLETED)
        elif roll < 0.5:
            await claim_some(store, rng, limits)
    await assert_candidates_decide_like_everything(store, limits, now)


async def assert_candidates_decide_like_everything(
    store: AnyStore, limits: dict[str, ServiceLimits], now: float
) -> None:
    occupancy = await store.occupancy()
    everything = await store.queue_heads(limits, now)
    # Also with exactly 1, 2, 3 free slots: fewer slots than waiting users is where the walks
    # must stop at the right row.
    for extra in (None, 1, 2, 3):
        tried = limits
        if extra is not None:
            tried = {
                service: ServiceLimits(
                    limit.runs_per_user, occupancy.per_service.get(service, 0) + extra
                )
                for service, limit in limits.items()
            }
        candidates = await store.dispatch_candidates(tried, occupancy, now)
        assert plan_dispatch(candidates, occupancy, tried) == plan_dispatch(
            everything, occupancy, tried
        ), extra
        for service, limit in tried.items():
            free = max(0, limit.max_runs - occupancy.per_service.get(service, 0))
            assert sum(1 for queue in candidates if queue.service == service) <= free


async def test_dispatch_candidates_walk_past_many_users_with_nothing_due(store: AnyStore) -> None:
    """More rows than one batch of each walk: served users and never-served users whose jobs
    all ended or are not due, ahead of the few who can start."""
    rng = random.Random(7)
    limits = {"svc": ServiceLimits(2, 3)}
    now = time.time()
    served = []
    for user in range(300):
        served.append(await new_job(store, user_id=user))
    rng.shuffle(served)
    for job in await store.claim(served, dict.fromkeys(served, "http://n/submit")):
        assert await move_to(store, job.id, Status.COMPLETED, start=Status.PROCESSING)
    for user in range(300, 600):
        job_id = await new_job(store, user_id=user)
        ended = Status.KILLED if user % 2 else Status.QUEUED
        assert await store.transition(
            job_id, [Status.QUEUED], ended, changes=JobChanges(not_before=now + 60)
        )
    # The last served users come back; so do two users who never got a slot.
    for user in [served_user for served_user in range(290, 300)] + [600, 601]:
        await new_job(store, user_id=user)
    await assert_candidates_decide_like_everything(store, limits, now)
    chosen = plan_dispatch(
        await store.dispatch_candidates(limits, await store.occupancy(), now),
        await store.occupancy(),
        limits,
    )
    assert (await owners(store, chosen))[:2] == [600, 601]


async def test_flood_by_one_user_does_not_starve_the_next(store: AnyStore) -> None:
    """Issue 14: MAX_RUNS=1; user 1 queues five jobs, gets one started, then user 2 queues one.
    The next slot is user 2's, then user 1's again."""
    limits = {"svc": ServiceLimits(runs_per_user=5, max_runs=1)}
    flood = [await new_job(store, user_id=1) for _ in range(5)]
    order = []
    for _ in range(6):
        occupancy = await store.occupancy()
        chosen = plan_dispatch(
            await store.dispatch_candidates(limits, occupancy, time.time()), occupancy, limits
        )
        [job] = await store.claim(chosen, dict.fromkeys(chosen, "http://n/submit"))
        order.append(job.user_id)
        if job.id == flood[0]:
            await new_job(store, user_id=2)
        assert await move_to(store, job.id, Status.COMPLETED, start=Status.PROCESSING)
    assert order == [1, 2, 1, 1, 1, 1]


async def test_claim_stamps_turns_in_claim_order(reopen: OpenStore) -> None:
    store = await reopen()
    jobs = {user: await new_job(store, user_id=user) for user in (1, 2, 3)}
    await store.claim([jobs[3], jobs[1]], dict.fromkeys(jobs.values(), "http://n/submit"))
    for user in (1, 2, 3):
        await new_job(store, user_id=user)
    # A second replica (or a restart) sees the same history.
    other = await reopen()
    heads = await other.queue_heads({"svc": ServiceLimits(5, 10)}, time.time())
    turns = {queue.user_id: queue.last_served for queue in heads}
    assert turns[2] is None
    assert turns[3] is not None
    assert turns[1] is not None
    assert turns[3] < turns[1]
