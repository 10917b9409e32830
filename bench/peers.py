"""peers: Celery + Redis and Galaxy Pulsar run the same trivial job, beside ours, in one run.

The peers live in a venv of the bench's own (PEERS_VENV, made on first use with the pinned
versions below), never in the project's dependencies; their drivers in bench/peer_drivers/
run under that venv and print what they measured as JSON. What each system does per job:

- ours: multipart upload of run.sh, dispatch to a client over HTTP, `bash run.sh` in a job
  directory, ZIP of the directory, ZIP downloaded and output.txt read from it;
- Galaxy Pulsar: HTTP staging of run.sh into a job directory, `bash run.sh`, output.txt
  downloaded over HTTP (no archive), the submitter polls its status;
- Celery + Redis: the script's text travels in the task message, the worker writes it to a
  temp directory, runs it and pushes output.txt's text back through Redis: no files are
  staged and no archive is made, so it is a lower bound for a Python queue.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    EXPECTED_OUTPUT,
    SCRIPT,
    Context,
    SectionResult,
    log,
    median,
    ms,
    percentile,
)
from testkit import eventually
from testkit.harness import free_port

PEERS_VENV = Path(
    os.environ.get("PEERS_VENV", Path.home() / ".cache/job-orchestrator-bench/peers-venv")
)
PINS = ("celery[redis]==5.7.0", "redis==8.1.0", "pulsar-app[web]==0.16.0")
DRIVERS = Path(__file__).with_name("peer_drivers")
#: Every package of the venv at a known version (`pip freeze` of a working install). The pins
#: alone let pip take new releases of their dependencies, and one did break the install:
#: kombu 5.7 no longer resolved with the redis-py 5.2 pinned here before.
CONSTRAINTS = DRIVERS / "constraints.txt"
#: Concurrent jobs each peer may run: the same as its workers, two per core.
WORKERS = 4
WARMUP = 2


def _python() -> Path:
    """The peers' venv interpreter, (re)installed when the pins or constraints changed."""
    python = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / "installed-pins.txt"
    wanted = "\n".join(PINS) + "\n" + CONSTRAINTS.read_text()
    if python.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    log(f"peers: installing {', '.join(PINS)} into {PEERS_VENV}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEERS_VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS), *PINS], check=True
    )
    stamp.write_text(wanted)
    return python


@contextlib.contextmanager
def _process_group(command: list[str], log_path: Path, **options: object) -> Iterator[None]:
    """A peer daemon in its own process group, stopped with all its children on exit."""
    with log_path.open("ab") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, **options
        )  # type: ignore[call-overload]
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _until(ready: Callable[[], bool], what: str, log_path: Path, timeout_s: float = 60) -> None:
    eventually(ready, f"{what} to start", timeout_s, poll_s=0.2, detail=log_path.read_text)


