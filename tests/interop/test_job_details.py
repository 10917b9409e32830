"""GET /jobs/{id} on our server driving the original Rust client: the details it can know.

The original client sends no exit status (our X-Orchestrator-Exit-Code header), so
`exit_code` stays null, while the status, times and client are known as with ours.
"""

from __future__ import annotations

import httpx

from testkit.original import TRAP, Fleet

FINAL = ("Completed", "Failed", "Invalid", "Killed")


def test_details_of_jobs_run_by_the_original_client(fleet: Fleet) -> None:
    fleet.original_client()
    fleet.our_server()
    api = fleet.api
    done = api.submit(f"{TRAP}echo ok > output.txt\n")
    failed = api.submit(f"{TRAP}exit 3\n")
    for job_id, status in ((done, "Completed"), (failed, "Failed")):
        assert api.wait_for(job_id, *FINAL)["status"] == status
        response = httpx.get(f"{api.base_url}/jobs/{job_id}", timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == status
        assert body["exit_code"] is None
        assert body["client"] == fleet.clients[0].url
        assert body["created_at"] is not None
        assert body["finished_at"] is not None
        assert body["queue"] is None
