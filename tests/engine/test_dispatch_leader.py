"""One replica dispatches for all (ServerStore.leads_dispatch): the others decide only on their
safety tick, so a wake-up every replica hears costs one decision; when the leader's store
closes, another leads at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from job_orchestrator.server.storage import MemoryDatabase
from job_orchestrator.status import Status
from testkit.clock import LoopClock
from tests.engine.engines import let_time_pass, running

pytestmark = [pytest.mark.timeout(30), pytest.mark.looptime]


def replicas(tmp_path: Path) -> tuple[running, running]:
    clock = LoopClock()
    database = MemoryDatabase(clock=clock)
    first = running(tmp_path, database=database, clock=clock, REPLICA_ID="r1")
    second = running(tmp_path, nodes=first.nodes, database=database, clock=clock, REPLICA_ID="r2")
    return first, second


async def test_jobs_uploaded_on_a_follower_are_dispatched_by_the_leader(tmp_path: Path) -> None:
    first, second = replicas(tmp_path)
    async with first as leader, second as follower:
        assert leader.store.leads_dispatch()
        assert not follower.store.leads_dispatch()
        await let_time_pass(0.1)  # each makes its first pass on starting (the tick is 1 s)
        passes = follower.store.work_counts()[0]["claim_dispatchable"]
        job_ids = [await follower.upload(user_id=user) for user in range(1, 9)]
        for job_id in job_ids:
            job = await follower.final(job_id)
            assert (job.status, job.owner) == (Status.COMPLETED, "r1"), job
        # Its own uploads woke it eight times: not one decision came of them.
        assert follower.store.work_counts()[0]["claim_dispatchable"] == passes


async def test_a_follower_leads_once_the_leader_is_gone(tmp_path: Path) -> None:
    first, second = replicas(tmp_path)
    leader = await first.__aenter__()
    async with second as follower:
        try:
            assert leader.store.leads_dispatch()
            assert not follower.store.leads_dispatch()
        finally:
            await first.__aexit__(None, None, None)
        assert follower.store.leads_dispatch()
        job = await follower.final(await follower.upload())
        assert (job.status, job.owner) == (Status.COMPLETED, "r2"), job
