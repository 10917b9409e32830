"""What every benchmark case shares: sizes, the result model, statistics and process probes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import sys
import threading
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from testkit.harness import Cluster, cluster

MIB = 1024 * 1024
MB = 1_000_000

#: The workload of every latency figure: one line into output.txt.
SCRIPT = 'echo "hello from the benchmark" > output.txt\n'
EXPECTED_OUTPUT = b"hello from the benchmark\n"
SERVICE = "example"
FINAL_NOT_COMPLETED = {"Failed", "Invalid", "Killed", "Cleaned", "Unknown"}


@dataclass(frozen=True)
class Sizes:
    floor_runs: int = 100
    latency_jobs: int = 50
    latency_warmup: int = 3
    latency_poll_s: float = 0.002
    throughput_jobs: int = 1000
    throughput_users: int = 10
    throughput_concurrency: int = 32
    throughput_poll_s: float = 0.02
    scheduler_sizes: tuple[tuple[int, int], ...] = ((10_000, 1_000), (100_000, 10_000))
    scheduler_repeats: int = 10
    store_jobs: int = 2000
    big_bytes: int = 390 * MIB
    big_poll_s: float = 0.005
    fairness_users: int = 4
    fairness_jobs: int = 50
    fairness_window: int = 8
    soak_jobs: int = 20_000


FULL = Sizes()
QUICK = Sizes(
    floor_runs=20,
    latency_jobs=5,
    latency_warmup=1,
    throughput_jobs=20,
    scheduler_sizes=((2_000, 200),),
    scheduler_repeats=3,
    store_jobs=100,
    big_bytes=5 * MB,
    fairness_users=2,
    fairness_jobs=5,
    soak_jobs=200,
)


@dataclass
class Context:
    """Shared by the cases of one run: sizes, scratch space, and baselines measured so far."""

    sizes: Sizes
    workdir: Path
    quick: bool
    profile_dir: Path | None = None
    floor_p50_s: float | None = None
    #: Our headline figures, for the cases that compare others with us (peers): latency
    #: `p50` and `wait_p50` in seconds, `throughput` in jobs/s.
    figures: dict[str, float] = field(default_factory=dict)
    #: How many PostgreSQL replicas the `replicas` case measures beside one.
    replicas: int = 3
    #: `--original`: cases that can also measure the original 2.2.3 beside ours do.
    with_original: bool = False


@dataclass(frozen=True)
class Metric:
    name: str
    value: str


@dataclass(frozen=True)
class Target:
    description: str
    measured: str
    passed: bool

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "MISS"


@dataclass
class SectionResult:
    name: str
    title: str
    setup: str = ""
    metrics: list[Metric] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    elapsed_s: float = 0.0

    def add(self, name: str, value: str) -> None:
        self.metrics.append(Metric(name, value))

    def target(self, description: str, measured: str, passed: bool) -> None:
        self.targets.append(Target(description, measured, passed))


def log(message: str) -> None:
    """Progress goes to stderr, so stdout carries only the tables."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def ms(seconds: float) -> str:
    value = seconds * 1000
    if value >= 100:
        return f"{value:.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


def mb(nbytes: float) -> str:
    return f"{nbytes / MB:.1f} MB"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


# ---- the system under test ---------------------------------------------------------------


@contextlib.contextmanager
def running_cluster(
    root: Path,
    *,
    server_env: Mapping[str, str] | None = None,
    client_env: Mapping[str, str] | None = None,
) -> Iterator[Cluster]:
    """One real server and one real client (testkit.harness), torn down whatever happens."""
    root.mkdir(parents=True, exist_ok=True)
    with cluster(root, server_env=server_env, client_env=client_env) as running:
        yield running


def _metric_samples(running: Cluster, base_url: str | None = None) -> list[Sample]:
    url = base_url or running.api.base_url
    response = httpx.get(f"{url}/metrics", timeout=30, trust_env=False)
    response.raise_for_status()
    return [
        sample
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]


