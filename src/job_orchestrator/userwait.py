"""What `submit --wait` and `wait` show while a job is not final: status, queue position, reason.

A long job used to look hung: nothing was printed until it ended. Now the job is looked at
every WATCH_S seconds (one `GET /jobs/{id}`, then one `?wait=` request held until the next
look, so a job that ends is seen at once). On a terminal, one line on stderr is rewritten in
place; otherwise (a log file, CI) a line is printed only when the status, the position or
the reason changes, so a day-long wait writes a few lines, not thousands.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TextIO

from job_orchestrator.sdk import Client, Job, WaitTimeout

__all__ = ["WATCH_S", "WaitDisplay", "wait_showing"]

#: Seconds between two looks at a waiting job's details.
WATCH_S = 5.0


class WaitDisplay:
    """One live line on a terminal, a line per change elsewhere (both on `stream`)."""

    def __init__(self, stream: TextIO, clean: Callable[[str], str] = str) -> None:
        self._stream = stream
        self._live = stream.isatty()
        self._clean = clean
        self._last_key: tuple[object, ...] | None = None
        self._started = time.monotonic()
        self._drawn = False

    def show(self, job: Job) -> None:
        text = self._clean(describe_waiting(job))
        if self._live:
            elapsed = _elapsed(time.monotonic() - self._started)
            self._stream.write(f"\r\x1b[K{text} [{elapsed}]")
            self._drawn = True
        else:
            key = (job.status, job.queue and job.queue.position, job.queue and job.queue.reason)
            if key == self._last_key:
                return
            self._last_key = key
            self._stream.write(text + "\n")
        self._stream.flush()

    def close(self) -> None:
        """Clear the live line, so what follows starts on a clean one."""
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False


def describe_waiting(job: Job) -> str:
    """`job 7 Queued: position 3, user_quota (user 1 has 2 of RUNS_PER_USER=2 running)`."""
    text = f"job {job.id} {job.status.wire}"
    if job.queue is not None:
        where = f"position {job.queue.position}, " if job.queue.position else ""
        detail = f" ({job.queue.detail})" if job.queue.detail else ""
        text += f": {where}{job.queue.reason}{detail}"
    elif job.client:
        text += f" on {job.client}"
    return text


def wait_showing(client: Client, job_id: int, timeout_s: float | None, display: WaitDisplay) -> Job:
    """`client.wait`, showing the job on `display` at every look (JobFailed, WaitTimeout as
    the SDK raises them)."""
    deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            job = client.status(job_id)
            if job.is_final:
                break
            display.show(job)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                assert timeout_s is not None
                raise WaitTimeout(job, timeout_s)
            try:
                return client.wait(job_id, min(WATCH_S, remaining))
            except WaitTimeout:
                continue  # not final yet: look again
    finally:
        display.close()
    return client.wait(job_id, None)  # final: Completed returns, the others raise JobFailed


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
