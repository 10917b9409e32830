"""Executors: how a payload's run.sh is executed (EXECUTOR=local, slurm, docker or podman)."""

from __future__ import annotations

from job_orchestrator.client.executors.base import Executor
from job_orchestrator.client.metrics import ClientMetrics
from job_orchestrator.config import ClientSettings


def make_executor(settings: ClientSettings, metrics: ClientMetrics) -> Executor:
    if settings.executor == "slurm":
        from job_orchestrator.client.executors.slurm import SlurmExecutor

        return SlurmExecutor(settings, metrics.slurm_calls)
    if settings.executor in ("docker", "podman"):
        from job_orchestrator.client.executors.container import ContainerExecutor

        return ContainerExecutor(settings, metrics)
    from job_orchestrator.client.executors.local import LocalExecutor

    return LocalExecutor(settings)
