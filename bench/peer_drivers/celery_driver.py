"""Submits the bench's jobs to Celery and prints what it measured as one JSON object.

Usage (under the peers' venv): celery_driver.py latency|throughput JOBS WARMUP SCRIPT EXPECTED
latency: one job at a time (`delay()` then `AsyncResult.get()`, which waits on Redis);
throughput: all jobs submitted back to back, then every result read.
"""

import json
import sys
import time

from celery_app import run_job


def one_job(script: str, expected: str) -> float:
    started = time.perf_counter()
    result = run_job.delay(script).get(timeout=120)
    elapsed = time.perf_counter() - started
    if result["output"] != expected or result["returncode"] != 0:
        raise SystemExit(f"unexpected result {result!r}")
    return elapsed


def main() -> None:
    mode, jobs, warmup, script, expected = sys.argv[1:6]
    for _ in range(int(warmup)):
        one_job(script, expected)
    if mode == "latency":
        print(json.dumps({"latencies_s": [one_job(script, expected) for _ in range(int(jobs))]}))
        return
    started = time.perf_counter()
    pending = [run_job.delay(script) for _ in range(int(jobs))]
    submitted = time.perf_counter() - started
    for handle in pending:
        result = handle.get(timeout=600)
        if result["output"] != expected:
            raise SystemExit(f"unexpected result {result!r}")
    print(json.dumps({"elapsed_s": time.perf_counter() - started, "submitted_s": submitted}))


if __name__ == "__main__":
    main()
