"""`python -m bench --quick` runs every case against real processes; no timing is checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = (
    "floor",
    "latency",
    "throughput",
    "scheduler",
    "bigfile",
    "fairness",
    "soak",
    "replicas",
)


@pytest.mark.timeout(900)
def test_quick_benchmark_writes_every_section(tmp_path: Path) -> None:
    output = tmp_path / "results.md"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=850,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    text = output.read_text()
    for section in ("Machine", "Targets", *SECTIONS):
        assert f"## {section}\n" in text, f"section {section!r} missing from:\n{text}"
    assert "ERROR" not in text, text
