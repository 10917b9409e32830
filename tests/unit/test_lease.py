"""The client's server lease (client/lease.py): fresh asks hold it, old requests do not."""

from __future__ import annotations

import asyncio
import time

import pytest

from job_orchestrator.client.lease import ServerLease
from job_orchestrator.config import load_client_settings, load_server_settings
from job_orchestrator.errors import ConfigError


def stamp(instance: str, age_s: float = 0.0) -> str:
    """A clock header as our server sends it, for a request sent age_s ago."""
    return f"{instance} {time.monotonic() - age_s:.6f}"


def test_nothing_is_held_before_the_server_asks() -> None:
    assert not ServerLease(5.0).held(1)


@pytest.mark.parametrize("header", [None, "", "garbage", "a nan", "a inf", " 12.5"])
def test_an_ask_without_a_usable_stamp_counts_on_arrival(header: str | None) -> None:
    lease = ServerLease(5.0)
    lease.asked(1, header)
    assert lease.held(1)
    assert not lease.held(2)


def test_a_request_that_waited_in_the_socket_does_not_renew_the_lease() -> None:
    lease = ServerLease(5.0)
    lease.asked(1, stamp("server-a"))  # a prompt request sets the reference
    lease.asked(2, stamp("server-a", age_s=30.0))  # sent 30 s ago, read only now
    assert lease.held(1)
    assert not lease.held(2)


def test_each_server_instance_has_its_own_reference() -> None:
    lease = ServerLease(5.0)
    lease.asked(1, stamp("server-a"))
    # Another server process: its clock is unrelated, its first request is the reference.
    lease.asked(2, f"server-b {time.monotonic() - 10_000:.6f}")
    assert lease.held(2)


def test_an_old_request_never_moves_the_lease_back() -> None:
    lease = ServerLease(5.0)
    lease.asked(1, stamp("server-a"))
    lease.asked(1, stamp("server-a", age_s=30.0))
    assert lease.held(1)


async def test_renewed_returns_on_an_ask_made_after_held_said_no() -> None:
    lease = ServerLease(5.0)
    assert not lease.held(1)
    lease.asked(1, None)  # arrives before the waiter starts waiting: not lost
    await asyncio.wait_for(lease.renewed(1), timeout=5)
    assert lease.held(1)


async def test_wake_ends_a_wait_without_granting_the_lease() -> None:
    lease = ServerLease(5.0)
    assert not lease.held(1)
    waiter = asyncio.ensure_future(lease.renewed(1))
    await asyncio.sleep(0)
    lease.wake(1)  # a kill
    await asyncio.wait_for(waiter, timeout=5)
    assert not lease.held(1)


@pytest.mark.parametrize("raw", ["0", "-1", "soon"])
def test_a_lease_that_could_never_be_held_is_refused_at_start(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_client_settings({"SERVER_LEASE": raw})
    assert caught.value.variable == "SERVER_LEASE"


def test_the_default_lease_is_below_the_default_failover_after() -> None:
    assert load_client_settings({}).server_lease_s < load_server_settings({}).failover_after_s


# ---- renewal through the change feed (client/changes.py) ---------------------------------------


def test_a_feed_request_renews_only_what_its_server_instance_holds() -> None:
    lease = ServerLease(5.0)
    assert lease.asked_by(stamp("server-a")) == "server-a"
    assert lease.held(1, holder="server-a")
    # Held by another replica: server-a's feed says nothing of what server-b still wants.
    assert not lease.held(2, holder="server-b")
    # Never asked for by id (a dispatch whose answer was lost): nobody holds it, never held.
    assert not lease.held(3, holder=None)


def test_a_feed_request_without_a_stamp_renews_nothing() -> None:
    lease = ServerLease(5.0)
    assert lease.asked_by(None) is None
    assert not lease.held(1, holder="server-a")


def test_a_feed_request_that_waited_in_the_socket_does_not_renew_the_lease() -> None:
    lease = ServerLease(5.0)
    lease.asked(1, stamp("server-a"))  # the reference of prompt delivery
    lease.asked_by(stamp("server-a", age_s=30.0))  # a /changes sent 30 s ago, read only now
    assert not lease.held(2, holder="server-a")


async def test_a_feed_request_wakes_a_payload_waiting_for_its_lease() -> None:
    lease = ServerLease(5.0)
    assert not lease.held(1, holder="server-a")
    waiter = asyncio.create_task(lease.renewed(1))
    await asyncio.sleep(0)
    lease.asked_by(stamp("server-a"))
    await asyncio.wait_for(waiter, timeout=5)
    assert lease.held(1, holder="server-a")
