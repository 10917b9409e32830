"""Runs payloads in containers (EXECUTOR=docker or podman): one container per payload.

A container is named `jo-<CLIENT_ID>-<payload id>` and labelled with both, so a second create
of the same payload fails (one more guard against running it twice) and a restarted client
finds its containers again. It has the payload's work directory mounted at /work (the only
thing of the host; a server may ask for subdirectories of it at other paths, see
client/container_request.py), a read-only root with a private /tmp, no network (or the one
the operator names), no capabilities, no new privileges, a uid that is never 0, only the
variables JOB_ENV lists, and the limits (memory, CPUs, pids) set by the engine. Its output
goes to the payload's output.log, bind-mounted as a single file, so the log is live.

Containers outlive the client: the engine keeps them, and their exit status, until we remove
them. All of this client's containers are inspected in one call per tick (CONTAINER_TICK_S),
and one `events` process wakes the tick at once when one of them ends. An ended container's
status (and whether it was killed for memory) is written to the payload's `exit/` directory,
out of the job's reach, before the container is removed: a client killed in between finds
it there. The result ZIP is built from the work directory on the host, which the removal of
the container does not touch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from job_orchestrator.client.container_request import ContainerRequest
from job_orchestrator.client.executors.base import (
    Handle,
    LaunchError,
    LaunchUnavailableError,
    Outcome,
)
from job_orchestrator.client.executors.cgroup_oom import OomWatch, cgroup_of
from job_orchestrator.client.executors.container_events import wake_on_ends
from job_orchestrator.client.executors.container_spec import (
    OOM_FILE,
    client_identity,
    create_argv,
    engine_options,
    job_user,
    launch_failure,
    prepare,
)
from job_orchestrator.client.executors.engine import (
    LABEL_CLIENT,
    ContainerState,
    Engine,
    EngineError,
    EngineUnavailableError,
    NameConflictError,
)
from job_orchestrator.client.metrics import ClientMetrics
from job_orchestrator.client.payload import Payload
from job_orchestrator.client.sandbox import read_exit_file
from job_orchestrator.config import ClientSettings

logger = logging.getLogger(__name__)

#: Seconds between two inspections while containers run (the events stream wakes it sooner).
CONTAINER_TICK_S = 2.0


@dataclass
class _Container:
    payload: Payload
    ended: asyncio.Future[Outcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    oom: OomWatch | None = None
    #: Found after a restart (not launched by this run): if never started, the tick starts it.
    adopted: bool = False


class ContainerExecutor:
    runs_at_launch = True
    #: The engine writes output.log through a bind mount on this machine.
    log_is_local = True

    def __init__(self, settings: ClientSettings, metrics: ClientMetrics | None = None) -> None:
        self.settings = settings
        self.kind = settings.executor
        self.engine = Engine(settings.executor)
        self.metrics = metrics
        self.client_id = client_identity(settings)
        self._tracked: dict[int, _Container] = {}
        self._wake = asyncio.Event()
        self._tracker: asyncio.Task[None] | None = None
        self._events: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._unreachable_logged = False
        self._fixed = engine_options(self.engine)
        psutil.cpu_percent(interval=None)

    def name(self, payload_id: int) -> str:
        return f"jo-{self.client_id}-{payload_id}"

    # ---- launch ----------------------------------------------------------------------------

    async def launch(self, payload: Payload) -> Handle:
        try:
            request = ContainerRequest.read(payload.paths.root)
        except ValueError as error:
            raise LaunchError(str(error)) from None
        image = request.image or self.settings.containers.image
        if not request.image_allowed(self.settings.containers):
            raise LaunchError(f"image {image!r} is not allowed on this client (CONTAINER_IMAGES)")
        name = self.name(payload.id)
        exit_dir = payload.paths.exit_code.parent
        began = time.monotonic()
        try:
            user = job_user(self.settings, payload)
            await asyncio.to_thread(prepare, payload, user, request)
            argv = create_argv(
                self.settings, self._fixed, self.client_id, payload, name, image, request, user
            )
        except (OSError, KeyError, ValueError) as error:
            raise LaunchError(f"could not prepare the container: {error}") from error
        try:
            await self.engine.call(*argv, cwd=exit_dir)
        except NameConflictError:
            # Created by an earlier launch of this payload that the client did not live to
            # record: started already, it is adopted, never started again.
            if await self._started_before(payload, name):
                self._track(payload)
                return Handle(self.kind, payload.id, time.time())
        except EngineUnavailableError as error:
            raise LaunchUnavailableError(f"the {self.kind} engine: {error}") from None
        except EngineError as error:
            raise LaunchError(launch_failure(image, str(error))) from None
        try:
            if self.engine.is_podman:
                await self._watch_before_start(payload, name)
            await self.engine.call("container", "start", name, cwd=exit_dir)
        except EngineUnavailableError as error:
            raise LaunchUnavailableError(f"the {self.kind} engine: {error}") from None
        except EngineError as error:
            await self._remove_quietly(name)
            raise LaunchError(f"the container did not start: {error}") from None
        if self.metrics is not None:
            self.metrics.container_start.observe(time.monotonic() - began)
        self._track(payload)
        return Handle(self.kind, payload.id, time.time())

    async def _started_before(self, payload: Payload, name: str) -> bool:
        try:
            state = (await self.engine.inspect([name])).get(name)
        except EngineUnavailableError as error:
            raise LaunchUnavailableError(f"the {self.kind} engine: {error}") from None
        except EngineError as error:
            raise LaunchError(f"container {name} exists but cannot be inspected: {error}") from None
        if state is None:
            raise LaunchUnavailableError(f"container {name} was being removed; trying again")
        logger.info(
            "payload %d: container %s exists (%s), adopting it",
            payload.id,
            name,
            state.status,
            extra={"payload_id": payload.id},
        )
        return not state.never_started

    async def _watch_before_start(self, payload: Payload, name: str) -> None:
        """Podman: make the container's cgroup (`init`) and watch it for OOM kills before
        run.sh starts, so a job killed for memory at once is seen too."""
        with contextlib.suppress(EngineError):
            # Fails when it runs already. conmon starts here: in the payload's exit directory,
            # where it leaves `oom` when a process is killed for memory (read at the end).
            await self.engine.call("container", "init", name, cwd=payload.paths.exit_code.parent)
        state = (await self.engine.inspect([name])).get(name)
        if state is not None:
            self._watch_memory(self._track(payload), state)

    # ---- observe ---------------------------------------------------------------------------

    def _track(self, payload: Payload) -> _Container:
        tracked = self._tracked.get(payload.id)
        if tracked is None:
            tracked = self._tracked[payload.id] = _Container(payload)
            tracked.ended.add_done_callback(lambda _: self._tracked.pop(payload.id, None))
        if self._tracker is None or self._tracker.done():
            self._tracker = asyncio.create_task(self._track_loop(), name="container_track_loop")
        if self._events is None or self._events.done():
            self._events = asyncio.create_task(self._events_loop(), name="container_events_loop")
        self._wake.set()
        return tracked

    def reattach(self, payload: Payload, handle: Handle) -> bool:
        self._track(payload).adopted = True
        return True

    def find_launched(self, payload: Payload) -> Handle | None:
        try:
            state = self.engine.inspect_sync(self.name(payload.id))
        except EngineError:
            return None  # a later launch finds it by its name (the create conflicts)
        return Handle(self.kind, payload.id, time.time()) if state is not None else None

    async def started(self, handle: Handle) -> float:
        return handle.started_at or time.time()

    async def wait(self, payload: Payload, handle: Handle) -> Outcome:
        return await asyncio.shield(self._track(payload).ended)

    async def _track_loop(self) -> None:
        while self._tracked:
            self._wake.clear()
            try:
                await self.poll_once()
                self._unreachable_logged = False
            except EngineUnavailableError as error:
                if not self._unreachable_logged:
                    logger.warning("the %s engine does not answer: %s", self.kind, error)
                    self._unreachable_logged = True
            except Exception:  # one bad answer must not stop the watch of every container
                logger.exception("inspecting the containers failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), CONTAINER_TICK_S)

    async def poll_once(self) -> None:
        """One inspection of every tracked container; settle those that ended."""
        names = {self.name(payload_id): payload_id for payload_id in self._tracked}
        states = await self.engine.inspect(sorted(names))
        for name, payload_id in names.items():
            tracked = self._tracked.get(payload_id)
            if tracked is None or tracked.ended.done():
                continue
            state = states.get(name)
            if state is not None and state.never_started:
                if tracked.adopted:  # created by a launch the client did not live to finish
                    exit_dir = tracked.payload.paths.exit_code.parent
                    await self.engine.call("container", "start", name, cwd=exit_dir)
            elif state is not None and not state.ended:
                self._watch_memory(tracked, state)
            else:
                await self._settle(tracked, name, state)

    def _watch_memory(self, tracked: _Container, state: ContainerState) -> None:
        if not self.engine.is_podman:
            return  # Docker reports OOM kills itself
        if tracked.oom is None:
            cgroup = state.cgroup_path or (cgroup_of(state.pid) if state.pid else "")
            if not cgroup:
                return
            tracked.oom = OomWatch(cgroup)
            tracked.oom.start(asyncio.get_running_loop())
        else:
            tracked.oom.check()

    async def _settle(self, tracked: _Container, name: str, state: ContainerState | None) -> None:
        exit_dir = tracked.payload.paths.exit_code.parent
        if state is not None:
            # Docker's flag; Podman's conmon's file (written even while the client was down),
            # or what the cgroup watch saw.
            oom = (
                state.oom_killed
                or (exit_dir / OOM_FILE).exists()
                or (tracked.oom is not None and await tracked.oom.settle())
            )
            await asyncio.to_thread(_record, exit_dir, state.exit_code, oom)
            await self.engine.remove(name)
            exit_code: int | None = state.exit_code
        else:  # removed before (by us, after recording its end; or by someone else)
            exit_code = await asyncio.to_thread(read_exit_file, tracked.payload.paths.exit_code)
            oom = (exit_dir / OOM_FILE).exists()
        if tracked.oom is not None:
            tracked.oom.close()
        if not tracked.ended.done():
            tracked.ended.set_result(self._outcome(exit_code, oom, name))

    def _outcome(self, exit_code: int | None, oom: bool, name: str) -> Outcome:
        if exit_code is None:
            return Outcome(None, f"container {name} was removed and its exit status is lost")
        if not oom:
            return Outcome(exit_code)
        if self.metrics is not None:
            self.metrics.memory_kills.inc()
        limit = self.settings.job_max_memory_mb
        said = f"out of memory: limit {limit} MB" if limit else "out of memory"
        if exit_code != 0:
            return Outcome(exit_code, said)
        return Outcome(0, note=f"a process was killed for memory ({said})")

    async def _events_loop(self) -> None:
        """Wake the tracker as soon as one of our containers ends (the tick is the fallback)."""
        await wake_on_ends(
            self.engine,
            self.client_id,
            self._wake,
            watching=lambda: bool(self._tracked),
            retry_s=CONTAINER_TICK_S,
        )

    # ---- stop ------------------------------------------------------------------------------

    async def terminate(self, handle: Handle, grace_s: float) -> None:
        """SIGTERM to the job's processes (the init forwards it to the group), SIGKILL after
        the grace; an engine that does not answer is asked again until the container ended."""
        name = self.name(handle.id)
        while True:
            try:
                await self.engine.call(
                    "container",
                    "stop",
                    f"--time={max(0, round(grace_s))}",
                    name,
                    timeout_s=grace_s + 60.0,
                )
            except EngineUnavailableError:
                tracked = self._tracked.get(handle.id)
                if tracked is None or tracked.ended.done():
                    return
                await asyncio.sleep(CONTAINER_TICK_S)
                continue
            except EngineError:
                pass  # gone already
            self._wake.set()
            return

    def abandon(self, handle: Handle) -> None:
        task = asyncio.create_task(self._remove_quietly(self.name(handle.id)))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def remove_strays(self, keep: Collection[int]) -> None:
        """At start: remove this client's containers of payloads it no longer runs."""
        try:
            names = await self.engine.names(f"{LABEL_CLIENT}={self.client_id}")
        except EngineError as error:
            logger.warning("could not list this client's containers: %s", error)
            return
        kept = {self.name(payload_id) for payload_id in keep}
        for name in names:
            if name not in kept:
                logger.info("removing container %s: its payload is not running here", name)
                await self._remove_quietly(name)

    async def _remove_quietly(self, name: str) -> None:
        try:
            await self.engine.remove(name)
        except EngineError as error:
            logger.warning("could not remove container %s: %s", name, error)

    async def load_percent(self) -> float:
        return float(psutil.cpu_percent(interval=None))

    async def capacity(self, running: int, pending: int) -> int | None:
        return self.settings.max_concurrent

    async def close(self) -> None:
        tasks = [task for task in (self._tracker, self._events) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._background, return_exceptions=True)
        for tracked in self._tracked.values():
            if tracked.oom is not None:
                tracked.oom.close()


def _record(exit_dir: Path, exit_code: int, oom: bool) -> None:
    """The container's end, where a client that restarts finds it (the job never can)."""
    (exit_dir / "code").write_text(f"{exit_code}\n")
    if oom:
        (exit_dir / OOM_FILE).touch()
