"""What the runner needs from whatever executes a payload's run.sh.

The runner (client/runner.py, with launching.py and settling.py) owns the policy: validation,
slots, time limits and finishing (ZIP, status, message). An executor only starts the script,
reports its end, stops it, and finds it again after a client restart. `LocalExecutor` runs
it as a process group on this machine; `SlurmExecutor` hands it to Slurm as one batch job;
`ContainerExecutor` runs it in a container of its own (Docker or Podman).

Errors: `LaunchError` (the executor refused the payload for good: it ends Failed with the
message) and its subclass `LaunchUnavailableError` (the executor cannot be reached now: the
payload stays Prepared and the launch is tried again).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from job_orchestrator.client.payload import Payload


class LaunchError(Exception):
    """The payload cannot be started; the message says why (shown to the user)."""


class LaunchUnavailableError(LaunchError):
    """The executor is unreachable for now; try the launch again later."""


@dataclass(frozen=True, slots=True)
class Handle:
    """How an executor finds a payload's execution again: a pid or a Slurm job id."""

    kind: str
    id: int
    #: For a process: its start time, so a reused pid is never mistaken for it.
    started_at: float | None = None

    def encode(self) -> str:
        return json.dumps({"kind": self.kind, "id": self.id, "started_at": self.started_at})

    @classmethod
    def decode(cls, text: str | None) -> Handle | None:
        if not text:
            return None
        try:
            values = json.loads(text)
            return cls(str(values["kind"]), int(values["id"]), values.get("started_at"))
        except (ValueError, TypeError, KeyError):
            return None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an execution ended.

    `exit_code` is run.sh's status when known. `failure` is set when the executor itself
    ended the job or saw it fail in a way no exit status tells (a wall-time limit, out of
    memory, a node failure, a cancellation by someone else): such an outcome is never a
    success, whatever `exit_code` says.
    """

    exit_code: int | None
    failure: str | None = None
    #: Told to the user even when the exit status decides (a process killed for memory
    #: while run.sh went on and exited 0).
    note: str | None = None


class Executor(Protocol):
    """Starts, observes and stops payload executions of one kind."""

    kind: str
    #: Whether an execution runs as soon as `launch` returns (a local process), so its handle
    #: and its Running status reach the state file in one write; else (a Slurm job pending)
    #: the handle is written first and Running once `started` says so.
    runs_at_launch: bool
    #: Whether run.sh's log is written on this machine, so its size is final once the
    #: payload is (a Slurm job's log comes from the compute node, possibly late).
    log_is_local: bool

    async def launch(self, payload: Payload) -> Handle:
        """Start run.sh; raise LaunchError (or LaunchUnavailableError) if it cannot."""
        ...

    async def started(self, handle: Handle) -> float:
        """Wait until the execution runs (or ended); return when it started (epoch s)."""
        ...

    async def wait(self, payload: Payload, handle: Handle) -> Outcome:
        """Wait for the end of the execution (also one re-attached after a restart)."""
        ...

    async def terminate(self, handle: Handle, grace_s: float) -> None:
        """Stop the execution: a polite signal, then a hard kill after `grace_s`."""
        ...

    def find_launched(self, payload: Payload) -> Handle | None:
        """After a restart, for a payload recorded without a handle: an execution of it that
        was started all the same (the client died between the start and the record)."""
        ...

    def reattach(self, payload: Payload, handle: Handle) -> bool:
        """After a restart: whether the execution is still there to be waited for.

        False means it is gone for certain (wait() then reads what it left behind).
        """
        ...

    def abandon(self, handle: Handle) -> None:
        """The client stops watching an execution it started in this run: end it now."""
        ...

    async def remove_strays(self, keep: Collection[int]) -> None:
        """At start: remove what this client's executions of other payloads left behind
        (containers of payloads it no longer runs); `keep` are the payloads not final yet."""
        ...

    async def load_percent(self) -> float:
        """How busy the machines behind this executor are (0-100)."""
        ...

    async def capacity(self, running: int, pending: int) -> int | None:
        """How many payloads the server may keep here now (None: no limit)."""
        ...

    async def close(self) -> None: ...
