"""The engine in one process: the real Orchestrator (dispatcher, fleet, collector, reaper) on
an in-memory Store, driving in-process nodes (fake_nodes.py). No process, socket or file
database: each test takes milliseconds, and waits for events, never for time.
"""

from __future__ import annotations

import asyncio
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import pytest

from job_orchestrator.errors import StoreError
from job_orchestrator.server.storage import NO_CHANGES, JobChanges, MemoryStore
from job_orchestrator.status import Status
from testkit.clock import LoopClock
from tests.engine.engines import RUN_SH, Engine, payloads, running, until
from tests.engine.fake_nodes import FakeNode

pytestmark = [pytest.mark.timeout(30), pytest.mark.looptime]


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    async with running(tmp_path) as started:
        yield started


async def test_a_job_is_sent_once_and_its_result_kept(engine: Engine) -> None:
    job = await engine.final(await engine.upload())
    assert job.status is Status.COMPLETED, job
    with zipfile.ZipFile(Path(job.loc) / "output.zip") as result:
        assert result.read("output.txt") == RUN_SH
    assert payloads(engine) == 1


async def test_a_lost_submit_answer_is_sent_again_under_its_key_and_runs_once(
    engine: Engine,
) -> None:
    for node in (engine.node_a, engine.node_b):
        node.lose_submit_answers = 1
    job = await engine.final(await engine.upload())
    assert job.status is Status.COMPLETED, job
    # The first node took it; its lost answer made the engine ask again with the same
    # dispatch key, and the node answered the payload it held: no second payload anywhere.
    assert payloads(engine) == 1
    assert engine.node_a.calls["submit"] + engine.node_b.calls["submit"] >= 2


async def test_a_node_nothing_reaches_is_passed_over(engine: Engine) -> None:
    engine.node_a.down = True
    jobs = [await engine.upload(user_id=user) for user in (1, 2, 3)]
    for job_id in jobs:
        assert (await engine.final(job_id)).status is Status.COMPLETED
    assert engine.node_a.payloads == {}
    assert len(engine.node_b.payloads) == 3


async def test_a_failed_payload_keeps_its_message_and_exit_status(engine: Engine) -> None:
    def fails(node: FakeNode, payload: Any) -> None:
        node.finish(payload.id, Status.FAILED, message="run.sh exited with 3", exit_code=3)

    engine.node_a.script = engine.node_b.script = fails
    job = await engine.final(await engine.upload())
    assert job.status is Status.FAILED
    assert job.exit_code == 3
    assert "exited with 3" in job.message


async def test_terminate_kills_the_payload_on_its_node(engine: Engine) -> None:
    engine.node_a.script = engine.node_b.script = None  # they run until killed
    job_id = await engine.upload()
    job = await engine.store.get_job(job_id)
    while job is not None and job.status is not Status.RUNNING:
        await engine.orchestrator.wait_final(job_id, timeout_s=0.01)  # yields; never final
        job = await engine.store.get_job(job_id)
    outcome = await engine.orchestrator.terminate(job_id)
    assert outcome is not None
    assert (await engine.final(job_id)).status is Status.KILLED
    killed = [p for node in engine.nodes.nodes.values() for p in node.payloads.values()]
    assert [payload.status for payload in killed] == [Status.KILLED]


class StoreWithHook(MemoryStore):
    """A MemoryStore whose `transition` first awaits `before(new)`: a test's fault or delay."""

    def __init__(
        self, before: Callable[[Status | None], Awaitable[None]], clock: LoopClock
    ) -> None:
        super().__init__(clock=clock)
        self.before = before

    async def transition(
        self,
        job_id: int,
        expected: Collection[Status],
        new: Status | None = None,
        changes: JobChanges = NO_CHANGES,
    ) -> bool:
        await self.before(new)
        return await super().transition(job_id, expected, new, changes)


@pytest.mark.parametrize("fail_on", [1, 2])
@pytest.mark.parametrize("error", [StoreError("database is locked"), RuntimeError("a bug")])
async def test_a_job_whose_task_died_is_redriven_to_one_run(
    tmp_path: Path, fail_on: int, error: Exception
) -> None:
    calls = 0

    async def fail_once(_new: Status | None) -> None:
        nonlocal calls
        calls += 1
        if calls == fail_on:
            raise error

    clock = LoopClock()
    store = StoreWithHook(fail_once, clock)
    async with running(tmp_path, store, clock=clock) as engine:
        job = await engine.final(await engine.upload())
    assert calls > fail_on, "the store never failed"
    assert job.status is Status.COMPLETED, job
    assert payloads(engine) == 1


async def test_the_client_is_asked_about_a_job_while_its_dispatch_is_written(
    tmp_path: Path,
) -> None:
    release = asyncio.Event()

    async def hold_submitted(new: Status | None) -> None:
        if new is Status.SUBMITTED:  # a slow shared commit
            await release.wait()

    clock = LoopClock()
    store = StoreWithHook(hold_submitted, clock)
    async with running(tmp_path, store, clock=clock) as engine:
        job_id = await engine.upload()

        async def asked() -> bool:
            return engine.node_a.calls["retrieve"] + engine.node_b.calls["retrieve"] > 0

        await until(asked, within_s=10, step_s=0.01)
        # The client has answered (the job ended there): nothing is written before Submitted.
        assert (await engine.job(job_id)).status is Status.PROCESSING
        release.set()
        job = await engine.final(job_id)
        assert job.status is Status.COMPLETED, job
        assert payloads(engine) == 1
