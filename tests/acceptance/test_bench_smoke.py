"""`python -m bench --quick` runs every case against real processes; no timing is checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testkit import require

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = (
    "floor",
    "latency",
    "throughput",
    "scheduler",
    "store",
    "bigfile",
    "fairness",
    "soak",
    "logs",
    "replicas",
)


def run_module(module: str, *arguments: str, timeout_s: float) -> str:
    """`python -m <module> [arguments]` from the repository root, as a user runs it; stdout."""
    completed = subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def quick_bench(tmp_path: Path, *cases: str) -> str:
    """`python -m bench --quick [cases]`; the results file's text."""
    output = tmp_path / "results.md"
    run_module("bench", "--quick", *cases, "--output", str(output), timeout_s=850)
    return output.read_text()


@pytest.mark.timeout(900)
def test_quick_benchmark_writes_every_section(tmp_path: Path) -> None:
    text = quick_bench(tmp_path)
    for section in ("Machine", "Targets", *SECTIONS):
        assert f"## {section}\n" in text, f"section {section!r} missing from:\n{text}"
    assert "ERROR" not in text, text


@pytest.mark.timeout(900)
def test_quick_peers_bench_compares_celery_and_pulsar_with_ours(tmp_path: Path) -> None:
    require("redis-server", "apt-get install redis-server")
    text = quick_bench(tmp_path, "--only", "latency,throughput", "--peers")
    assert "## peers\n" in text, text
    for figure in ("Celery + Redis: latency p50", "Galaxy Pulsar: throughput"):
        assert f"| {figure} |" in text, text
    comparisons = [line for line in text.splitlines() if line.startswith("| ours / peer")]
    assert len(comparisons) == 3, text
    assert all("ahead: " in line for line in comparisons), comparisons


def test_gateway_calls_bench_runs(tmp_path: Path) -> None:
    """`python -m bench.gateway_calls` (outside `python -m bench`) at a tiny size."""
    stdout = run_module("bench.gateway_calls", "--calls", "40", "--held", "4", timeout_s=110)
    rounds = [line for line in stdout.splitlines() if line.startswith("round ")]
    assert len(rounds) == 3, stdout
    assert "left running" not in stdout, stdout


@pytest.mark.needs_docker
@pytest.mark.timeout(900)
def test_quick_containers_bench_runs_local_and_the_engines(tmp_path: Path) -> None:
    require("docker", "Debian package docker.io")
    text = quick_bench(tmp_path, "--only", "containers")
    assert "## containers\n" in text, text
    assert "ERROR" not in text, text
    for figure in ("latency p50 / p90 / max, local", "container overhead per job (p50 - local"):
        assert figure in text, text