def retrieve_calls(running: Cluster) -> float:
    """The /retrieve calls the server has made to its clients so far (its /metrics)."""
    return sum(
        sample.value
        for sample in _metric_samples(running)
        if sample.name == "job_orchestrator_client_call_seconds_count"
        and sample.labels.get("call") == "retrieve"
    )


def store_work(running: Cluster, base_url: str | None = None) -> tuple[dict[str, float], float]:
    """The server's store units of work per verb and its commits so far (its /metrics; of
    the server at `base_url`, if given, else the cluster's first)."""
    samples = _metric_samples(running, base_url)
    per_verb = {
        sample.labels["verb"]: sample.value
        for sample in samples
        if sample.name == "job_orchestrator_store_operations_total"
    }
    commits = sum(
        sample.value for sample in samples if sample.name == "job_orchestrator_store_commits_total"
    )
    return per_verb, commits


def store_round_trips(running: Cluster, base_url: str | None = None) -> float:
    """The requests the server has sent its database server so far (its /metrics; 0 on
    SQLite)."""
    return sum(
        sample.value
        for sample in _metric_samples(running, base_url)
        if sample.name == "job_orchestrator_store_round_trips_total"
    )


def processes(running: Cluster) -> dict[str, psutil.Process]:
    assert running.server is not None
    assert running.server.process is not None
    client = running.clients[0].process
    assert client is not None
    return {
        "server": psutil.Process(running.server.process.pid),
        "client": psutil.Process(client.pid),
    }


def http_client(base_url: str, timeout_s: float = 120.0) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=timeout_s, trust_env=False)


def upload_form(user_id: int | str) -> dict[str, str]:
    return {"user_id": str(user_id), "service": SERVICE}


def check_result_zip(content: bytes, job_id: int) -> None:
    output = zipfile.ZipFile(io.BytesIO(content)).read("output.txt")
    if output != EXPECTED_OUTPUT:
        raise RuntimeError(f"job {job_id}: unexpected output.txt {output!r}")


def check_status_body(response: httpx.Response, job_id: int) -> str:
    """The status of a JSON /download answer; raises if the job can no longer complete."""
    return check_status(response.status_code, response.content, job_id)


def check_status(status_code: int, content: bytes, job_id: int) -> str:
    """check_status_body for any HTTP library's answer: its status code and body."""
    if status_code != 200:
        raise RuntimeError(f"job {job_id}: /download answered {status_code}")
    body = json.loads(content)
    status = str(body.get("status"))
    if status in FINAL_NOT_COMPLETED:
        raise RuntimeError(f"job {job_id} ended {status}: {body.get('message')}")
    return status


