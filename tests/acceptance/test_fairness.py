"""Issue 14's flood, on real processes: one user's queue does not starve the next user."""

from __future__ import annotations

from pathlib import Path

from testkit.harness import cluster

FLOOD = 5


def script(user: int, ledger: Path, gate: Path) -> str:
    # The first job holds the only slot until every job is queued, so the order the server
    # chooses does not depend on how fast the uploads were.
    return (
        f'echo "{user}" >> {ledger}\n'
        f"for _ in $(seq 600); do [ -e {gate} ] && break; sleep 0.05; done\n"
        "sleep 0.3\n"
    )


def test_a_flood_by_one_user_does_not_starve_the_next(tmp_path: Path) -> None:
    ledger, gate = tmp_path / "starts.txt", tmp_path / "gate"
    env = {"SERVICE_EXAMPLE_MAX_RUNS": "1", "SERVICE_EXAMPLE_RUNS_PER_USER": str(FLOOD)}
    with cluster(tmp_path, server_env=env) as running:
        api = running.api
        jobs = [api.submit(script(1, ledger, gate), user_id=1) for _ in range(FLOOD)]
        jobs.append(api.submit(script(2, ledger, gate), user_id=2))
        gate.touch()
        for job_id in jobs:
            api.wait_for(job_id, "Completed", timeout_s=120)
    started_by = [int(line) for line in ledger.read_text().split()]
    # Today's rule gave 1 1 1 1 1 2: the oldest queued job first.
    assert started_by == [1, 2, 1, 1, 1, 1]


def test_the_rotation_survives_a_server_restart(tmp_path: Path) -> None:
    """The turns are stored: after a restart, user 1 (served before it) waits behind user 2
    (never served), although user 1's job is older."""
    ledger, gate = tmp_path / "starts.txt", tmp_path / "gate"
    env = {"SERVICE_EXAMPLE_MAX_RUNS": "1", "SERVICE_EXAMPLE_RUNS_PER_USER": str(FLOOD)}
    with cluster(tmp_path, server_env=env) as running:
        api = running.api
        gate.touch()
        api.wait_for(api.submit(script(1, ledger, gate), user_id=1), "Completed", timeout_s=120)
        gate.unlink()
        assert running.server is not None
        assert running.server.stop() == 0
        running.start_server(env)
        api = running.api
        # User 3 holds the only slot while the others queue, oldest first.
        blocker = api.submit(script(3, ledger, gate), user_id=3)
        api.wait_for(blocker, "Running", timeout_s=120)
        jobs = [blocker, api.submit(script(1, ledger, gate), user_id=1)]
        jobs.append(api.submit(script(2, ledger, gate), user_id=2))
        gate.touch()
        for job_id in jobs:
            api.wait_for(job_id, "Completed", timeout_s=120)
    assert [int(line) for line in ledger.read_text().split()] == [1, 3, 2, 1]
