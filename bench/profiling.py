"""Optional py-spy sampling of the server and client processes during a case (`--profile DIR`).

py-spy writes collapsed stacks (`--format raw`, one `frame;frame;... count` line per stack);
we turn them into the functions with the most samples, by self time and including callees.
Feed the raw files to any flamegraph tool for a picture.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import psutil

from bench.common import log

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy record on each given process for the duration of a `with` block (no-op if off)."""

    def __init__(
        self, out_dir: Path | None, label: str, procs: Mapping[str, psutil.Process]
    ) -> None:
        self._out_dir = out_dir
        self._label = label
        self._procs = procs
        self._running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self.summaries: dict[str, str] = {}

    def __enter__(self) -> Profiler:
        if self._out_dir is None:
            return self
        binary = py_spy()
        if binary is None:
            log("--profile: py-spy not found (pip install py-spy); not profiling")
            return self
        self._out_dir.mkdir(parents=True, exist_ok=True)
        for name, process in self._procs.items():
            raw = self._out_dir / f"{self._label}-{name}.txt"
            command = [binary, "record", "--pid", str(process.pid), "--rate", "200"]
            command += ["--format", "raw", "--output", str(raw), "--nonblocking"]
            self._running[name] = (
                subprocess.Popen(
                    command,
                    stdout=subprocess.DEVNULL,
                    stderr=(self._out_dir / f"{self._label}-{name}.log").open("wb"),
                ),
                raw,
            )
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        for name, (process, raw) in self._running.items():
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            with contextlib.suppress(OSError):
                summary = summarize(raw.read_text())
                self.summaries[name] = summary
                (raw.with_name(f"{raw.stem}-top.txt")).write_text(summary)
                log(f"profile {self._label}/{name}: {raw.with_name(f'{raw.stem}-top.txt')}")


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    file = match["file"]
    for marker in ("site-packages/", "lib/python3."):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{match['function']} ({file})"


def summarize(raw: str, top: int = 25) -> str:
    """Top functions of a py-spy raw profile, by self samples and by inclusive samples."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";")]
        # Root first; the last frame is where the sample landed.
        total += count
        self_counts[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if total == 0:
        return "no samples\n"
    lines = [f"{total} samples (busy threads only)", "", "self:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in self_counts.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"
