"""A description of the machine a run happened on."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

import psutil

import job_orchestrator
from bench.common import load_average


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe() -> list[tuple[str, str]]:
    physical = psutil.cpu_count(logical=False)
    return [
        ("Date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("CPU", cpu_model()),
        ("Cores", f"{os.cpu_count()} logical" + (f", {physical} physical" if physical else "")),
        ("RAM", f"{psutil.virtual_memory().total / 2**30:.1f} GiB"),
        ("Kernel", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {sys.version.split()[0]}"),
        ("job-orchestrator", job_orchestrator.__version__),
        ("Load average (1/5/15 min) at start", load_average()),
    ]
