"""What one user can make the server keep (issue 21, item 6: findings 6 and 8).

Real server and client processes: the server's copy of a job's log is bounded by
LOG_KEEP_MAX_MB, and one user's queued jobs by QUEUE_MAX_PER_USER.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.harness import cluster

MIB = 2**20
NOTE = b"\n[job-orchestrator: log cut at 1 MB (LOG_KEEP_MAX_MB); the rest was not kept]\n"


def test_the_servers_copy_of_a_log_is_cut_at_log_keep_max_mb(tmp_path: Path) -> None:
    """Finding 6: with the client's RESULT_MAX_MB=1, the server kept a 400 MB log copy."""
    with cluster(
        tmp_path,
        server_env={"LOG_KEEP_MAX_MB": "1"},
        client_env={"RESULT_MAX_MB": "1"},
    ) as running:
        job_id = running.api.submit("head -c 3145728 /dev/zero | tr '\\0' x\n")
        assert running.api.wait_for(job_id, "Completed", "Failed")["status"] == "Completed"
        deadline = time.monotonic() + 60
        while not (kept := list((tmp_path / "server-data").glob("*/output.log"))):
            assert time.monotonic() < deadline, "the server never kept the log"
            time.sleep(0.1)
        copy = kept[0].read_bytes()
        assert len(copy) == MIB + len(NOTE)
        assert copy == b"x" * MIB + NOTE
        served = httpx.get(f"{running.api.base_url}/jobs/{job_id}/logs", timeout=60)
        assert served.content == copy
