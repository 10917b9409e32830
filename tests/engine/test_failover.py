"""Failover, revocation, dispatch retries and replica take-over, in the engine tier.

Each rule is about time (a node's lease, the failover margin, backoff, RETRY_DEADLINE, a
replica's lease): on the virtual-time loop they play out in full, in milliseconds, and the
tests assert the times the engine kept as well as the outcome. The end-to-end proofs of the
same rules with real processes, kills and partitions stay in tests/acceptance (chaos,
partitions, replicas), one case each.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from job_orchestrator.errors import StoreUnavailableError
from job_orchestrator.server.nodes import LEASE_MARGIN_S
from job_orchestrator.server.storage import MemoryDatabase
from job_orchestrator.status import Status
from testkit.clock import LoopClock
from tests.engine.engines import Engine, payloads, running, until
from tests.engine.fake_nodes import FakeNode, completes, waits

pytestmark = [pytest.mark.timeout(30), pytest.mark.looptime]

#: Longer than FAILOVER_AFTER (30 s by default), so the node's own lease is what the engine
#: must wait out.
NODE_LEASE_S = 120.0


async def test_an_unstarted_job_of_a_node_gone_down_runs_elsewhere_after_its_lease(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, script=waits) as engine:
        engine.node_a.lease_s = engine.node_b.lease_s = NODE_LEASE_S
        engine.node_b.script = completes
        engine.node_b.down = True  # so the job goes to node a, and waits there
        job_id = await engine.upload()
        await until(lambda: has_payload(engine.node_a), within_s=30)
        engine.node_a.down, engine.node_b.down = True, False
        went_down_at = engine.clock.now()
        job = await engine.final(job_id, timeout_s=600)
        assert job.status is Status.COMPLETED, job
        [moved] = engine.node_b.payloads.values()
        # Never before the lease the node advertised, plus the margin: until then the node
        # could still start the payload it holds (the lease counts from the last request).
        assert moved.taken_at - went_down_at >= NODE_LEASE_S + LEASE_MARGIN_S
        # Back up, the node is told to drop the payload it never started.
        engine.node_a.down = False
        await until(lambda: killed(engine.node_a), within_s=60)
        [held] = engine.node_a.payloads.values()
        assert not held.started
        assert payloads(engine) == 2
        # ... and the node gets new work again.
        engine.node_a.script = completes
        later = [await engine.upload(user_id=user) for user in (2, 3, 4, 5)]
        for later_id in later:
            assert (await engine.final(later_id, timeout_s=120)).status is Status.COMPLETED
        assert len(engine.node_a.payloads) > 1


async def test_a_started_job_is_never_moved_it_fails_at_the_deadline_and_is_revoked(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, script=None, RETRY_DEADLINE="120") as engine:
        job_id = await engine.upload()
        await until(lambda: running_on_a_node(engine), within_s=30)
        node = engine.node_a if engine.node_a.payloads else engine.node_b
        other = engine.node_b if node is engine.node_a else engine.node_a
        node.down = True
        went_down_at = engine.clock.now()
        job = await engine.final(job_id, timeout_s=900)
        assert job.status is Status.FAILED, job
        assert "lost contact with the client" in job.message
        assert engine.clock.now() - went_down_at >= 120
        assert other.payloads == {}  # it may still run where it started: never twice
        node.down = False
        await until(lambda: killed(node), within_s=60)


async def test_dispatch_retries_back_off_then_end_the_job_at_the_deadline(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, RETRY_DEADLINE="120") as engine:
        engine.node_a.down = engine.node_b.down = True
        job = await engine.final(await engine.upload(), timeout_s=600)
        assert job.status is Status.FAILED, job
        assert "could not reach the client" in job.message
        assert engine.node_a.url in job.message, job.message  # which one, and why
        tries = sorted(engine.node_a.times("submit") + engine.node_b.times("submit"))
        gaps = [later - earlier for earlier, later in itertools.pairwise(tries)]
        assert 3 <= len(tries) < 40, tries  # neither one try nor a spin
        # The waits grew: the first tries come at the 5 s node check, a later backoff's full
        # jitter is at least 16 s (half its 32 s ceiling) before the deadline. 4x failed when
        # that jitter drew under 21 s.
        assert max(gaps) > 2.5 * min(gaps), gaps
        assert tries[-1] - tries[0] <= 120


async def test_a_replica_takes_over_the_jobs_of_one_that_died_after_its_lease(
    tmp_path: Path,
) -> None:
    clock = LoopClock()
    database = MemoryDatabase(clock=clock)
    first = running(tmp_path, script=None, database=database, clock=clock, REPLICA_ID="r1")
    nodes = first.nodes
    second = running(tmp_path, nodes=nodes, database=database, clock=clock, REPLICA_ID="r2")
    async with first as one, second as other:
        job_id = await one.upload()
        await until(lambda: running_on_a_node(one), within_s=30)
        owner = (await one.job(job_id)).owner
        dying, survivor = (one, other) if owner == "r1" else (other, one)
        # It dies: its loops stop, and it never retires (as with kill -9).
        dying.store.retire_replica = refuse_to_retire  # type: ignore[method-assign]
        await dying.orchestrator.stop()
        died_at = clock.now()
        heir = "r2" if owner == "r1" else "r1"
        await until(lambda: owned_by(survivor, job_id, heir), within_s=120)
        assert clock.now() - died_at >= survivor.settings.lease_s
        [(node, payload)] = [(n, p) for n in nodes.nodes.values() for p in n.payloads.values()]
        node.finish(payload.id, Status.COMPLETED, {"output.txt": b"done"})
        job = await survivor.final(job_id, timeout_s=60)
        assert job.status is Status.COMPLETED, job
        assert payloads(survivor) == 1


async def refuse_to_retire(_replica_id: str) -> None:
    raise StoreUnavailableError("the process is gone")


async def has_payload(node: FakeNode) -> bool:
    return bool(node.payloads)


async def killed(node: FakeNode) -> bool:
    return any(p.status is Status.KILLED for p in node.payloads.values())


async def running_on_a_node(engine: Engine) -> bool:
    return any(
        p.status is Status.RUNNING for n in engine.nodes.nodes.values() for p in n.payloads.values()
    )


async def owned_by(engine: Engine, job_id: int, replica: str) -> bool:
    return (await engine.job(job_id)).owner == replica
