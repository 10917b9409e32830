"""The server's verbs (server/lifecycle.py) against the transition table (status.py).

Each verb's move is checked against SERVER_MOVES when it is declared (at import), so the
engine makes no move the table lacks; here, the other way round: the table has no move that
no verb makes, so it says exactly what the code does.
"""

from __future__ import annotations

import pytest

from job_orchestrator.errors import IllegalMoveError
from job_orchestrator.server import lifecycle
from job_orchestrator.status import SERVER_MOVES, Status


def test_every_move_of_the_table_is_made_by_a_verb() -> None:
    made = {
        (old, new)
        for move in lifecycle.MOVES.values()
        for old in move.leaves
        for new in move.reaches
        if old is not new  # staying is no move (a report of the status it already has)
    }
    table = {(old, new) for old, targets in SERVER_MOVES.items() for new in targets}
    assert table - made == set()
    assert made <= table


def test_a_move_the_table_lacks_cannot_be_declared() -> None:
    with pytest.raises(IllegalMoveError, match="from Running to Submitted"):
        lifecycle.Move("backwards", frozenset({Status.RUNNING}), frozenset({Status.SUBMITTED}))


def test_a_verb_moves_only_from_and_to_what_it_declares() -> None:
    assert lifecycle.SETTLE.expected(Status.KILLED, None) == [
        Status.PREPARED,
        Status.RUNNING,
        Status.SUBMITTED,
    ]
    assert lifecycle.LOCK.expected(Status.LOCKED, [Status.RUNNING]) == [Status.RUNNING]
    with pytest.raises(IllegalMoveError, match="settle does not move a job to Queued"):
        lifecycle.SETTLE.expected(Status.QUEUED, None)
    with pytest.raises(IllegalMoveError, match="lock_for_kill does not move a job from"):
        lifecycle.LOCK.expected(Status.LOCKED, [Status.QUEUED])
    with pytest.raises(IllegalMoveError, match="unpin does not move a job to Failed"):
        lifecycle.UNPIN.expected(Status.FAILED, None)
    with pytest.raises(IllegalMoveError, match="clean does not move a job to None"):
        lifecycle.CLEAN.expected(None, None)


def test_only_the_statuses_a_kill_can_lock_may_be_locked() -> None:
    lockable = {status for status in Status if lifecycle.may_lock(status)}
    assert lockable == {Status.PROCESSING, Status.SUBMITTED, Status.PREPARED, Status.RUNNING}
