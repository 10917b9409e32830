"""The engine in one process: the real Orchestrator (dispatcher, fleet, collector, reaper) on
an in-memory Store, driving in-process nodes (fake_nodes.py). No process, socket or file
database: each test takes milliseconds, and waits for events, never for time.
"""

from __future__ import annotations

import dataclasses
import uuid
import zipfile
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Any

import pytest

from job_orchestrator.config import ServerSettings, load_server_settings
from job_orchestrator.errors import StoreError
from job_orchestrator.server.dispatcher import Orchestrator
from job_orchestrator.server.storage import NO_CHANGES, JobChanges, JobRecord, MemoryStore
from job_orchestrator.status import TERMINAL, Status
from tests.engine.fake_nodes import FakeNode, FakeNodes, completes

pytestmark = pytest.mark.timeout(30)

#: Never contacted: the fake nodes answer in process.
NODE_URLS = ("http://127.0.0.1:1", "http://127.0.0.1:2")
RUN_SH = b"echo hello > output.txt\n"


@dataclasses.dataclass
class Engine:
    orchestrator: Orchestrator
    store: MemoryStore
    nodes: FakeNodes
    settings: ServerSettings

    @property
    def node_a(self) -> FakeNode:
        return self.nodes[self.settings.services["example"].nodes[0].upload_url]

    @property
    def node_b(self) -> FakeNode:
        return self.nodes[self.settings.services["example"].nodes[1].upload_url]

    async def upload(self, user_id: int = 1) -> int:
        loc = self.settings.data_path / str(uuid.uuid4())
        (loc / "input").mkdir(parents=True)
        (loc / "input" / "run.sh").write_bytes(RUN_SH)
        job_id = await self.store.create_job(user_id=user_id, service="example", loc=str(loc))
        self.orchestrator.wake_dispatch()
        return job_id

    async def final(self, job_id: int) -> JobRecord:
        await self.orchestrator.wait_final(job_id, timeout_s=20)
        job = await self.store.get_job(job_id)
        assert job is not None
        assert job.status in TERMINAL, job
        return job


def engine_settings(tmp_path: Path, **env: str) -> ServerSettings:
    settings = load_server_settings(
        {
            "DB_PATH": str(tmp_path / "unused.db"),
            "DATA_PATH": str(tmp_path / "data"),
            "SERVICE_EXAMPLE_CLIENTS": ",".join(NODE_URLS),
            **env,
        }
    )
    # The loops' safety tick (a missed wake-up, the reaper) in milliseconds.
    return dataclasses.replace(settings, safety_tick_s=0.01)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    async with running(tmp_path, MemoryStore()) as started:
        yield started


@dataclasses.dataclass
class running:
    """An Orchestrator over `store` and two fake nodes that complete what they get."""

    tmp_path: Path
    store: MemoryStore

    async def __aenter__(self) -> Engine:
        settings = engine_settings(self.tmp_path)
        nodes = FakeNodes(
            *(
                FakeNode(node.upload_url, script=completes)
                for node in settings.services["example"].nodes
            )
        )
        self.orchestrator = Orchestrator(settings, self.store, nodes)
        await self.orchestrator.start()
        return Engine(self.orchestrator, self.store, nodes, settings)

    async def __aexit__(self, *_exc: object) -> None:
        await self.orchestrator.stop()
        await self.store.close()


def payloads(engine: Engine) -> int:
    return sum(len(node.payloads) for node in engine.nodes.nodes.values())


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


class StoreFailingOnce(MemoryStore):
    """A MemoryStore whose `transition` raises once, on its `fail_on`-th call."""

    def __init__(self, fail_on: int, error: Exception) -> None:
        super().__init__()
        self.fail_on, self.error, self.calls = fail_on, error, 0

    async def transition(
        self,
        job_id: int,
        expected: Collection[Status],
        new: Status | None = None,
        changes: JobChanges = NO_CHANGES,
    ) -> bool:
        self.calls += 1
        if self.calls == self.fail_on:
            raise self.error
        return await super().transition(job_id, expected, new, changes)


@pytest.mark.parametrize("fail_on", [1, 2])
@pytest.mark.parametrize("error", [StoreError("database is locked"), RuntimeError("a bug")])
async def test_a_job_whose_task_died_is_redriven_to_one_run(
    tmp_path: Path, fail_on: int, error: Exception
) -> None:
    store = StoreFailingOnce(fail_on, error)
    async with running(tmp_path, store) as engine:
        job = await engine.final(await engine.upload())
    assert store.calls > fail_on, "the store never failed"
    assert job.status is Status.COMPLETED, job
    assert payloads(engine) == 1
