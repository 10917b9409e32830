"""The client's Runner in one process: the real Runner, Registry and settling on a temporary
DATA_PATH, over an executor in process (fake_executor.py), on the virtual-time loop. Slots,
the server's lease on unstarted payloads, the wall-time limit and kills play out in
milliseconds; real processes, sandboxes and containers stay in tests/acceptance."""

from __future__ import annotations

import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from job_orchestrator.client.payload import Payload
from job_orchestrator.client.registry import Registry
from job_orchestrator.client.runner import Runner
from job_orchestrator.config import load_client_settings
from job_orchestrator.status import Status
from testkit.clock import LoopClock
from tests.engine.engines import let_time_pass, until
from tests.engine.fake_executor import FakeExecutor

pytestmark = [pytest.mark.timeout(30), pytest.mark.looptime]

RUN_SH = "echo hello > output.txt\n"


@dataclass
class Node:
    runner: Runner
    registry: Registry
    executor: FakeExecutor
    clock: LoopClock

    def submit(self, *, dispatch_key: str | None = None, timeout_s: float | None = None) -> int:
        """As /submit does: a payload directory with run.sh, registered and started."""
        paths = self.registry.allocate()
        (paths.work / "run.sh").write_text(RUN_SH)
        (paths.work / "output.txt").write_text("hello\n")
        payload = self.registry.add(paths, dispatch_key=dispatch_key, timeout_s=timeout_s)
        if dispatch_key is not None:
            self.runner.lease.asked(payload.id, None)  # the /submit is the server's first ask
        self.runner.start(payload)
        return payload.id

    def payload(self, payload_id: int) -> Payload:
        payload = self.registry.get(payload_id)
        assert payload is not None
        return payload

    async def final(self, payload_id: int) -> Payload:
        async def ended() -> bool:
            return self.payload(payload_id).status.is_terminal()

        await until(ended, within_s=600, step_s=0.1)
        return self.payload(payload_id)

    async def launched(self, payload_id: int) -> None:
        async def launched() -> bool:
            return payload_id in self.executor.running()

        await until(launched, within_s=600, step_s=0.1)


@asynccontextmanager
async def node(tmp_path: Path, **env: str) -> AsyncIterator[Node]:
    settings = load_client_settings({"DATA_PATH": str(tmp_path / "client"), **env})
    settings.data_path.mkdir(parents=True, exist_ok=True)
    clock = LoopClock()
    registry = Registry(settings.data_path)
    executor = FakeExecutor(clock)
    runner = Runner(settings, registry, executor=executor, clock=clock)
    try:
        yield Node(runner, registry, executor, clock)
    finally:
        await runner.stop()


async def test_a_payload_waits_for_a_slot_then_runs_and_keeps_its_result(
    tmp_path: Path,
) -> None:
    async with node(tmp_path, MAX_CONCURRENT="1") as client:
        first, second = client.submit(), client.submit()
        await client.launched(first)
        assert client.payload(second).status is Status.PREPARED
        assert client.executor.running() == {first}
        client.executor.end(first)
        assert (await client.final(first)).status is Status.COMPLETED
        await client.launched(second)
        client.executor.end(second)
        done = await client.final(second)
        assert done.status is Status.COMPLETED, done
        with zipfile.ZipFile(done.paths.result) as result:
            assert result.read("output.txt") == b"hello\n"


async def test_a_payload_the_server_stopped_asking_about_starts_only_when_asked_again(
    tmp_path: Path,
) -> None:
    async with node(tmp_path, MAX_CONCURRENT="1", SERVER_LEASE="15") as client:
        blocker = client.submit(dispatch_key="k1")
        await client.launched(blocker)
        waiting = client.submit(dispatch_key="k2")
        # The slot frees after the lease: nobody asked about `waiting` since its submit.
        await let_time_pass(60)
        client.executor.end(blocker)
        await client.final(blocker)
        await let_time_pass(60)
        assert client.payload(waiting).status is Status.PREPARED
        assert waiting not in {payload_id for payload_id, _ in client.executor.launched}
        # The server asks again: it still wants the job here, so it starts.
        client.runner.lease.asked(waiting, None)
        await client.launched(waiting)


async def test_past_its_wall_time_limit_a_payload_is_terminated_and_fails(
    tmp_path: Path,
) -> None:
    async with node(tmp_path) as client:
        payload_id = client.submit(timeout_s=60)
        await client.launched(payload_id)
        [(_, launched_at)] = client.executor.launched
        done = await client.final(payload_id)
        assert done.status is Status.FAILED, done
        assert "wall-time limit of 60 s exceeded" in done.message
        [(_, terminated_at)] = client.executor.terminated
        assert 60 <= terminated_at - launched_at < 61


async def test_a_kill_terminates_a_running_payload_and_cancels_a_waiting_one(
    tmp_path: Path,
) -> None:
    async with node(tmp_path, MAX_CONCURRENT="1") as client:
        running, waiting = client.submit(), client.submit()
        await client.launched(running)
        client.runner.kill(client.payload(waiting))
        client.runner.kill(client.payload(running))
        assert (await client.final(running)).status is Status.KILLED
        assert (await client.final(waiting)).status is Status.KILLED
        assert [payload_id for payload_id, _ in client.executor.launched] == [running]
