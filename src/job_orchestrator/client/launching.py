"""What comes before run.sh runs (the runner's preparation): its screen by the validator, a uid
of its own with JOB_USERS, and the executor's launch, tried again while the executor cannot
be reached. After a restart it also finds out whether a payload recorded as not started was
started all the same.

Each step that gives up ends the payload through the registry (Invalid, Failed or Killed) and
says so by its answer (False or None); the runner (runner.py) then stops there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from job_orchestrator.client.executors.base import (
    Executor,
    Handle,
    LaunchError,
    LaunchUnavailableError,
)
from job_orchestrator.client.metrics import ClientMetrics
from job_orchestrator.client.payload import TERMINATED, Ending, Payload, PayloadChanges
from job_orchestrator.client.registry import Registry
from job_orchestrator.client.uids import UidLeases
from job_orchestrator.client.validator import validate_script
from job_orchestrator.config import ClientSettings
from job_orchestrator.status import Status

logger = logging.getLogger(__name__)

#: Seconds between launch attempts while the executor is unreachable (slurmctld down).
LAUNCH_RETRY_S = 2.0
#: A run.sh up to this size is checked on the event loop (~0.5 ms at most), a bigger one in a
#: thread: for a small script the hand-off costs more CPU than the check.
INLINE_VALIDATE_BYTES = 2048


class Launcher:
    def __init__(
        self,
        settings: ClientSettings,
        registry: Registry,
        metrics: ClientMetrics,
        executor: Executor,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.executor = executor
        self.uids = UidLeases(*settings.job_users) if settings.job_users else None

    async def screen(self, payload: Payload) -> bool:
        """Whether run.sh may run; if not, the payload ended Invalid."""
        script = payload.paths.work / "run.sh"
        trap = self.settings.require_exit_trap
        if _size(script) <= INLINE_VALIDATE_BYTES:
            rejection = validate_script(script, require_exit_trap=trap)
        else:
            rejection = await asyncio.to_thread(validate_script, script, require_exit_trap=trap)
        if rejection is not None and rejection.unsafe and not self.settings.validate_scripts:
            rejection = None  # VALIDATE_SCRIPTS=0: only a missing run.sh (or trap) is refused
        if rejection is None:
            return True
        logger.info(
            "payload %d rejected: %s",
            payload.id,
            rejection.reason,
            extra={"payload_id": payload.id},
        )
        self.registry.end(payload.id, Ending(Status.INVALID, rejection.message()))
        return False

    # ---- uids (JOB_USERS) ------------------------------------------------------------------

    async def hold_uids(self, payloads: list[Payload]) -> None:
        """At start: keep the uids of the payloads still running, reclaim the others."""
        if self.uids is None:
            return
        # Files the client makes are its own (state, log, result, exit status); DATA_PATH
        # lets a job traverse to its own work directory, not list the others.
        os.umask(0o077)
        self.settings.data_path.chmod(0o711)
        for payload in payloads:
            # A Prepared payload with a uid but no handle may have been started all the
            # same (see recover_unrecorded_launch): its uid is held until that is known.
            if payload.uid is not None and not payload.status.is_terminal():
                self.uids.pool.hold(payload.id, payload.uid)
        owned = [p.paths.work for p in payloads] + [p.paths.tmp for p in payloads]
        await self.uids.reclaim_unheld(owned)

    async def acquire_uid(self, payload: Payload) -> Payload | None:
        """The payload with a uid of its own, waiting Prepared while none is free; None if it
        was killed meanwhile (then Killed)."""
        assert self.uids is not None
        while True:
            with self.registry.watch(payload.id) as changed:
                current = self.registry.get(payload.id)
                if current is None or current.killed:
                    self.registry.end(payload.id, TERMINATED)
                    return None
                uid = await self.uids.acquire(payload.id, changed)
            if uid is None:
                continue
            updated = self.registry.change(payload.id, PayloadChanges(uid=uid), {Status.PREPARED})
            if updated is None:  # gone meanwhile: never launched without its uid
                await self.release_uid(payload)
            return updated

    async def release_uid(self, payload: Payload) -> None:
        """The execution ended: nothing may run or stay under its uid before it is reused."""
        if self.uids is not None:
            await self.uids.release(payload.id, [payload.paths.work, payload.paths.tmp])

    # ---- the executor ----------------------------------------------------------------------

    async def launch(self, payload: Payload) -> Handle | None:
        """Hand run.sh to the executor; None if it refused (the payload is then Failed).

        An unreachable executor (slurmctld down) is no reason to fail a job: the payload
        stays Prepared and the launch is tried again until it works or the job is killed.
        """
        warned = False
        while True:
            try:
                return await self.executor.launch(payload)
            except LaunchUnavailableError as error:
                if not warned:
                    logger.warning(
                        "payload %d waits: %s", payload.id, error, extra={"payload_id": payload.id}
                    )
                    warned = True
            except LaunchError as error:
                self.metrics.executor_errors.inc()
                self.registry.end(payload.id, Ending(Status.FAILED, str(error)))
                return None
            current = self.registry.get(payload.id)
            if current is None or current.killed:
                self.registry.end(payload.id, TERMINATED)
                return None
            with self.registry.watch(payload.id) as changed, contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), LAUNCH_RETRY_S)

    async def recover_unrecorded_launch(self, payload: Payload) -> Payload:
        """A payload recorded as not started may have been started all the same: the client
        can die between starting run.sh and recording its handle (a SIGKILL lands anywhere).
        Its execution is then re-adopted, never started a second time; if it was not started,
        the uid it had taken is given back (a new one is taken when it starts)."""
        handle = await asyncio.to_thread(self.executor.find_launched, payload)
        if handle is None:
            if payload.uid is not None and self.uids is not None:
                await self.release_uid(payload)
                payload = self.registry.change(payload.id, PayloadChanges(uid=None)) or payload
            return payload
        logger.warning(
            "payload %d was started before the client stopped but not recorded: re-adopting it",
            payload.id,
            extra={"payload_id": payload.id},
        )
        found = self.registry.change(
            payload.id, PayloadChanges(handle=handle.encode()), {Status.PREPARED}
        )
        return found or payload


def _size(path: Path) -> int:
    """The file's size; 0 if it is missing (validate_script then says so at once)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0
