"""Terminate and its races, in the engine tier: a terminate that meets a dispatch in flight,
a queued job, and a node that cannot be asked to kill. The HTTP answers (the original's codes)
are pinned by the route's table and the acceptance tests; here, what the engine does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from job_orchestrator.server.termination import Termination
from job_orchestrator.status import Status
from tests.engine.engines import Engine, payloads, running, until
from tests.engine.fake_nodes import FakePayload

pytestmark = [pytest.mark.timeout(30), pytest.mark.looptime]


def all_payloads(engine: Engine) -> list[FakePayload]:
    return [p for node in engine.nodes.nodes.values() for p in node.payloads.values()]


async def test_a_terminate_during_the_dispatch_kills_the_payload_the_dispatch_creates(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, script=None) as engine:
        gate = asyncio.Event()
        engine.node_a.submit_gate = engine.node_b.submit_gate = gate
        job_id = await engine.upload()

        async def taken() -> bool:
            return payloads(engine) == 1

        await until(taken, within_s=10, step_s=0.01)
        outcome = await engine.orchestrator.terminate(job_id)
        assert outcome is not None
        # The dispatch in flight alone learns the payload's id: it kills what it created.
        assert (outcome.result, outcome.status) == (Termination.DONE, Status.LOCKED)
        gate.set()
        job = await engine.final(job_id)
        assert job.status is Status.KILLED, job
        assert [payload.status for payload in all_payloads(engine)] == [Status.KILLED]


async def test_a_queued_job_is_cancelled_without_asking_a_node(tmp_path: Path) -> None:
    async with running(tmp_path, script=None, SERVICE_EXAMPLE_MAX_RUNS="1") as engine:
        await engine.upload()
        job_id = await engine.upload()  # behind the first, in the service's one slot

        async def one_sent() -> bool:
            return payloads(engine) == 1

        await until(one_sent, within_s=10, step_s=0.01)
        assert (await engine.job(job_id)).status is Status.QUEUED
        outcome = await engine.orchestrator.terminate(job_id)
        assert outcome is not None
        assert (outcome.result, outcome.status) == (Termination.DONE, Status.KILLED)
        assert (await engine.final(job_id)).status is Status.KILLED
        assert engine.node_a.calls["kill"] + engine.node_b.calls["kill"] == 0
        again = await engine.orchestrator.terminate(job_id)
        assert again is not None
        assert again.result is Termination.ALREADY_FINAL


async def test_a_kill_the_node_cannot_take_leaves_the_job_running_and_followed(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, script=None) as engine:
        job_id = await engine.upload()

        async def started() -> bool:
            return (await engine.job(job_id)).status is Status.RUNNING

        await until(started, within_s=10, step_s=0.01)
        [payload] = all_payloads(engine)
        node = engine.node_a if engine.node_a.payloads else engine.node_b
        node.down = True
        outcome = await engine.orchestrator.terminate(job_id)
        assert outcome is not None
        assert (outcome.result, outcome.status) == (Termination.KILL_FAILED, Status.RUNNING)
        assert (await engine.job(job_id)).status is Status.RUNNING
        # Still followed: when the node answers again, its result is collected.
        node.down = False
        node.finish(payload.id, Status.COMPLETED, {"output.txt": b"done"})
        job = await engine.final(job_id, timeout_s=120)
        assert job.status is Status.COMPLETED, job