def _drive(python: Path, driver: str, arguments: list[str], env: dict[str, str]) -> dict[str, Any]:
    completed = subprocess.run(
        [str(python), str(DRIVERS / driver), *arguments],
        cwd=DRIVERS,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{driver} {arguments[:3]} failed: {completed.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return figures


@contextlib.contextmanager
def _celery(python: Path, root: Path) -> Iterator[dict[str, str]]:
    redis = shutil.which("redis-server")
    if redis is None:
        raise RuntimeError("redis-server is missing: apt-get install redis-server")
    port = free_port()
    jobs = root / "jobs"
    jobs.mkdir(parents=True)
    env = {
        **os.environ,
        "JOBENCH_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "JOBENCH_JOB_ROOT": str(jobs),
    }
    redis_log, worker_log = root / "redis.log", root / "celery-worker.log"
    with _process_group(
        [redis, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        redis_log,
    ):
        _until(lambda: _answers_redis(port), "redis-server", redis_log)
        worker = [str(python), "-m", "celery", "-A", "celery_app", "worker", "--pool=prefork"]
        with _process_group(
            [*worker, f"--concurrency={WORKERS}", "--loglevel=WARNING", "-n", f"jobench{port}@%h"],
            worker_log,
            cwd=DRIVERS,
            env=env,
        ):
            ping = [str(python), "-m", "celery", "-A", "celery_app", "inspect", "ping", "-t", "1"]
            _until(
                lambda: "pong" in _output(ping, env),
                "the celery worker",
                worker_log,
            )
            yield env


def _answers_redis(port: int) -> bool:
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=1) as connection,
    ):
        connection.sendall(b"PING\r\n")
        return connection.recv(16).startswith(b"+PONG")
    return False


def _output(command: list[str], env: dict[str, str]) -> str:
    return subprocess.run(command, cwd=DRIVERS, env=env, capture_output=True, text=True).stdout


@contextlib.contextmanager
def _pulsar(python: Path, root: Path) -> Iterator[str]:
    port = free_port()
    config, data = root / "config", root / "data"
    config.mkdir(parents=True)
    bin_dir = python.parent
    scaffold = ["--directory", str(config), "--host", "127.0.0.1", "--port", str(port)]
    subprocess.run(
        [str(bin_dir / "pulsar-config"), *scaffold],
        check=True,
        capture_output=True,
    )
    # Its best settings for short jobs: the server re-checks active jobs every 10 ms (the
    # default is 500 ms), WORKERS jobs at once.
    (config / "app.yml").write_text(
        "conda_auto_init: false\nconda_auto_install: false\n"
        f"staging_directory: {data}/staging\npersistence_directory: {data}/persisted\n"
        "managers:\n  _default_:\n    type: queued_python\n"
        f"    num_concurrent_jobs: {WORKERS}\n    min_polling_interval: 0.01\n"
    )
    url = f"http://127.0.0.1:{port}/"
    server_log = root / "pulsar.log"
    with _process_group(
        [str(bin_dir / "pulsar-serve"), str(config / "server.ini")],
        server_log,
        cwd=config,
        env={**os.environ, "PULSAR_CONFIG_DIR": str(config)},
    ):
        _until(lambda: _answers_http(url), "pulsar-serve", server_log)
        yield url


def _answers_http(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(url, timeout=1, trust_env=False)
        return True
    return False


def peers(ctx: Context) -> SectionResult:
    sizes = ctx.sizes
    latency_jobs, throughput_jobs = sizes.latency_jobs, sizes.throughput_jobs
    poll_s, throughput_poll_s = sizes.latency_poll_s, sizes.throughput_poll_s
    expected = EXPECTED_OUTPUT.decode()
    result = SectionResult(
        "peers",
        "Peers: Celery + Redis and Galaxy Pulsar, same trivial job, same run",
        f"run.sh = `{SCRIPT.strip()}`; latency: {latency_jobs} jobs one at a time after "
        f"{WARMUP} warm-ups; throughput: {throughput_jobs} jobs as fast as possible, every "
        f"output read. Celery 5.7 + Redis (prefork worker, concurrency {WORKERS}): the script "
        "text in the message, output pushed back, NO files staged, NO archive. Pulsar 0.16 "
        f"(queued_python, {WORKERS} concurrent jobs, min_polling_interval 10 ms): run.sh "
        f"staged over HTTP, output.txt downloaded, no archive; the submitter polls every "
        f"{poll_s * 1000:g} ms (latency) / {throughput_poll_s * 1000:g} ms with {WORKERS * 4} "
        "threads (throughput). Ours: the latency and throughput cases of this run "
        "(multipart upload, HTTP dispatch, ZIP)",
    )
    python = _python()
    figures: dict[str, dict[str, float]] = {}
    log(f"peers: celery, {latency_jobs} jobs one at a time, then {throughput_jobs}")
    with _celery(python, ctx.workdir / "peers-celery") as env:
        common = [str(WARMUP), SCRIPT, expected]
        latencies = _drive(python, "celery_driver.py", ["latency", str(latency_jobs), *common], env)
        rate = _drive(
            python, "celery_driver.py", ["throughput", str(throughput_jobs), *common], env
        )
        figures["Celery + Redis"] = _summary(latencies, rate, throughput_jobs)
    log(f"peers: pulsar, {latency_jobs} jobs one at a time, then {throughput_jobs}")
    root = ctx.workdir / "peers-pulsar"
    with _pulsar(python, root) as url:
        work = root / "jobs"
        work.mkdir()

        def run(mode: str, jobs: int, poll: float) -> dict[str, Any]:
            arguments = [url, mode, str(jobs), str(WARMUP), str(poll), str(WORKERS * 4)]
            return _drive(
                python,
                "pulsar_driver.py",
                [*arguments, str(work), SCRIPT, expected],
                {**os.environ},
            )

        figures["Galaxy Pulsar"] = _summary(
            run("latency", latency_jobs, poll_s),
            run("throughput", throughput_jobs, throughput_poll_s),
            throughput_jobs,
        )
    _report(result, ctx, figures)
    return result


def _summary(latency: dict[str, Any], rate: dict[str, Any], jobs: int) -> dict[str, float]:
    latencies: list[float] = latency["latencies_s"]
    return {
        "p50": median(latencies),
        "p90": percentile(latencies, 90),
        "throughput": jobs / rate["elapsed_s"],
    }


def _report(result: SectionResult, ctx: Context, figures: dict[str, dict[str, float]]) -> None:
    ours = ctx.figures
    for name, figure in figures.items():
        result.add(f"{name}: latency p50", ms(figure["p50"]))
        result.add(f"{name}: latency p90", ms(figure["p90"]))
        if ctx.floor_p50_s:
            result.add(
                f"{name}: latency p50 / floor p50", f"{figure['p50'] / ctx.floor_p50_s:.1f}x"
            )
        result.add(f"{name}: throughput", f"{figure['throughput']:.1f} jobs/s")
    if not ours:
        result.notes.append("Our figures are missing: run the latency and throughput cases too.")
        return
    for label, key, better in (
        ("latency p50 (ours: polling every 2 ms)", "p50", min),
        ("latency p50 (ours: the wait API)", "wait_p50", min),
        ("throughput", "throughput", max),
    ):
        if key not in ours:
            continue
        peer_key = "p50" if key == "wait_p50" else key
        ratios = ", ".join(
            f"{ours[key] / figure[peer_key]:.2f}x {name}" for name, figure in figures.items()
        )
        values = {"ours": ours[key]} | {name: figure[peer_key] for name, figure in figures.items()}
        ahead = better(values, key=values.__getitem__)
        shown = f"{ours[key]:.1f} jobs/s" if key == "throughput" else ms(ours[key])
        result.add(f"ours / peer, {label}", f"ours {shown} = {ratios}; ahead: {ahead}")
