"""The client's change log (client/change_log.py): what a change feed reader is given."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from job_orchestrator.client.change_log import ChangeLog, Cursor


def test_each_payload_comes_once_in_the_order_of_its_latest_change() -> None:
    log = ChangeLog()
    start = log.cursor
    for payload_id in (1, 2, 3, 1):
        log.record(payload_id)
    page = log.after(start)
    assert page.ids == [2, 3, 1]
    assert not page.snapshot
    assert page.cursor == log.cursor
    assert log.after(page.cursor).ids == []


@given(st.lists(st.integers(min_value=1, max_value=8), max_size=40), st.data())
def test_a_reader_at_any_cursor_misses_no_payload(moves: list[int], data: st.DataObject) -> None:
    log = ChangeLog()
    cursors = [log.cursor]
    for payload_id in moves:
        log.record(payload_id)
        cursors.append(log.cursor)
    position = data.draw(st.integers(min_value=0, max_value=len(moves)))
    page = log.after(cursors[position])
    later = moves[position:]
    assert sorted(page.ids) == sorted(set(later))
    # Ordered by each payload's last move.
    assert page.ids == sorted(
        set(later), key=lambda i: max(k for k, m in enumerate(moves) if m == i)
    )


def test_a_cursor_of_another_run_or_unknown_is_not_known() -> None:
    log = ChangeLog()
    log.record(1)
    assert log.knows(log.cursor)
    assert not log.knows(None)
    assert not log.knows(Cursor("another-run", 1))
    assert not log.knows(Cursor(log.epoch, 2))  # not handed out yet


def test_a_reader_older_than_the_remembered_removals_is_not_known() -> None:
    log = ChangeLog(remembered_removals=2)
    old = log.cursor
    for payload_id in (1, 2, 3):
        log.record(payload_id, removed=True)
    # The removal of 1 is forgotten: a reader from before it would miss it.
    assert not log.knows(old)
    assert log.after(Cursor(log.epoch, 1)).ids == [2, 3]


def test_cursors_read_back_as_written() -> None:
    log = ChangeLog()
    log.record(5)
    assert Cursor.parse(str(log.cursor)) == log.cursor
    for raw in (None, "", "abc", "abc.", ".5", "abc.-1", "abc.1e3", "a." + "9" * 19):
        assert Cursor.parse(raw) is None


async def test_the_next_change_event_is_set_by_the_next_record() -> None:
    log = ChangeLog()
    changed = log.next_change()
    assert not changed.is_set()
    log.record(1)
    await asyncio.wait_for(changed.wait(), timeout=5)
    assert not log.next_change().is_set()
