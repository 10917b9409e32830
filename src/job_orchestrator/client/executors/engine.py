"""The container engine's own command line (`docker` or `podman`), run as asyncio subprocesses.

Why the CLI and not the engines' HTTP APIs: one code path serves both engines (Podman's CLI
takes Docker's options), it needs no client library, and it honours the operator's usual
configuration (DOCKER_HOST, CONTAINER_HOST, contexts, podman's containers.conf) unchanged.
Its cost, one short process per call, is paid per state change of a payload, not per job
second: the executor inspects all of its containers in one call per tick, and one long-lived
`events` process wakes it when a container ends.

Errors: `EngineUnavailableError` (the engine does not answer: retry later) and
`EngineError` (it answered with a refusal; the message is the engine's, on one line).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from job_orchestrator.client.sandbox import job_environment

#: A command that takes longer is given up on (the engine is then taken as unreachable).
COMMAND_TIMEOUT_S = 60.0
#: What the CLIs print when they cannot reach their engine.
_UNREACHABLE = (
    "cannot connect to the docker daemon",
    "is the docker daemon running",
    "cannot connect to podman",
    "unable to connect to podman",
    "error during connect",
    "connection refused",
    "did not answer within",
)
#: What they print for a name already taken (one more guard against a payload run twice).
_CONFLICT = ("already in use", "conflict")
_NO_SUCH = ("no such container", "no such object", "no container with name")

#: The labels every container of ours carries.
LABEL_CLIENT = "org.job-orchestrator.client"
LABEL_PAYLOAD = "org.job-orchestrator.payload"


class EngineError(Exception):
    """The engine refused a command; the message says why."""


class EngineUnavailableError(EngineError):
    """The engine cannot be reached now."""


class NameConflictError(EngineError):
    """A container of that name exists already."""


@dataclass(frozen=True, slots=True)
class ContainerState:
    """What `inspect` says about one container."""

    name: str
    #: created, running, paused, restarting, removing, exited, dead (Podman: also stopped,
    #: configured, initialized).
    status: str
    exit_code: int
    #: The engine's own OOM flag (Docker sets it, Podman 4 on cgroup v1 does not).
    oom_killed: bool
    pid: int
    started_at: str
    #: Podman's cgroup of the container (relative to the hierarchy's root); "" for Docker.
    cgroup_path: str = ""

    @property
    def ended(self) -> bool:
        return self.status in {"exited", "dead", "stopped"}

    @property
    def never_started(self) -> bool:
        return self.status in {"created", "configured", "initialized"}


class Engine:
    """One engine CLI (`docker` or `podman`)."""

    def __init__(self, program: str) -> None:
        self.program = program
        self.is_podman = os.path.basename(program) == "podman"

    async def call(
        self, *arguments: str, timeout_s: float = COMMAND_TIMEOUT_S, cwd: Path | None = None
    ) -> str:
        """Run `<engine> arguments...`; its stdout, or EngineError / EngineUnavailableError.

        `cwd` is where it runs, and where what it leaves running stays: Podman's conmon
        writes a file `oom` into its working directory when the container's cgroup kills a
        process for memory (Podman then looks for it elsewhere, so `OOMKilled` stays false).
        """
        code, out, err = await self.run(*arguments, timeout_s=timeout_s, cwd=cwd)
        if code != 0:
            raise classify(err, code)
        return out

    async def run(
        self, *arguments: str, timeout_s: float = COMMAND_TIMEOUT_S, cwd: Path | None = None
    ) -> tuple[int, str, str]:
        """Run `<engine> arguments...`: (exit status, stdout, stderr); EngineUnavailableError
        if it cannot be started or does not answer in time."""
        try:
            process = await asyncio.create_subprocess_exec(
                self.program,
                *arguments,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=job_environment(os.environ),
                cwd=cwd,
            )
        except OSError as error:
            raise EngineUnavailableError(f"{self.program}: {error.strerror}") from error
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise EngineUnavailableError(
                f"{self.program} {arguments[0]} did not answer within {timeout_s:g} s"
            ) from None
        code = process.returncode if process.returncode is not None else -1
        return code, out.decode(errors="replace"), err.decode(errors="replace")

    def call_sync(self, *arguments: str) -> str:
        """`call` for the executor's synchronous hooks (run in a thread by the runner)."""
        try:
            done = subprocess.run(
                [self.program, *arguments],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=job_environment(os.environ),
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise EngineUnavailableError(f"{self.program}: {error}") from error
        if done.returncode != 0:
            raise classify(done.stderr.decode(errors="replace"), done.returncode)
        return done.stdout.decode(errors="replace")

    def ping_sync(self) -> None:
        """Raise EngineUnavailableError unless the engine answers (checked at start)."""
        self.call_sync("version", "--format", "{{.Server.Version}}" if not self.is_podman else "ok")

    # ---- containers ------------------------------------------------------------------------

    def _inspect_format(self) -> str:
        fields = [
            "{{json .Name}}",
            "{{json .State.Status}}",
            "{{.State.ExitCode}}",
            "{{.State.OOMKilled}}",
            "{{.State.Pid}}",
            "{{json .State.StartedAt}}",
        ]
        if self.is_podman:
            fields.append("{{json .State.CgroupPath}}")
        return "\t".join(fields)

    async def inspect(self, names: Sequence[str]) -> dict[str, ContainerState]:
        """The state of the containers of these names that exist (the others are left out)."""
        if not names:
            return {}
        code, out, err = await self.run(
            "container", "inspect", "--format", self._inspect_format(), *names
        )
        if code != 0:
            # Some names are gone: the engine still prints the others (exit status 1 or 125).
            error = classify(err, code)
            if isinstance(error, EngineUnavailableError) or not _is_no_such(str(error)):
                raise error
        return _parse_states(out)

    def inspect_sync(self, name: str) -> ContainerState | None:
        try:
            out = self.call_sync("container", "inspect", "--format", self._inspect_format(), name)
        except EngineUnavailableError:
            raise
        except EngineError as error:
            if _is_no_such(str(error)):
                return None
            raise
        return _parse_states(out).get(name)

    async def names(self, label: str) -> list[str]:
        """The names of every container (running or not) that carries `label` (k=v)."""
        out = await self.call(
            "container", "ls", "--all", "--filter", f"label={label}", "--format", "{{.Names}}"
        )
        return [line.strip() for line in out.splitlines() if line.strip()]

    async def remove(self, name: str) -> None:
        """Remove a container, running or not; one already gone is fine."""
        try:
            await self.call("container", "rm", "--force", name)
        except EngineUnavailableError:
            raise
        except EngineError as error:
            if not _is_no_such(str(error)):
                raise


def classify(stderr: str, returncode: int | None) -> EngineError:
    """The error a failed command's stderr stands for (its text on one line)."""
    text = "; ".join(line.strip() for line in stderr.strip().splitlines() if line.strip())
    text = text or f"exit status {returncode}"
    lowered = text.lower()
    if any(marker in lowered for marker in _UNREACHABLE):
        return EngineUnavailableError(text)
    if any(marker in lowered for marker in _CONFLICT):
        return NameConflictError(text)
    return EngineError(text)


def _is_no_such(message: str) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in _NO_SUCH)


def _parse_states(out: str) -> dict[str, ContainerState]:
    states: dict[str, ContainerState] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) < 6:
            continue
        with contextlib.suppress(ValueError, TypeError):
            name = str(json.loads(parts[0])).lstrip("/")
            states[name] = ContainerState(
                name=name,
                status=str(json.loads(parts[1])).lower(),
                exit_code=int(parts[2]),
                oom_killed=parts[3].strip().lower() == "true",
                pid=int(parts[4]),
                started_at=str(json.loads(parts[5])),
                cgroup_path=str(json.loads(parts[6])) if len(parts) > 6 else "",
            )
    return states
