"""A job whose dispatch or collection task dies is re-driven by the reaper (issue 14, item 3).

The engine (Orchestrator) runs in this process over a real SQLite store whose `transition`
fails once, on its Nth call; the client is a real `job-orchestrator client` process. Each job
appends to a marker file outside its directory, so "ran exactly once" is read from disk.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Collection
from pathlib import Path

import pytest

from job_orchestrator.config import load_server_settings
from job_orchestrator.errors import StoreError
from job_orchestrator.server.dispatcher import Orchestrator
from job_orchestrator.server.gateway import NodeGateway
from job_orchestrator.server.storage import NO_CHANGES, JobChanges, JobRecord, SqlStore, open_store
from job_orchestrator.status import TERMINAL, Status
from testkit import eventually_async
from testkit.harness import Cluster


class FailingStore(SqlStore):
    """A real SQLite store whose `transition` raises once, on its `fail_on`-th call."""

    def __init__(self, inner: SqlStore, fail_on: int, error: Exception) -> None:
        super().__init__(inner._backend)
        self.fail_on = fail_on
        self.error = error
        self.calls = 0

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


# The engine tier (tests/engine/test_engine.py) covers each failing call and error kind in
# milliseconds; this is the one end-to-end check, with a real client and SQLite.
@pytest.mark.slow  # a real client process runs the job
@pytest.mark.parametrize(("fail_on", "error"), [(3, StoreError("database is locked"))])
async def test_a_job_whose_task_died_still_ends_correctly(
    tmp_path: Path, fail_on: int, error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    cl = Cluster(tmp_path)
    cl.add_client()
    marker = tmp_path / "marker"
    try:
        settings = dataclasses.replace(
            load_server_settings(
                {
                    "DB_PATH": str(tmp_path / "server.db"),
                    "DATA_PATH": str(tmp_path / "server-data"),
                    "SERVICE_EXAMPLE_CLIENTS": cl.clients[0].url,
                    "POLL_INTERVAL": "0.2",
                }
            ),
            safety_tick_s=0.2,
        )
        store = FailingStore(await open_store(settings.db_path), fail_on, error)
        gateway = NodeGateway(timeout_s=settings.client_timeout_s)
        orchestrator = Orchestrator(settings, store, gateway)
        await orchestrator.start()
        try:
            loc = settings.data_path / str(uuid.uuid4())
            (loc / "input").mkdir(parents=True)
            (loc / "input" / "run.sh").write_text(
                f"echo ran >> {marker}\nsleep 0.3\necho done > output.txt\n"
            )
            job_id = await store.create_job(user_id=1, service="example", loc=str(loc))
            orchestrator.wake_dispatch()

            async def final() -> JobRecord | None:
                job = await store.get_job(job_id)
                return job if job is not None and job.status in TERMINAL else None

            job = await eventually_async(
                final, f"job {job_id} to end", 60, detail=lambda: cl.clients[0].log()
            )
        finally:
            await orchestrator.stop()
            await gateway.close()
            await store.close()
        assert store.calls > fail_on, "the store never failed"
        assert job.status is Status.COMPLETED, job
        assert (loc / "output.zip").is_file()
        assert marker.read_text() == "ran\n", "the job did not run exactly once"
        failures = [
            record
            for record in caplog.records
            if record.levelno >= logging.ERROR and f"task of job {job_id} failed" in record.message
        ]
        assert failures, "the task's failure was not logged with the job id"
    finally:
        assert cl.shutdown() == []
