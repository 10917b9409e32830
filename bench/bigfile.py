"""bigfile: one large incompressible upload, its dispatch and run, and its result download."""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

from bench.common import (
    MB,
    MIB,
    Context,
    RssSampler,
    SectionResult,
    check_status_body,
    http_client,
    is_zip,
    log,
    mb,
    processes,
    running_cluster,
    upload_form,
)
from bench.profiling import Profiler

SCRIPT = "wc -c big.bin > size.txt\n"
SPEED_TARGET = 200.0  # MB/s
RSS_TARGET = 64 * MB


def _generate(path: Path, size: int) -> None:
    """Random bytes: deflate cannot shrink them, so every stage moves the full size."""
    with path.open("wb") as sink:
        left = size
        while left > 0:
            chunk = os.urandom(min(left, 4 * MIB))
            sink.write(chunk)
            left -= len(chunk)


def _mtime(path: Path | None) -> float | None:
    try:
        return path.stat().st_mtime if path is not None else None
    except OSError:
        return None  # a stage whose file is gone is left out of the breakdown


def _only(pattern: str, root: Path) -> Path | None:
    found = sorted(root.glob(pattern))
    return found[0] if len(found) == 1 else None


def bigfile(ctx: Context) -> SectionResult:
    size = ctx.sizes.big_bytes
    poll_s = ctx.sizes.big_poll_s
    result = SectionResult(
        "bigfile",
        "Big files: upload, dispatch + run + zip, download; memory of both processes",
        f"one {size / MIB:.1f} MiB file of os.urandom bytes plus run.sh `{SCRIPT.strip()}`, "
        f"default server settings (UPLOAD_MAX_MB=400), one client; status polled every "
        f"{poll_s * 1000:g} ms with a streaming GET /download/{{id}} whose ZIP body is the "
        f"download; RSS of server and client sampled every 50 ms; MB = 10^6 bytes",
    )
    big = ctx.workdir / "big.bin"
    log(f"bigfile: generating {size / MIB:.1f} MiB")
    _generate(big, size)
    root = ctx.workdir / "bigfile"
    zip_path = ctx.workdir / "bigfile-result.zip"
    with running_cluster(root) as running, http_client(running.api.base_url, 600) as http:
        procs = processes(running)
        time.sleep(0.5)  # let both processes settle before the baseline sample
        with RssSampler(procs) as rss, Profiler(ctx.profile_dir, "bigfile", procs):
            log("bigfile: upload")
            rss.mark("upload")
            started = time.perf_counter()
            with big.open("rb") as source:
                response = http.post(
                    "/upload",
                    files=[("file", ("run.sh", SCRIPT)), ("file", ("big.bin", source))],
                    data=upload_form(1),
                )
            if response.status_code != 201:
                raise RuntimeError(f"upload answered {response.status_code}: {response.text}")
            job_id = int(response.json()["id"])
            uploaded = time.perf_counter()
            uploaded_wall = time.time()
            rss.mark("dispatch + run + zip")
            log("bigfile: waiting for Completed")
            polls = 0
            completed = downloaded = 0.0
            downloaded_bytes = 0
            while not downloaded:
                with http.stream("GET", f"/download/{job_id}") as answer:
                    polls += 1
                    if is_zip(answer):
                        completed = time.perf_counter()
                        rss.mark("download")
                        log("bigfile: download")
                        with zip_path.open("wb") as sink:
                            for chunk in answer.iter_bytes(MIB):
                                sink.write(chunk)
                                downloaded_bytes += len(chunk)
                        downloaded = time.perf_counter()
                        break
                    answer.read()
                    check_status_body(answer, job_id)
                time.sleep(poll_s)
            rss.mark("after")
        with zipfile.ZipFile(zip_path) as archive:
            counted = archive.read("size.txt").split()[0]
            stored = archive.getinfo("big.bin")
        if int(counted) != size:
            raise RuntimeError(f"run.sh counted {counted!r} bytes, expected {size}")
        # Where the dispatch phase went, from the files each stage leaves (wall clock).
        payload = _only("[0-9]*", root / "client0") or root / "client0" / "missing"
        stages = [
            ("server -> client transfer", _mtime(payload / "work" / "big.bin")),
            ("run.sh (wc -c)", _mtime(payload / "work" / "size.txt")),
            ("client zips the result", _mtime(payload / "result.zip")),
            (
                "client -> server result transfer",
                _mtime(_only("*/output.zip", root / "server-data")),
            ),
        ]
    up_s, dispatch_s, down_s = uploaded - started, completed - uploaded, downloaded - completed
    speeds = {
        "upload": size / up_s / MB,
        "dispatch + run + zip (until Completed)": size / dispatch_s / MB,
        "download": downloaded_bytes / down_s / MB,
    }
    result.add("upload", f"{speeds['upload']:.0f} MB/s ({up_s:.2f} s)")
    result.add(
        "dispatch + run + zip (until Completed)",
        f"{speeds['dispatch + run + zip (until Completed)']:.0f} MB/s ({dispatch_s:.2f} s, "
        f"{polls} polls)",
    )
    previous = uploaded_wall
    for label, stamp in stages:
        if stamp is not None:
            result.add(f"  of which {label}", f"~{max(0.0, stamp - previous):.2f} s")
            previous = stamp
    result.add(
        "download",
        f"{speeds['download']:.0f} MB/s ({down_s:.2f} s, ZIP of {mb(downloaded_bytes)}, "
        f"big.bin {'deflated' if stored.compress_type == zipfile.ZIP_DEFLATED else 'stored'})",
    )
    for name in procs:
        baseline = rss.baseline(name)
        growth = rss.peak(name) - baseline
        per_phase = ", ".join(
            f"{phase} +{mb(rss.peak(name, phase) - baseline)}"
            for phase in ("upload", "dispatch + run + zip", "download")
        )
        result.add(
            f"{name} RSS", f"baseline {mb(baseline)}, peak growth {mb(growth)} ({per_phase})"
        )
        result.target(
            f"{name} peak RSS growth < {RSS_TARGET // MB} MB", mb(growth), growth < RSS_TARGET
        )
    for phase, speed in speeds.items():
        result.target(
            f"big file {phase} >= {SPEED_TARGET:g} MB/s", f"{speed:.0f} MB/s", speed >= SPEED_TARGET
        )
    big.unlink(missing_ok=True)
    zip_path.unlink(missing_ok=True)
    return result