def is_zip(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("application/zip")


# ---- process probes ----------------------------------------------------------------------


@dataclass(frozen=True)
class CpuSnapshot:
    own: dict[str, float]
    children: dict[str, float]
    wall: float


def cpu_snapshot(procs: Mapping[str, psutil.Process]) -> CpuSnapshot:
    """CPU seconds of each process (and of its reaped children: the client's job scripts)."""
    own, children = {}, {}
    for name, process in procs.items():
        times = process.cpu_times()
        own[name] = times.user + times.system
        children[name] = times.children_user + times.children_system
    return CpuSnapshot(own, children, time.perf_counter())


def cpu_breakdown(before: CpuSnapshot, after: CpuSnapshot, jobs: int) -> str:
    """'server 3.1 ms, client 2.0 ms, ... per job; N% of the machine busy'."""
    parts = []
    total = 0.0
    for name in before.own:
        used = after.own[name] - before.own[name]
        total += used
        parts.append(f"{name} {ms(used / jobs)}")
    scripts = after.children["client"] - before.children["client"]
    total += scripts
    parts.append(f"job scripts {ms(scripts / jobs)}")
    wall = after.wall - before.wall
    cores = os.cpu_count() or 1
    busy = 100 * total / (wall * cores) if wall > 0 else 0.0
    return f"{', '.join(parts)} (these processes kept {busy:.0f}% of {cores} cores busy)"


class StatusCounts:
    """Jobs per status, sampled now and then: the mean and the largest count of each."""

    def __init__(self) -> None:
        self.samples: list[dict[str, int]] = []

    def add(self, sample: dict[str, int]) -> None:
        self.samples.append(sample)

    def summary(self, statuses: Sequence[str]) -> str:
        if not self.samples:
            return "no samples"
        parts = []
        for status in statuses:
            counts = [sample.get(status, 0) for sample in self.samples]
            parts.append(f"{status} {sum(counts) / len(counts):.1f} (max {max(counts)})")
        return ", ".join(parts)


class StatusSampler:
    """Counts the server's jobs by status every `interval_s`, read-only from its SQLite file.

    Shows where jobs wait (queued, processing = being sent, submitted/running = on the
    client). Statuses are stored lower-case, as the original's.
    """

    def __init__(self, db_path: Path, interval_s: float = 0.25) -> None:
        self._db_path = db_path
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-sampler", daemon=True)
        self.counts = StatusCounts()

    def _run(self) -> None:
        with contextlib.closing(
            sqlite3.connect(f"file:{self._db_path}?mode=ro", uri=True, timeout=5)
        ) as connection:
            while not self._stop.is_set():
                with contextlib.suppress(sqlite3.Error):
                    rows = connection.execute("SELECT status, count(*) FROM jobs GROUP BY status")
                    self.counts.add({str(status): int(n) for status, n in rows})
                self._stop.wait(self._interval_s)

    def __enter__(self) -> StatusSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self, statuses: Sequence[str]) -> str:
        return self.counts.summary(statuses)


class RssSampler:
    """Samples the RSS of some processes every `interval_s` in a thread; phases are marked."""

    def __init__(self, procs: Mapping[str, psutil.Process], interval_s: float = 0.05) -> None:
        self._procs = dict(procs)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.marks: list[tuple[str, float]] = []

    def _sample(self) -> None:
        values = {}
        for name, process in self._procs.items():
            with contextlib.suppress(psutil.Error):
                values[name] = process.memory_info().rss
        self.samples.append((time.perf_counter(), values))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval_s)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def mark(self, phase: str) -> None:
        """From now on, samples belong to `phase` (until the next mark)."""
        self._sample()
        self.marks.append((phase, time.perf_counter()))

    def baseline(self, name: str) -> int:
        return self.samples[0][1][name]

    def peak(self, name: str, phase: str | None = None) -> int:
        start, end = 0.0, float("inf")
        if phase is not None:
            names = [mark for mark, _ in self.marks]
            index = names.index(phase)
            start = self.marks[index][1]
            if index + 1 < len(self.marks):
                end = self.marks[index + 1][1]
        return max(values.get(name, 0) for stamp, values in self.samples if start <= stamp <= end)


def upload_latencies(
    base_url: str, jobs: int, poll_s: float, service: str = SERVICE, script: str = SCRIPT
) -> list[float]:
    """Seconds from upload to the result ZIP of `jobs` trivial jobs one at a time, polling
    /download every `poll_s`, after one warm-up job (image caches, imports) not counted."""
    durations = []
    with http_client(base_url) as http:
        for index in range(jobs + 1):
            started = time.perf_counter()
            response = http.post(
                "/upload",
                files=[("file", ("run.sh", script))],
                data={**upload_form(1), "service": service},
            )
            if response.status_code != 201:
                raise RuntimeError(f"upload answered {response.status_code}: {response.text}")
            job_id = int(response.json()["id"])
            while True:
                answer = http.get(f"/download/{job_id}")
                if is_zip(answer):
                    check_result_zip(answer.content, job_id)
                    break
                check_status_body(answer, job_id)
                time.sleep(poll_s)
            if index:
                durations.append(time.perf_counter() - started)
    return durations
