"""An upload the server acknowledged (201) survives `kill -9` of the server right after it.

The SQLite store commits units of work in groups (server/storage/backend.py): an upload's
answer must still wait for its own commit, so a crash never loses an acknowledged job, however
many uploads were in flight with it.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import httpx

from testkit.harness import cluster

UPLOADERS = 8
KILL_AFTER = 25  # acknowledged uploads


def test_acknowledged_uploads_survive_a_kill_right_after_the_answer(tmp_path: Path) -> None:
    # Jobs stay queued until the kill (no slot), so the store is busy with uploads alone.
    with cluster(tmp_path, server_env={"SERVICE_EXAMPLE_MAX_RUNS": "0"}) as running:
        server = running.server
        assert server is not None
        assert server.process is not None
        pid = server.process.pid
        acknowledged: list[int] = []
        lock = threading.Lock()
        killed = threading.Event()

        def upload() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                while not killed.is_set():
                    try:
                        response = http.post(
                            "/upload",
                            files=[("file", ("run.sh", b"echo ok > output.txt\n"))],
                            data={"service": "example", "user_id": "1"},
                        )
                    except httpx.HTTPError:
                        return  # in flight at the kill: it may or may not exist
                    if response.status_code != 201:
                        return
                    with lock:
                        acknowledged.append(int(response.json()["id"]))
                        if len(acknowledged) == KILL_AFTER and not killed.is_set():
                            os.kill(pid, signal.SIGKILL)  # right after this answer
                            killed.set()

        threads = [threading.Thread(target=upload) for _ in range(UPLOADERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert killed.is_set(), "the server was never killed"
        server.process.wait(30)
        assert len(acknowledged) >= KILL_AFTER

        server.env["SERVICE_EXAMPLE_MAX_RUNS"] = "4"
        server.start()
        for job_id in acknowledged:
            running.api.wait_for(job_id, "Completed")
            assert running.api.download_zip(job_id).read("output.txt") == b"ok\n"
