"""no_client: what queued jobs cost the server while no client of their service answers.

Issue 21, finding 8: with a service's clients down, 4000 queued jobs kept the server at 83 %
of a core and logged 25,566 warnings in 83 s. This starts a server whose only client is a
closed port, queues JOBS jobs, and reports the server's CPU and its warning lines over a
fixed window. Figures only, no assertion: `python -m bench.no_client [JOBS] [WINDOW_S]`.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from testkit.harness import Cluster, free_port

SETTLE_S = 5.0


def measure(jobs: int, window_s: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as root:
        running = Cluster(Path(root))
        try:
            down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
            server = running.start_server(
                {"SERVICE_EXAMPLE_CLIENTS": down, "QUEUE_MAX_PER_USER": "0"}
            )
            with httpx.Client(timeout=60) as http:
                for index in range(jobs):
                    http.post(
                        f"{server.url}/upload",
                        files=[("file", ("run.sh", b"true\n"))],
                        data={"service": "example", "user_id": str(index % 50)},
                    ).raise_for_status()
            assert server.process is not None
            process = psutil.Process(server.process.pid)
            time.sleep(SETTLE_S)
            lines_before = len(server.log().splitlines())
            warnings_before = server.log().count(" WARNING ")
            cpu_before, wall_before = sum(process.cpu_times()[:2]), time.monotonic()
            time.sleep(window_s)
            cpu_after, wall_after = sum(process.cpu_times()[:2]), time.monotonic()
            log = server.log()
            return {
                "cpu_percent": 100 * (cpu_after - cpu_before) / (wall_after - wall_before),
                "warnings": log.count(" WARNING ") - warnings_before,
                "log_lines": len(log.splitlines()) - lines_before,
            }
        finally:
            running.shutdown()


def main(argv: list[str]) -> None:
    jobs = int(argv[0]) if argv else 2000
    window_s = float(argv[1]) if len(argv) > 1 else 30.0
    figures = measure(jobs, window_s)
    print(
        f"{jobs} queued jobs, no client answering, {window_s:g} s window "
        f"(after {SETTLE_S:g} s): server CPU {figures['cpu_percent']:.1f}% of one core, "
        f"{figures['warnings']:.0f} warnings, {figures['log_lines']:.0f} log lines"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
