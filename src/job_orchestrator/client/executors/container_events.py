"""The container engine's `events` stream, read to learn at once that one of this client's
containers ended: the container executor (container.py) inspects its containers on a tick,
and this stream wakes the tick early.

One `events` process at a time, filtered to this client's label and to the end of a
container; it dies with the client, even a client killed with SIGKILL, so it never outlives
it waiting to write to a closed pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
from collections.abc import Callable

from job_orchestrator.client.executors.engine import LABEL_CLIENT, Engine

_PR_SET_PDEATHSIG = 1


async def wake_on_ends(
    engine: Engine,
    client_id: str,
    wake: asyncio.Event,
    *,
    watching: Callable[[], bool],
    retry_s: float,
) -> None:
    """Set `wake` whenever a container of this client ends, while `watching()` says so; the
    stream is started again `retry_s` after it stopped, and given up if it cannot start."""
    died = "died" if engine.is_podman else "die"
    argv = [
        engine.program,
        "events",
        "--filter",
        f"label={LABEL_CLIENT}={client_id}",
        "--filter",
        f"event={died}",
        "--format",
        "{{.ID}}",
    ]
    while watching():
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                # Gone with the client, even a killed one (else it would wait, orphaned,
                # for an event of ours to write to a closed pipe).
                preexec_fn=_die_with_parent,
            )
        except OSError:
            return
        try:
            assert process.stdout is not None
            while watching() and await process.stdout.readline():
                wake.set()
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        await asyncio.sleep(retry_s)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the client's thread that started it ends."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
