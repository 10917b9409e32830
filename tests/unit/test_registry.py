"""The client's registry: cleaned payloads leave it, their ids are never handed out again."""

from __future__ import annotations

import shutil
import time
from dataclasses import fields
from pathlib import Path

import pytest

from job_orchestrator.client.payload import TERMINATED, Ending, PayloadChanges
from job_orchestrator.client.registry import ID_BLOCK, NEXT_ID_FILE, Registry
from job_orchestrator.client.state_file import IN_PLACE_MAX_BYTES
from job_orchestrator.errors import IllegalMoveError
from job_orchestrator.status import Status


def finished(registry: Registry, status: Status = Status.COMPLETED) -> int:
    payload = registry.add(registry.allocate(), dispatch_key=None)
    updated = registry.end(payload.id, Ending(status, ""))
    assert updated is not None
    assert updated.finished_at is not None
    return payload.id


def clean(registry: Registry, payload_id: int) -> None:
    """What the client's cleaner does to a payload whose retention ran out."""
    payload = registry.get(payload_id)
    assert payload is not None
    shutil.rmtree(payload.paths.root)
    registry.remove(payload_id)


def test_a_cleaned_payload_leaves_the_registry_and_answers_as_cleaned(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.rebuild()
    kept, cleaned = finished(registry), finished(registry)
    clean(registry, cleaned)
    assert registry.count() == 1
    assert registry.get(cleaned) is None
    stand_in = registry.lookup(cleaned)
    assert stand_in is not None
    assert stand_in.wire()["status"] == "Cleaned"
    assert stand_in.wire()["id"] == cleaned
    assert registry.lookup(kept) == registry.get(kept)
    assert registry.lookup(cleaned + 1) is None  # never handed out: unknown
    assert registry.lookup(0) is None


def test_ids_of_cleaned_payloads_are_not_reused_after_a_restart(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.rebuild()
    ids = [finished(registry) for _ in range(3)]
    for payload_id in ids:
        clean(registry, payload_id)  # the highest id's directory is gone too
    restarted = Registry(tmp_path)
    assert restarted.rebuild() == []
    assert restarted.count() == 0
    assert int(restarted.allocate().root.name) > ids[-1]
    lookup = restarted.lookup(ids[-1])
    assert lookup is not None
    assert lookup.status is Status.CLEANED


def test_retention_counts_from_collection_except_for_killed_payloads(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.rebuild()
    collected, uncollected = finished(registry), finished(registry)
    killed = registry.add(registry.allocate(), dispatch_key=None).id
    registry.change(killed, PayloadChanges(killed=True))
    registry.end(killed, TERMINATED)
    running = registry.add(registry.allocate(), dispatch_key=None).id
    registry.start_running(running, time.time())
    registry.mark_collected(collected)
    registry.mark_collected(running)  # not final: nothing to collect yet
    later = time.time() + 1
    due = {payload.id for payload in registry.cleanable(later, uncollected_cutoff=0.0)}
    assert due == {collected, killed}
    # Once the grace for uncollected results ran out, they go too; a running one never.
    due = {payload.id for payload in registry.cleanable(later, uncollected_cutoff=later)}
    assert due == {collected, killed, uncollected}
    # Collection survives a restart (it is in the state file).
    restarted = Registry(tmp_path)
    restarted.rebuild()
    again = restarted.get(collected)
    assert again is not None
    assert again.collected_at is not None


def test_an_upload_being_received_is_held_until_it_is_added_or_abandoned(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.rebuild()
    receiving, abandoned = registry.allocate(), registry.allocate()
    # Not in the table yet, but the cleaner's orphan sweep must leave its directory alone.
    assert registry.holds(int(receiving.root.name))
    shutil.rmtree(abandoned.root)  # what /submit does when the upload fails
    registry.forget_abandoned()
    assert not registry.holds(int(abandoned.root.name))
    assert registry.holds(int(receiving.root.name))
    payload = registry.add(receiving, dispatch_key=None)
    assert registry.holds(payload.id)


def test_ids_handed_out_before_a_crash_are_never_reused(tmp_path: Path) -> None:
    """The high-water mark moves a block at a time; a crash anywhere in a block loses no id."""
    for handed_out in (1, ID_BLOCK - 1, ID_BLOCK, ID_BLOCK + 1):
        data = tmp_path / str(handed_out)
        registry = Registry(data)
        registry.rebuild()
        ids = [int(registry.allocate().root.name) for _ in range(handed_out)]
        for payload_id in ids:
            shutil.rmtree(data / str(payload_id))  # cleaned, or never written to disk at all
        # No orderly stop: a new registry on the same directory is what a crash leaves.
        restarted = Registry(data)
        assert restarted.rebuild() == []
        fresh = int(restarted.allocate().root.name)
        assert fresh > max(ids)
        for payload_id in [*ids, fresh - 1]:  # whatever may have been handed out is Cleaned
            lookup = restarted.lookup(payload_id)
            assert lookup is not None
            assert lookup.status is Status.CLEANED
        assert restarted.lookup(fresh + 1) is None


def test_the_high_water_mark_is_written_once_per_block(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.rebuild()
    marker = tmp_path / NEXT_ID_FILE
    registry.allocate()
    assert marker.read_text() == str(1 + ID_BLOCK)
    for _ in range(ID_BLOCK - 1):
        registry.allocate()
    assert marker.read_text() == str(1 + ID_BLOCK)  # the block's ids needed no write
    assert int(registry.allocate().root.name) == 1 + ID_BLOCK
    assert marker.read_text() == str(1 + 2 * ID_BLOCK)


def test_a_mark_written_per_id_by_an_older_client_is_honoured(tmp_path: Path) -> None:
    (tmp_path / NEXT_ID_FILE).write_text("42")
    registry = Registry(tmp_path)
    registry.rebuild()
    assert int(registry.allocate().root.name) == 42


def test_a_state_rewritten_shorter_or_longer_than_a_page_reads_back_whole(tmp_path: Path) -> None:
    """In place (padded) while it fits a page; beyond, a temporary file renamed over it."""
    registry = Registry(tmp_path)
    registry.rebuild()
    payload = registry.add(registry.allocate(), dispatch_key="k" * 200)
    reasons = ["x" * 300, "short", "y" * (IN_PLACE_MAX_BYTES + 10), "z" * 20, ""]
    for reason in reasons:
        updated = registry.change(payload.id, PayloadChanges(disk_stop=reason))
        assert updated is not None
        [reread] = Registry(tmp_path).rebuild()
        assert reread == updated
    # Rewritten shorter in place: padded to its old length, never left truncated.
    assert payload.paths.state.stat().st_size > len(payload.paths.state.read_text().rstrip())
    assert not list(payload.paths.root.glob("*.tmp"))


def test_queries_answer_the_payloads_as_last_updated(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.rebuild()
    first = registry.add(registry.allocate(), dispatch_key="a")
    second = registry.add(registry.allocate(), dispatch_key="b")
    running = registry.start_running(second.id, time.time(), handle="h")
    assert registry.with_status(Status.PREPARED) == [first]
    assert registry.with_status(Status.RUNNING) == [running]
    assert registry.by_dispatch_key("b") == running == registry.get(second.id)
    registry.end(first.id, TERMINATED)
    registry.remove(first.id)
    assert registry.by_dispatch_key("a") is None
    assert registry.with_status(Status.PREPARED, Status.RUNNING) == [running]


def test_a_state_file_left_empty_by_a_crash_counts_as_never_written(tmp_path: Path) -> None:
    """Killed between creating the state file and its first write: the id stays used."""
    registry = Registry(tmp_path)
    registry.rebuild()
    paths = registry.allocate()
    paths.state.touch()
    restarted = Registry(tmp_path)
    assert restarted.rebuild() == []
    lookup = restarted.lookup(int(paths.root.name))
    assert lookup is not None
    assert lookup.status is Status.CLEANED


def test_the_registry_moves_a_payload_only_as_client_moves_allows(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.rebuild()
    payload = registry.add(registry.allocate(), dispatch_key=None)
    # No status among the columns a change may set: it moves through the verbs only.
    assert "status" not in PayloadChanges().columns()
    assert "status" not in {field.name for field in fields(PayloadChanges)}
    with pytest.raises(IllegalMoveError, match="no move from Prepared to Cleaned"):
        registry.remove(payload.id)
    running = registry.start_running(payload.id, 1000.0, handle="h")
    assert running is not None
    assert (running.status, running.started_at, running.handle) == (Status.RUNNING, 1000.0, "h")
    assert registry.start_running(payload.id, 2000.0) is None  # not Prepared any more
    with pytest.raises(IllegalMoveError, match="no move from Running to Invalid"):
        registry.end(payload.id, Ending(Status.INVALID, "too late to validate"))
    failed = registry.end(payload.id, Ending(Status.FAILED, "exit 3", exit_code=3))
    assert failed is not None
    assert (failed.status, failed.message, failed.exit_code) == (Status.FAILED, "exit 3", 3)
    assert failed.finished_at is not None
    # A final status stands: a later ending (a kill that lost the race) changes nothing.
    assert registry.end(payload.id, TERMINATED) is None
    assert registry.get(payload.id) == failed
    registry.remove(payload.id)
    assert registry.get(payload.id) is None


def test_a_change_writes_the_fields_it_sets_and_keeps_the_others(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.rebuild()
    payload = registry.add(registry.allocate(), dispatch_key=None)
    with_uid = registry.change(payload.id, PayloadChanges(uid=1234), {Status.PREPARED})
    assert with_uid is not None
    assert with_uid.uid == 1234
    launched = registry.change(payload.id, PayloadChanges(handle="h"))
    assert launched is not None
    assert (launched.uid, launched.handle) == (1234, "h")  # KEEP: the uid stays
    given_back = registry.change(payload.id, PayloadChanges(uid=None))
    assert given_back is not None
    assert (given_back.uid, given_back.handle) == (None, "h")  # None is a value: written
    assert registry.change(payload.id, PayloadChanges()) == given_back
    assert registry.start_running(payload.id, 1000.0) is not None
    assert registry.change(payload.id, PayloadChanges(uid=5), {Status.PREPARED}) is None
    [reread] = Registry(tmp_path).rebuild()
    assert reread == registry.get(payload.id)
    assert reread.uid is None
