"""Tests' way to put a job in a status: along the shortest path SERVER_MOVES allows.

The Store refuses a move the table lacks (Queued -> Completed, say), so a test that needs a
Completed job walks it there, one compare-and-set per move.
"""

from __future__ import annotations

from job_orchestrator.server.storage import NO_CHANGES, JobChanges, Store
from job_orchestrator.status import SERVER_INITIAL, SERVER_MOVES, Status

#: Neighbours in the order of a job's life, so a walk takes the usual way (not via Locked).
_ORDER = list(Status)


def path_to(status: Status, start: Status = SERVER_INITIAL) -> list[Status]:
    """The statuses after `start` on a shortest path to `status` (empty: already there)."""
    previous: dict[Status, Status] = {}
    todo = [start]
    while todo and status not in previous and status is not start:
        current = todo.pop(0)
        for new in sorted(SERVER_MOVES[current], key=_ORDER.index):
            if new not in previous and new is not start:
                previous[new] = current
                todo.append(new)
    if status is start:
        return []
    path = [status]
    while path[-1] in previous and previous[path[-1]] is not start:
        path.append(previous[path[-1]])
    assert path[-1] in previous, f"no path from {start} to {status}"
    return path[::-1]


async def move_to(
    store: Store,
    job_id: int,
    status: Status,
    changes: JobChanges = NO_CHANGES,
    start: Status = SERVER_INITIAL,
) -> bool:
    """Move the job from `start` to `status`; the last move also sets `changes`. True."""
    current = start
    path = path_to(status, start)
    for step, new in enumerate(path, start=1):
        last = step == len(path)
        moved = await store.transition(job_id, [current], new, changes if last else NO_CHANGES)
        assert moved, f"job {job_id} did not move from {current} to {new}"
        current = new
    return True
