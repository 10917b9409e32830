"""The transition tables (status.py): a walk of SERVER_MOVES and CLIENT_MOVES.

That the code makes no move outside them is checked where the moves are declared: the
server's verbs (server/lifecycle.py, test_lifecycle.py) and the client's registry verbs.
"""

from __future__ import annotations

from collections.abc import Set

import pytest

from job_orchestrator.errors import IllegalMoveError
from job_orchestrator.status import (
    CLIENT_INITIAL,
    CLIENT_MOVES,
    OUTCOMES,
    SERVER_INITIAL,
    SERVER_MOVES,
    TERMINAL,
    Moves,
    Status,
    check_move,
    may_move,
)

TABLES = {"server": (SERVER_MOVES, SERVER_INITIAL), "client": (CLIENT_MOVES, CLIENT_INITIAL)}


def reachable(moves: Moves, start: Status) -> set[Status]:
    seen, todo = {start}, [start]
    while todo:
        for new in moves[todo.pop()]:
            if new not in seen:
                seen.add(new)
                todo.append(new)
    return seen


@pytest.mark.parametrize("side", TABLES)
def test_every_status_of_the_table_is_reachable_from_the_initial_one(side: str) -> None:
    moves, initial = TABLES[side]
    assert reachable(moves, initial) == set(moves)


@pytest.mark.parametrize("side", TABLES)
def test_every_move_leads_to_a_status_of_the_table(side: str) -> None:
    moves, _ = TABLES[side]
    for new in moves.values():
        assert new <= set(moves)


@pytest.mark.parametrize("side", TABLES)
def test_a_final_status_is_left_only_for_cleaned_and_cleaned_never(side: str) -> None:
    moves, _ = TABLES[side]
    for final in OUTCOMES:
        assert moves[final] == {Status.CLEANED}
    assert moves[Status.CLEANED] == frozenset()


@pytest.mark.parametrize("side", TABLES)
def test_every_status_can_still_end_final(side: str) -> None:
    moves, _ = TABLES[side]
    for status in moves:
        assert reachable(moves, status) & TERMINAL, status


@pytest.mark.parametrize("side", TABLES)
def test_no_status_moves_to_itself_or_back_to_the_initial_one_when_final(side: str) -> None:
    moves, initial = TABLES[side]
    for old, new in moves.items():
        assert old not in new
        if old in TERMINAL:
            assert initial not in new


def test_the_server_table_has_every_status_it_writes() -> None:
    # Unknown is only ever read (an unrecognised stored status), never written.
    assert set(SERVER_MOVES) == set(Status) - {Status.UNKNOWN}


def test_the_client_table_has_only_the_statuses_of_a_payload() -> None:
    server_only: Set[Status] = {
        Status.QUEUED,
        Status.PROCESSING,
        Status.SUBMITTED,
        Status.LOCKED,
        Status.UNKNOWN,
    }
    assert set(CLIENT_MOVES) == set(Status) - server_only


def test_check_move_refuses_a_move_of_any_status_expected() -> None:
    check_move(SERVER_MOVES, [Status.PROCESSING], Status.SUBMITTED)
    with pytest.raises(IllegalMoveError, match="from Queued to Submitted"):
        check_move(SERVER_MOVES, [Status.PROCESSING, Status.QUEUED], Status.SUBMITTED)
    with pytest.raises(IllegalMoveError, match="from Completed to Failed"):
        check_move(SERVER_MOVES, [Status.COMPLETED], Status.FAILED)
    with pytest.raises(IllegalMoveError, match="from Unknown"):
        check_move(SERVER_MOVES, [Status.UNKNOWN], Status.LOCKED)


def test_staying_is_no_move() -> None:
    assert may_move(CLIENT_MOVES, Status.RUNNING, Status.RUNNING)
    assert not may_move(CLIENT_MOVES, Status.RUNNING, Status.PREPARED)
    assert not may_move(CLIENT_MOVES, Status.COMPLETED, Status.FAILED)
