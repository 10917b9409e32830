"""EXECUTOR: how the client runs payloads, and the settings of the Slurm and container ones.

Whether a container engine answers is checked at start (cli.py); here only that its command
is on the PATH.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from job_orchestrator import settings_table as table
from job_orchestrator.config._common import (
    parse_seconds,
    parse_unsigned,
    read_optional,
    read_seconds,
)
from job_orchestrator.errors import ConfigError

CONTAINER_EXECUTORS = frozenset({"docker", "podman"})
#: What CLIENT_ID may be: it is part of container names, which engines restrict.
CLIENT_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,39}")


@dataclass(frozen=True, slots=True)
class SlurmSettings:
    """EXECUTOR=slurm: where and how payloads are submitted as batch jobs."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    #: More sbatch options (SLURM_EXTRA_ARGS, split like a shell would).
    extra_args: tuple[str, ...] = ()
    #: Seconds between two squeue calls (for all jobs) while jobs are in Slurm.
    poll_interval_s: float = 0.5

    def sbatch_options(self) -> list[str]:
        options = [
            f"--{name}={value}"
            for name, value in (
                ("partition", self.partition),
                ("account", self.account),
                ("qos", self.qos),
            )
            if value
        ]
        return [*options, *self.extra_args]


@dataclass(frozen=True, slots=True)
class ContainerSettings:
    """EXECUTOR=docker or podman: the image, network and limits of the payloads' containers."""

    image: str = ""
    #: Patterns (fnmatch) of the images a server may name for a payload; CONTAINER_IMAGE always.
    images: tuple[str, ...] = ()
    network: str = "none"
    shm_mb: int = 256
    #: More `create` options (CONTAINER_OPTIONS, split like a shell would).
    options: tuple[str, ...] = ()
    #: CLIENT_ID as given; None: made at the first start and kept in DATA_PATH.
    client_id: str | None = None
    max_cpus: float | None = None
    #: JOB_ENV: the names of the client's variables a container gets.
    env: tuple[str, ...] = ()


def read_executor(env: Mapping[str, str]) -> str:
    executor = table.text(env, table.EXECUTOR).strip().lower() or table.EXECUTOR.literal
    if executor not in {"local", "slurm", *CONTAINER_EXECUTORS}:
        raise ConfigError("EXECUTOR", f"expected local, slurm, docker or podman, got {executor!r}")
    if executor in CONTAINER_EXECUTORS and shutil.which(executor) is None:
        raise ConfigError("EXECUTOR", f"{executor} needs the {executor} command on the PATH")
    if executor == "slurm":
        if shutil.which("sbatch") is None:
            raise ConfigError("EXECUTOR", "slurm needs sbatch, squeue and scancel on the PATH")
        if read_optional(env, table.JOB_USER) is not None:
            raise ConfigError("JOB_USER", "not supported with EXECUTOR=slurm (jobs run as you)")
        if read_optional(env, table.JOB_USERS) is not None:
            raise ConfigError("JOB_USERS", "not supported with EXECUTOR=slurm (jobs run as you)")
    return executor


def read_slurm(env: Mapping[str, str]) -> SlurmSettings:
    extra = table.raw(env, table.SLURM_EXTRA_ARGS) or ""
    try:
        extra_args = tuple(shlex.split(extra))
    except ValueError as error:
        raise ConfigError(
            "SLURM_EXTRA_ARGS", f"not a shell-quoted list ({error}): {extra!r}"
        ) from None
    poll_interval_s = read_seconds(env, table.SLURM_POLL_INTERVAL)
    if not 0 < poll_interval_s <= 10:
        raise ConfigError("SLURM_POLL_INTERVAL", "expected more than 0 and at most 10 seconds")
    return SlurmSettings(
        poll_interval_s=poll_interval_s,
        partition=read_optional(env, table.SLURM_PARTITION),
        account=read_optional(env, table.SLURM_ACCOUNT),
        qos=read_optional(env, table.SLURM_QOS),
        extra_args=extra_args,
    )


def read_containers(env: Mapping[str, str]) -> ContainerSettings:
    """EXECUTOR=docker or podman: whether the engine answers is checked at start (cli.py)."""
    image = (read_optional(env, table.CONTAINER_IMAGE) or "").strip()
    if not image:
        raise ConfigError("CONTAINER_IMAGE", "required with EXECUTOR=docker or podman")
    images = tuple(
        part.strip() for part in (read_optional(env, table.CONTAINER_IMAGES) or "").split(",")
    )
    network = table.text(env, table.CONTAINER_NETWORK).strip() or "none"
    if network in {"host", "bridge", "default"} or network.startswith("container:"):
        # The host's network (or a shared one) is not confinement; a network the operator
        # made for jobs is named explicitly.
        raise ConfigError("CONTAINER_NETWORK", f"{network!r} is not allowed; use none or a name")
    options = table.raw(env, table.CONTAINER_OPTIONS) or ""
    try:
        split_options = tuple(shlex.split(options))
    except ValueError as error:
        raise ConfigError("CONTAINER_OPTIONS", f"not a shell-quoted list ({error})") from None
    client_id = read_optional(env, table.CLIENT_ID)
    if client_id is not None and not CLIENT_ID_PATTERN.fullmatch(client_id):
        raise ConfigError(
            "CLIENT_ID", "expected 1-40 of a-z 0-9 _ . - (starting with a letter or digit)"
        )
    max_cpus = read_optional(env, table.JOB_MAX_CPUS)
    cpus = None
    if max_cpus is not None:
        cpus = parse_seconds("JOB_MAX_CPUS", max_cpus)  # a finite non-negative number
        if cpus < 0.01:
            raise ConfigError("JOB_MAX_CPUS", "must be at least 0.01 (leave it unset for no limit)")
    names = tuple(
        name.strip()
        for name in (read_optional(env, table.JOB_ENV) or "").split(",")
        if name.strip()
    )
    return ContainerSettings(
        image=image,
        images=tuple(pattern for pattern in images if pattern),
        network=network,
        shm_mb=parse_unsigned(
            "CONTAINER_SHM_MB", table.text(env, table.CONTAINER_SHM_MB), maximum=1 << 20
        )
        or 64,
        options=split_options,
        client_id=client_id,
        max_cpus=cpus,
        env=names,
    )
