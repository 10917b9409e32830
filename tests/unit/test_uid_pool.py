"""The uid pool's allocation (client/uids.py `UidPool`): pure, no processes, no files."""

from __future__ import annotations

import asyncio

import pytest

from job_orchestrator.client.uids import UidLeases, UidPool


def test_every_payload_gets_a_uid_no_other_holds() -> None:
    pool = UidPool(1000, 1002)
    uids = [pool.acquire(payload_id) for payload_id in (1, 2, 3)]
    assert sorted(uid for uid in uids if uid is not None) == [1000, 1001, 1002]
    assert pool.acquire(4) is None
    assert pool.acquire(2) == uids[1]  # asking again: the one it holds


def test_a_released_uid_is_free_only_once_reclaimed() -> None:
    pool = UidPool(1000, 1000)
    assert pool.acquire(1) == 1000
    assert pool.release(1) == 1000
    assert pool.acquire(2) is None  # processes of it may still run
    pool.reclaimed(1000)
    assert pool.acquire(2) == 1000


def test_a_restarted_client_keeps_the_uids_of_readopted_payloads() -> None:
    pool = UidPool(1000, 1003)
    pool.hold(7, 1002)
    assert pool.held_by(7) == 1002
    assert pool.unheld() == [1000, 1001, 1003]
    assert {pool.acquire(payload_id) for payload_id in (1, 2, 3)} == {1000, 1001, 1003}
    assert pool.acquire(4) is None


def test_a_uid_is_never_held_twice_nor_outside_the_range() -> None:
    pool = UidPool(1000, 1001)
    pool.hold(1, 1000)
    with pytest.raises(ValueError, match="1000"):
        pool.hold(2, 1000)
    with pytest.raises(ValueError, match="999"):
        pool.hold(3, 999)


def test_a_withheld_uid_stays_out_until_reclaimed() -> None:
    pool = UidPool(1000, 1000)
    pool.withhold(1000)
    assert pool.acquire(1) is None
    pool.reclaimed(1000)
    assert pool.acquire(1) == 1000


def test_releasing_a_payload_without_a_uid_changes_nothing() -> None:
    pool = UidPool(1000, 1001)
    assert pool.release(5) is None
    assert pool.free_count == 2


def test_a_waiting_payload_gives_up_when_told() -> None:
    async def scenario() -> int | None:
        leases = UidLeases(1000, 1000)
        assert await leases.acquire(1, asyncio.Event()) == 1000
        gave_up = asyncio.Event()
        waiting = asyncio.create_task(leases.acquire(2, gave_up))
        await asyncio.sleep(0)
        assert not waiting.done()
        gave_up.set()
        return await waiting

    assert asyncio.run(scenario()) is None
