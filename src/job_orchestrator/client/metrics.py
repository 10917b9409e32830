"""The client's Prometheus metrics, in a registry of its own (one per app, not the global one).

Payloads per status are read from the registry at scrape time; the counters and the run-time
histogram are observed by the runner and start from zero when the client restarts.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from job_orchestrator.client.registry import Registry
from job_orchestrator.status import Status

PREFIX = "job_orchestrator_client_"
DURATION_BUCKETS_S = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, float("inf"))


class ClientMetrics:
    def __init__(self, registry: Registry) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_PayloadCollector(registry))
        self.runs = Counter(
            f"{PREFIX}runs",
            "run.sh runs that ended, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.run_time = Histogram(
            f"{PREFIX}run_seconds",
            "From the start of run.sh to its final status",
            ["outcome"],
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )
        self.executor_errors = Counter(
            f"{PREFIX}executor_errors",
            "run.sh could not be started, or a payload's task failed unexpectedly",
            registry=self.registry,
        )
        self.disk_free = Gauge(
            f"{PREFIX}disk_free_bytes",
            "Free space on DATA_PATH's file system at the last check (DISK_CHECK_INTERVAL)",
            registry=self.registry,
        )
        self.disk_stops = Counter(
            f"{PREFIX}disk_stops",
            "Jobs stopped for disk space: reserve (eating into DISK_RESERVE_MB) or limit "
            "(past JOB_MAX_DISK_MB)",
            ["cause"],
            registry=self.registry,
        )
        self.container_start = Histogram(
            f"{PREFIX}container_start_seconds",
            "EXECUTOR=docker or podman: from the create of a container to its start",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, float("inf")),
            registry=self.registry,
        )
        self.memory_kills = Counter(
            f"{PREFIX}memory_kills",
            "EXECUTOR=docker or podman: containers in which a process was killed for memory",
            registry=self.registry,
        )

        self.slurm_calls = Counter(
            f"{PREFIX}slurm_calls",
            "Slurm commands run by EXECUTOR=slurm (squeue: one per tick for all jobs)",
            ["command"],
            registry=self.registry,
        )

    def run_ended(self, status: Status, seconds: float) -> None:
        self.runs.labels(status.wire).inc()
        self.run_time.labels(status.wire).observe(max(0.0, seconds))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _PayloadCollector(Collector):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        payloads = GaugeMetricFamily(
            f"{PREFIX}payloads", "Payloads in the registry by status", labels=["status"]
        )
        for status, count in sorted(
            self._registry.status_counts().items(), key=lambda i: i[0].wire
        ):
            payloads.add_metric([status.wire], count)
        yield payloads
