"""The server's Prometheus metrics, in a registry of its own (one per app, not the global one).

Job counts per status and queue depth are read from the store at scrape time, in one grouped
query, so they are right after a restart and agree across replicas sharing a database; client
health and load come from a snapshot of the fleet's last check (fleet_snapshot.py). Counters
and histograms are this process's: they are observed where jobs change state (the dispatcher)
and where clients are called (the gateway), and start from zero at a restart, as Prometheus
expects of counters.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from job_orchestrator.errors import (
    PayloadLostError,
    PermanentClientError,
    TransientClientError,
    UndeliveredError,
)
from job_orchestrator.status import CLIENT_CONDITIONS, Status

if TYPE_CHECKING:
    from job_orchestrator.config import NodeConfig
    from job_orchestrator.server.fleet_snapshot import FleetSnapshot
    from job_orchestrator.server.storage import JobRecord, ServerStore

PREFIX = "job_orchestrator_"
#: Queue waits and run times range from milliseconds to days.
DURATION_BUCKETS_S = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, float("inf"))
CALL_BUCKETS_S = (0.005, 0.025, 0.1, 0.5, 1, 5, 30, 60, float("inf"))


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._live = _LiveCollector()
        self.registry.register(self._live)
        self.finished = Counter(
            f"{PREFIX}jobs_finished",
            "Jobs that reached a final status, by outcome (this process)",
            ["service", "outcome"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}job_queue_wait_seconds",
            "From upload to the hand-over to a client",
            ["service"],
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )
        self.run_time = Histogram(
            f"{PREFIX}job_run_seconds",
            "From the hand-over to a client to the final status reported by it",
            ["service", "outcome"],
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )
        self.client_calls = Histogram(
            f"{PREFIX}client_call_seconds",
            "Calls from the server to clients, by client, call and outcome",
            ["client", "call", "outcome"],
            buckets=CALL_BUCKETS_S,
            registry=self.registry,
        )

    # ---- observation points ----------------------------------------------------------------

    def job_started(self, job: JobRecord) -> None:
        if job.queued_at is not None:
            self.queue_wait.labels(job.service).observe(max(0.0, time.time() - job.queued_at))

    def job_finished(self, job: JobRecord, status: Status, *, ran: bool = False) -> None:
        """`ran`: the client reported the outcome, so the job's run time is known too."""
        self.finished.labels(job.service, status.wire).inc()
        if ran and job.dispatched_at is not None:
            self.run_time.labels(job.service, status.wire).observe(
                max(0.0, time.time() - job.dispatched_at)
            )

    # ---- scrape ----------------------------------------------------------------------------

    async def exposition(self, store: ServerStore, fleet: FleetSnapshot) -> bytes:
        self._live.counts = await store.status_counts()
        self._live.work = store.work_counts()
        self._live.round_trips = store.round_trips()
        self._live.leads_dispatch = store.leads_dispatch()
        self._live.fleet = fleet
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """Gauges computed from the latest store read and fleet snapshot (set just before a scrape)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, Status], int] = {}
        self.work: tuple[Mapping[str, int], int] = ({}, 0)
        self.round_trips = 0
        self.leads_dispatch = True
        self.fleet: FleetSnapshot | None = None

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            f"{PREFIX}jobs", "Jobs in the store by service and status", labels=["service", "status"]
        )
        depth = GaugeMetricFamily(
            f"{PREFIX}queue_depth", "Queued jobs per service", labels=["service"]
        )
        queued: dict[str, int] = {}
        for (service, status), count in sorted(self.counts.items(), key=lambda i: str(i[0])):
            jobs.add_metric([service, status.wire], count)
            if status is Status.QUEUED:
                queued[service] = queued.get(service, 0) + count
        services = {service for service, _status in self.counts}
        if self.fleet is not None:
            services |= set(self.fleet.services)
        for service in sorted(services):
            depth.add_metric([service], queued.get(service, 0))
        yield jobs
        yield depth
        yield from self._store_work()
        yield from self._clients()

    def _store_work(self) -> Iterator[Metric]:
        per_verb, commits = self.work
        operations = CounterMetricFamily(
            f"{PREFIX}store_operations",
            "Units of work the store ran, by verb (this process)",
            labels=["verb"],
        )
        for verb, count in sorted(per_verb.items()):
            operations.add_metric([verb], count)
        yield operations
        yield CounterMetricFamily(
            f"{PREFIX}store_commits",
            "Transactions the store committed (this process; on SQLite one may hold many units)",
            value=commits,
        )
        yield CounterMetricFamily(
            f"{PREFIX}store_round_trips",
            "Requests sent to the database server and waited for (this process; 0 on SQLite)",
            value=self.round_trips,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}dispatch_leader",
            "1 if this replica decides dispatch on every wake-up (the others only on their "
            "safety tick); always 1 for a server alone (SQLite)",
            value=int(self.leads_dispatch),
        )

    def _clients(self) -> Iterator[Metric]:
        labels = ["service", "client"]
        up = GaugeMetricFamily(
            f"{PREFIX}client_up",
            "1 if the client answers checks and accepts the server's token",
            labels=labels,
        )
        condition = GaugeMetricFamily(
            f"{PREFIX}client_state",
            "1 for the client's state: up, down, unauthorized (refuses the server's token) or "
            "disk_full (below its DISK_RESERVE_MB)",
            labels=[*labels, "state"],
        )
        load = GaugeMetricFamily(
            f"{PREFIX}client_load_percent", "CPU use the client last reported", labels=labels
        )
        capacity = GaugeMetricFamily(
            f"{PREFIX}client_capacity", "MAX_CONCURRENT the client declares", labels=labels
        )
        if self.fleet is not None:
            for service in self.fleet.services:
                for node in self.fleet.of_service(service):
                    key = [service, node.url]
                    up.add_metric(key, 1 if node.condition == "up" else 0)
                    for name in CLIENT_CONDITIONS:
                        condition.add_metric([*key, name], 1 if name == node.condition else 0)
                    if node.load_percent is not None:
                        load.add_metric(key, node.load_percent)
                    if node.max_concurrent is not None:
                        capacity.add_metric(key, node.max_concurrent)
        yield up
        yield condition
        yield load
        yield capacity


# ---- the gateway's calls ---------------------------------------------------------------------


class _Observed(Protocol):
    metrics: ServerMetrics | None


P = ParamSpec("P")
R = TypeVar("R")
G = TypeVar("G", bound=_Observed)


def _outcome(error: BaseException) -> str:
    if isinstance(error, PayloadLostError):
        return "lost"
    if isinstance(error, UndeliveredError):
        return "undelivered"
    if isinstance(error, TransientClientError):
        return "transient"
    if isinstance(error, PermanentClientError):
        return "permanent"
    return "error"


def observed_call(
    call: str,
) -> Callable[
    [Callable[Concatenate[G, NodeConfig, P], Coroutine[Any, Any, R]]],
    Callable[Concatenate[G, NodeConfig, P], Coroutine[Any, Any, R]],
]:
    """Time a gateway method (its first argument the node) into client_call_seconds."""

    def decorate(
        method: Callable[Concatenate[G, NodeConfig, P], Coroutine[Any, Any, R]],
    ) -> Callable[Concatenate[G, NodeConfig, P], Coroutine[Any, Any, R]]:
        @functools.wraps(method)
        async def wrapper(self: G, node: NodeConfig, /, *args: P.args, **kwargs: P.kwargs) -> R:
            started = time.monotonic()
            outcome = "ok"
            try:
                return await method(self, node, *args, **kwargs)
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            except Exception as error:
                outcome = _outcome(error)
                raise
            finally:
                if self.metrics is not None:
                    self.metrics.client_calls.labels(node.upload_url, call, outcome).observe(
                        time.monotonic() - started
                    )

        return wrapper

    return decorate
