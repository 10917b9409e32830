"""logs: how soon a follower sees a line run.sh wrote, and how fast a finished log is read."""

from __future__ import annotations

import time

import httpx

from bench.common import (
    MB,
    Context,
    SectionResult,
    http_client,
    log,
    ms,
    percentile,
    running_cluster,
    upload_form,
)

INTERVAL_S = 0.1
LATENCY_TARGET_S = 0.5
BIG_LOG_BYTES = 20 * MB


def _submit(http: httpx.Client, script: str) -> int:
    response = http.post("/upload", files=[("file", ("run.sh", script))], data=upload_form(1))
    response.raise_for_status()
    job_id = response.json()["id"]
    assert isinstance(job_id, int)
    return job_id


def _follow_delays(http: httpx.Client, job_id: int) -> list[float]:
    """Seconds from each line's timestamp (written by the job) to its arrival here."""
    delays, pending = [], b""
    with http.stream("GET", f"/jobs/{job_id}/logs", params={"follow": "1"}) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            arrived = time.time()
            *lines, pending = (pending + chunk).split(b"\n")
            delays += [arrived - float(line) for line in lines if line]
    return delays


def _wait_final(http: httpx.Client, job_id: int) -> None:
    while True:
        response = http.get(f"/download/{job_id}", params={"wait": "30"})
        if response.headers.get("content-type") == "application/zip":
            return
        if response.json()["status"] in {"Failed", "Invalid", "Killed", "Cleaned"}:
            raise RuntimeError(f"job {job_id}: {response.json()}")


def logs(ctx: Context) -> SectionResult:
    lines = 20 if ctx.quick else 100
    big = BIG_LOG_BYTES // 10 if ctx.quick else BIG_LOG_BYTES
    result = SectionResult(
        "logs",
        "Live logs: a follower's delay, and reading a finished log",
        f"one job printing `date +%s.%N` every {INTERVAL_S:g} s ({lines} lines), followed "
        f"from its start with GET /jobs/{{id}}/logs?follow=1 (the client checks its log every "
        f"0.2 s); then a job printing {big / MB:.0f} MB, read whole once final (the server's "
        f"copy); one server, one client; MB = 10^6 bytes",
    )
    script = f"for i in $(seq 1 {lines}); do date +%s.%N; sleep {INTERVAL_S:g}; done\n"
    with (
        running_cluster(ctx.workdir / "logs") as running,
        http_client(running.api.base_url, 600) as http,
    ):
        log("logs: follow latency")
        delays = _follow_delays(http, _submit(http, script))
        if len(delays) != lines:
            raise RuntimeError(f"the follower got {len(delays)} of {lines} lines")
        # The follower connects right after the upload: the first line's delay also holds
        # the dispatch and the follower's noticing it (it re-reads a job not yet on a client).
        first, rest = delays[0], delays[1:]
        p90 = percentile(rest, 90)
        result.add("follow delay p50 (lines 2-)", ms(percentile(rest, 50)))
        result.add("follow delay p90 (lines 2-)", ms(p90))
        result.add("follow delay max (lines 2-)", ms(max(rest)))
        result.add("first line (includes the dispatch)", ms(first))
        result.target(
            f"a followed line arrives within {LATENCY_TARGET_S:g} s (p90)",
            ms(p90),
            p90 < LATENCY_TARGET_S,
        )
        log("logs: reading a finished log")
        job_id = _submit(http, f"head -c {big} /dev/zero | tr '\\0' x\n")
        _wait_final(http, job_id)
        time.sleep(1.0)  # the server's copy is made in the background after the end
        started = time.perf_counter()
        with http.stream("GET", f"/jobs/{job_id}/logs") as response:
            size = sum(len(chunk) for chunk in response.iter_bytes())
        elapsed = time.perf_counter() - started
        if size != big:
            raise RuntimeError(f"read {size} of {big} bytes")
        result.add("finished log read", f"{size / MB / elapsed:.0f} MB/s")
    return result
