"""The client's registry: cleaned payloads leave it, their ids are never handed out again."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from job_orchestrator.client.registry import Registry
from job_orchestrator.status import Status


def finished(registry: Registry, status: Status = Status.COMPLETED) -> int:
    payload = registry.add(registry.allocate(), dispatch_key=None)
    updated = registry.update(payload.id, status=status)
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
    assert int(restarted.allocate().root.name) == ids[-1] + 1
    lookup = restarted.lookup(ids[-1])
    assert lookup is not None
    assert lookup.status is Status.CLEANED


def test_retention_counts_from_collection_except_for_killed_payloads(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.rebuild()
    collected, uncollected = finished(registry), finished(registry)
    killed = registry.add(registry.allocate(), dispatch_key=None).id
    registry.update(killed, killed=True)
    registry.update(killed, status=Status.KILLED)
    running = registry.add(registry.allocate(), dispatch_key=None).id
    registry.update(running, status=Status.RUNNING)
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
