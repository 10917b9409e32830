"""The original server's quotas and round-robin with our client; a mixed fleet behind ours.

The original decides dispatch in 500 ms ticks with no memory between ticks (UPSTREAM §6.1),
so the scenarios are set up to be decided in one tick: the jobs are queued while the service
has MAX_RUNS=0 (the original accepts them and keeps them Queued), then the server restarts
with the real limits over the same database.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from testkit import eventually
from testkit.harness import Api
from testkit.original import SERVICE, TRAP, Fleet, get

#: Sender ticks (500 ms each) watched for a job that must not start.
QUIET_S = 3.0


def _gated(marks: Path, label: str) -> str:
    return (
        f"{TRAP}echo {label} > {marks / label}\n"
        f"while [ ! -e {marks / label}.go ]; do sleep 0.1; done\n"
        f"echo {label} > output.txt\n"
    )


def _started(marks: Path) -> set[str]:
    return {path.name for path in marks.iterdir() if not path.name.endswith(".go")}


def _queue_while_closed(fleet: Fleet, marks: Path, jobs: list[tuple[int, str]]) -> dict[str, int]:
    """Upload the jobs while the original server may start none, then stop it."""
    key = f"SERVICE_{SERVICE.upper()}"
    fleet.original_server({f"{key}_MAX_RUNS": "0"})
    ids = {label: fleet.api.submit(_gated(marks, label), user_id=user) for user, label in jobs}
    for job_id in ids.values():
        assert fleet.api.status(job_id)["status"] == "Queued"
    assert fleet.server is not None
    fleet.server.stop()
    return ids


def _restart_server(fleet: Fleet, max_runs: int, runs_per_user: int) -> None:
    key = f"SERVICE_{SERVICE.upper()}"
    assert fleet.server is not None
    fleet.server.env.update(
        {f"{key}_MAX_RUNS": str(max_runs), f"{key}_RUNS_PER_USER": str(runs_per_user)}
    )
    fleet.server.start()


def _clients_up(api: Api, urls: tuple[str, ...]) -> bool:
    """Whether the server's last health check found each of these clients up (/metrics)."""
    lines = get(f"{api.base_url}/metrics").text.splitlines()
    up = [line for line in lines if line.startswith("job_orchestrator_client_up{")]
    return all(any(url in line and line.endswith(" 1.0") for line in up) for url in urls)


def _settled(marks: Path, count: int) -> set[str]:
    eventually(lambda: len(_started(marks)) >= count, what=f"{count} jobs to start")
    time.sleep(QUIET_S)  # room for a job that must not start to show up
    return _started(marks)


def test_original_server_applies_runs_per_user_with_our_client(
    fleet: Fleet, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    fleet.our_client()
    jobs = [(1, "u1-a"), (1, "u1-b"), (1, "u1-c"), (2, "u2-a"), (2, "u2-b")]
    ids = _queue_while_closed(fleet, marks, jobs)
    _restart_server(fleet, max_runs=10, runs_per_user=1)
    assert _settled(marks, 2) == {"u1-a", "u2-a"}  # one per user, each user's oldest
    (marks / "u1-a.go").touch()
    fleet.api.wait_for(ids["u1-a"], "Completed")
    assert _settled(marks, 3) == {"u1-a", "u2-a", "u1-b"}
    for label in ("u1-b", "u1-c", "u2-a", "u2-b"):
        (marks / f"{label}.go").touch()
    for label, job_id in ids.items():
        assert fleet.api.wait_for(job_id, "Completed")["status"] == "Completed"
        assert fleet.api.download_zip(job_id).read("output.txt") == f"{label}\n".encode()


def test_original_server_round_robins_users_with_our_client(fleet: Fleet, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    fleet.our_client()
    jobs = [(1, "u1-a"), (1, "u1-b"), (1, "u1-c"), (2, "u2-a"), (2, "u2-b"), (2, "u2-c")]
    ids = _queue_while_closed(fleet, marks, jobs)
    _restart_server(fleet, max_runs=3, runs_per_user=5)
    started = _settled(marks, 3)
    # One round gives each user one job before anyone gets a second; which user leads is
    # the original's HashMap order, so either split is right, each user's oldest first.
    assert started in ({"u1-a", "u1-b", "u2-a"}, {"u1-a", "u2-a", "u2-b"})
    for label in ids:
        (marks / f"{label}.go").touch()
    for job_id in ids.values():
        assert fleet.api.wait_for(job_id, "Completed")["status"] == "Completed"


def test_mixed_fleet_our_server_with_an_original_and_our_client(
    fleet: Fleet, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    original = fleet.original_client()
    ours = fleet.our_client()
    fleet.our_server()  # SERVICE_EXAMPLE_CLIENTS lists both
    api: Api = fleet.api
    # Until its first health check answers, a client is not chosen: under load one of the two
    # could still be unchecked when the jobs arrive, and both would go to the other.
    eventually(
        lambda: _clients_up(api, (original.url, ours.url)), what="the server to see both clients"
    )
    ids = {label: api.submit(_gated(marks, label)) for label in ("first", "second")}
    eventually(lambda: len(_started(marks)) == 2, what="both jobs to start")
    # The server prefers the client with fewer active jobs: one job on each.
    for node in (original, ours):
        payload = get(f"{node.url}/retrieve/1")
        assert payload.status_code == 200, f"{node.url}: {payload.text}"
        assert payload.json()["status"] == "Running"
    assert get(f"{original.url}/retrieve/2").status_code == 404
    for label in ids:
        (marks / f"{label}.go").touch()
    for label, job_id in ids.items():
        assert api.wait_for(job_id, "Completed")["status"] == "Completed"
        assert api.download_zip(job_id).read("output.txt") == f"{label}\n".encode()
    response = httpx.get(f"{original.url}/retrieve/1", timeout=30)
    assert response.headers["content-type"] == "application/zip"
