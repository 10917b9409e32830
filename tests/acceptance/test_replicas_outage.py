"""Replicas through a PostgreSQL restart (issue 11): 503s while it is away, then recovery.

The database is a private PostgreSQL instance of this test (initdb + pg_ctl on a free port),
so stopping it disturbs nobody else's tests on the shared cluster.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from testkit.harness import Api, Cluster
from testkit.pg import PrivateInstance
from tests.acceptance.test_replicas import ledger_script, read_ledger, replica_env, wait_final

pytestmark = pytest.mark.postgres


@pytest.mark.timeout(600)
def test_replicas_ride_out_a_postgres_restart(tmp_path: Path) -> None:
    database = PrivateInstance()
    ledger = tmp_path / "ledger"
    ledger.touch()
    running = Cluster(tmp_path)
    try:
        database.init()
        database.start()
        url = database.create_database("orchestrator")
        running.add_client()
        a, b = (running.add_server(replica_env(url)) for _ in range(2))
        replicas = [a, b]
        jobs = {
            Api(replicas[token % 2].url).submit(
                ledger_script(ledger, token, token % 5 + 1, sleep_s=1.0), user_id=token % 5 + 1
            ): token
            for token in range(20)
        }
        first = next(iter(jobs))
        Api(b.url).wait_for(first, "Running", "Completed")

        database.stop()
        for server in replicas:
            response = httpx.get(f"{server.url}/download/{first}", timeout=30)
            assert response.status_code == 503, response.text
            body = response.json()
            assert body["status"] == "Unknown"
            assert "database is unavailable" in body["message"]
            assert response.headers["retry-after"]
            upload = Api(server.url).upload({"run.sh": "true\n"})
            assert upload.status_code == 503, upload.text
            assert upload.json()["id"] == 0
            assert httpx.get(f"{server.url}/health", timeout=30).status_code == 503
            killed = httpx.post(f"{server.url}/terminate/{first}", timeout=30)
            assert killed.status_code == 503, killed.text
            assert killed.json()["status"] == "Unknown"
            assert httpx.get(f"{server.url}/", timeout=30).status_code == 200
        time.sleep(4)  # longer than LEASE_S: each replica finds its lease lapsed
        database.start()

        for job_id, token in jobs.items():
            result = wait_final(Api(replicas[(token + 1) % 2].url), job_id, timeout_s=180)
            assert result["status"] == "Completed", (job_id, result)
            archive = Api(replicas[token % 2].url).download_zip(job_id)
            assert archive.read("output.txt").decode().strip() == str(token)
        entries = read_ledger(ledger)
        starts = Counter(token for kind, token, _, _ in entries if kind == "start")
        assert starts == Counter(range(20))  # each ran once
        # Both replicas serve again, and dispatch works without anyone restarting them.
        for server in replicas:
            again = Api(server.url).submit(ledger_script(ledger, 99, 1, sleep_s=0))
            assert wait_final(Api(server.url), again)["status"] == "Completed"
    finally:
        leftover = running.shutdown()
        database.remove()
    assert leftover == []
