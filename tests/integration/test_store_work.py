"""The units of work a store counts per verb: the `verb` label of
`job_orchestrator_store_operations_total` (docs/monitoring.md), on every backend.

Each verb counts under its own name (callback_url under callback_urls, which it reads
through), so the label values stay the ones dashboards and bench/ read.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from job_orchestrator.server.scheduler import NodeSlot, Occupancy, Placement, ServiceLimits
from job_orchestrator.server.storage.callback_verbs import CallbackState
from job_orchestrator.server.storage.changes import JobChanges
from job_orchestrator.status import Status
from tests.integration.test_store import AnyStore

LIMITS = {"svc": ServiceLimits(runs_per_user=2, max_runs=4)}
NODE = "http://n/submit"
PLACEMENTS = {"svc": Placement((NodeSlot(NODE, None, 0.0),))}
MESSAGE = JobChanges(message="m")


def calls(job_id: int) -> list[tuple[str, Callable[[AnyStore], Awaitable[Any]]]]:
    """(label, a call of the verb on `job_id`, a Queued job with a callback)."""
    return [
        ("create_job", lambda s: s.create_job(user_id=1, service="svc", loc="/x")),
        ("get_job", lambda s: s.get_job(job_id)),
        ("transition", lambda s: s.transition(job_id, [Status.QUEUED], changes=MESSAGE)),
        ("transition_returning", lambda s: s.transition_returning(job_id, [Status.QUEUED])),
        ("claim_dispatchable", lambda s: s.claim_dispatchable(LIMITS, time.time(), PLACEMENTS)),
        ("claim", lambda s: s.claim([job_id], {job_id: NODE})),
        ("occupancy", lambda s: s.occupancy()),
        ("status_counts", lambda s: s.status_counts()),
        ("node_occupancy", lambda s: s.node_occupancy("svc")),
        ("queue_heads", lambda s: s.queue_heads(LIMITS, time.time())),
        (
            "dispatch_candidates",
            lambda s: s.dispatch_candidates(LIMITS, Occupancy({}, {}), time.time()),
        ),
        ("next_retry_at", lambda s: s.next_retry_at()),
        ("jobs_with_status", lambda s: s.jobs_with_status([Status.QUEUED])),
        ("owned_job_ids", lambda s: s.owned_job_ids([Status.QUEUED], "r")),
        ("list_jobs", lambda s: s.list_jobs(limit=5)),
        ("open_job_counts", lambda s: s.open_job_counts()),
        ("finished_before", lambda s: s.finished_before(time.time())),
        ("known_locs", lambda s: s.known_locs(["/x"])),
        ("jobs_on_node", lambda s: s.jobs_on_node(NODE, [Status.QUEUED])),
        ("revocations", lambda s: s.revocations(NODE)),
        ("add_revocation", lambda s: s.add_revocation(NODE, 7, job_id, None)),
        ("forget_revocation", lambda s: s.forget_revocation(NODE, 7)),
        ("heartbeat", lambda s: s.heartbeat("r", "d", time.time())),
        ("live_replicas", lambda s: s.live_replicas(0.0)),
        ("retire_replica", lambda s: s.retire_replica("r")),
        ("take_over", lambda s: s.take_over("r", [Status.RUNNING], 0.0, own=True)),
        ("ping", lambda s: s.ping()),
        ("callback_of", lambda s: s.callback_of(job_id)),
        ("callback_urls", lambda s: s.callback_url(job_id)),
        ("callback_urls", lambda s: s.callback_urls([job_id])),
        ("due_callbacks", lambda s: s.due_callbacks(time.time(), 5)),
        ("next_callback_at", lambda s: s.next_callback_at()),
        (
            "claim_callback",
            lambda s: s.claim_callback(
                job_id, 0, token="t", lease_until=time.time(), body=b"", now=time.time()
            ),
        ),
        (
            "settle_callback",
            lambda s: s.settle_callback(job_id, "t", CallbackState.PENDING, now=time.time()),
        ),
        ("release_callback", lambda s: s.release_callback(job_id, "t")),
    ]


@pytest.mark.parametrize("index", range(len(calls(0))))
async def test_each_verb_counts_under_its_own_name(store: AnyStore, index: int) -> None:
    job_id = await store.create_job(user_id=1, service="svc", loc="/x", callback_url="http://h/")
    label, call = calls(job_id)[index]
    before = dict(store.work_counts()[0])
    await call(store)
    after = dict(store.work_counts()[0])
    grown = {
        verb: after[verb] - before.get(verb, 0)
        for verb in after
        if after[verb] != before.get(verb, 0)
    }
    assert set(grown) == {label}
    assert grown[label] >= 1


async def test_revoke_to_queue_counts_under_its_name(store: AnyStore) -> None:
    job_id = await store.create_job(user_id=1, service="svc", loc="/x")
    await store.claim([job_id], {job_id: NODE})
    job = await store.transition_returning(
        job_id, [Status.PROCESSING], Status.SUBMITTED, JobChanges(dest_id=3)
    )
    assert job is not None
    before = dict(store.work_counts()[0])
    assert await store.revoke_to_queue(job, [Status.SUBMITTED])
    after = dict(store.work_counts()[0])
    assert {verb for verb in after if after[verb] != before.get(verb, 0)} == {"revoke_to_queue"}


async def test_commits_are_counted(store: AnyStore) -> None:
    _per_verb, commits = store.work_counts()
    await store.create_job(user_id=1, service="svc", loc="/x")
    assert store.work_counts()[1] > commits


async def test_a_read_commits_nothing_on_postgresql(store: AnyStore, backend: str) -> None:
    """On PostgreSQL a read runs without a transaction: BEGIN and COMMIT were two of its
    three round trips. (SQLite's group commit shares one commit among a batch anyway.)"""
    job_id = await store.create_job(user_id=1, service="svc", loc="/x")
    _per_verb, commits = store.work_counts()
    assert await store.get_job(job_id) is not None
    assert await store.jobs_with_status([Status.QUEUED])
    if backend == "postgres":
        assert store.work_counts()[1] == commits
