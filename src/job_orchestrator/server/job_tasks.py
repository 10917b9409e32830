"""The one task that follows each job on this replica: its dispatch, its collection or its
termination. A job never has two; the reaper re-drives the jobs this replica owns that have
none (recovery.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)


class JobTasks:
    def __init__(self, stopping: asyncio.Event) -> None:
        self._stopping = stopping
        self._tasks: dict[int, asyncio.Task[object]] = {}
        #: Jobs a /terminate request is finishing in its own task (not one of these).
        self.terminating: set[int] = set()

    def __contains__(self, job_id: int) -> bool:
        return job_id in self._tasks

    def spawn(self, job_id: int, coroutine: Coroutine[Any, Any, object]) -> None:
        """Follow the job with `coroutine`, unless it has a task already or we stop."""
        if job_id in self._tasks or self._stopping.is_set():
            coroutine.close()
            return
        task = asyncio.create_task(coroutine, name=f"job-{job_id}")
        self._tasks[job_id] = task

        def forget(done: asyncio.Task[object]) -> None:
            if self._tasks.get(job_id) is done:
                del self._tasks[job_id]
            if not done.cancelled() and (error := done.exception()) is not None:
                # The reaper re-drives the job; say why it needed to.
                logger.error(
                    "task of job %d failed: %r",
                    job_id,
                    error,
                    exc_info=error,
                    extra={"job_id": job_id},
                )

        task.add_done_callback(forget)

    def cancel(self, job_id: int) -> None:
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()

    async def cancel_and_wait(self, job_id: int) -> None:
        """Stop the job's task (unless it is the caller) and wait until it has stopped."""
        task = self._tasks.get(job_id)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def cancel_all(self) -> None:
        """Stop every task but the caller's, and wait until they have stopped."""
        tasks = [task for task in self._tasks.values() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
