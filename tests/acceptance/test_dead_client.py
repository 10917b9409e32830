"""A dead client does not strand jobs while its sibling is idle (issue 14, item 1).

Real `server` and `client` processes on loopback ports (testkit/harness.py). The deadline is
only a safety net; nothing here asserts how fast something happened.
"""

from __future__ import annotations

import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from testkit.harness import Cluster

# The health loop must not notice the dead client before the uploads: the dispatch itself
# has to find it refusing connections (that is the path that stranded jobs).
ENV = {
    "SERVICE_EXAMPLE_RUNS_PER_USER": "20",
    "SERVICE_EXAMPLE_MAX_RUNS": "20",
    "NODE_CHECK_INTERVAL": "600",
}


def scripts_in(data_path: Path) -> str:
    return "\n".join(
        script.read_text() for script in data_path.glob("*/work/run.sh") if script.is_file()
    )


def test_jobs_for_a_killed_client_complete_on_its_sibling(tmp_path: Path) -> None:
    cl = Cluster(tmp_path)
    try:
        first = cl.add_client()
        cl.add_client()
        cl.start_server(ENV)
        with ThreadPoolExecutor(max_workers=4) as pool:
            warm = list(pool.map(lambda i: cl.api.submit(f"echo {i} > output.txt\n"), range(12)))
            for job_id in warm:
                cl.api.wait_for(job_id, "Completed", timeout_s=60)
            assert scripts_in(tmp_path / "client0"), "client0 got none of the first jobs"
            first.stop(signal.SIGKILL)
            tokens = [f"after-kill-{i}" for i in range(4)]
            jobs = list(pool.map(lambda t: cl.api.submit(f"echo {t} > output.txt\n"), tokens))
        deadline = time.monotonic() + 30
        for job_id, token in zip(jobs, tokens, strict=True):
            body = cl.api.wait_for(
                job_id, "Completed", timeout_s=max(1.0, deadline - time.monotonic())
            )
            assert body["status"] == "Completed", body
            assert cl.api.download_zip(job_id).read("output.txt") == f"{token}\n".encode()
        on_second = scripts_in(tmp_path / "client1")
        assert all(token in on_second for token in tokens)
        assert cl.server is not None
        log = cl.server.log()
        # The case under test happened: a dispatch found client0 refusing connections.
        assert re.search(r"dispatch of job \d+ failed .*retrying on another client now", log), log
    finally:
        cl.shutdown()
