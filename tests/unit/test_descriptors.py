"""Pure parts of the descriptor caps: HeldRequests' counting, and telling EMFILE apart."""

from __future__ import annotations

import errno

import aiohttp
import pytest

from job_orchestrator._descriptors import is_exhaustion
from job_orchestrator.server.waiting import HeldRequests, Hold, Refused


def _held(per_user: int, total: int) -> HeldRequests:
    return HeldRequests("log follows", per_user, total, ("PER_USER", "TOTAL"))


def test_a_user_beyond_the_per_user_cap_is_refused_and_others_are_not() -> None:
    held = _held(per_user=2, total=10)
    holds = [held.take(1), held.take(1)]
    assert all(isinstance(hold, Hold) for hold in holds)
    refused = held.take(1)
    assert isinstance(refused, Refused)
    assert "user 1" in refused.message
    assert "PER_USER" in refused.message
    assert isinstance(held.take(2), Hold)


def test_the_total_cap_refuses_everyone_and_a_release_frees_one_place() -> None:
    held = _held(per_user=0, total=2)
    first, second = held.take(1), held.take(2)
    assert isinstance(first, Hold)
    assert isinstance(second, Hold)
    refused = held.take(3)
    assert isinstance(refused, Refused)
    assert "TOTAL" in refused.message
    first.release()
    first.release()  # idempotent: a second release frees nothing more
    assert held.total == 1
    assert isinstance(held.take(3), Hold)
    assert isinstance(held.take(4), Refused)


def test_a_hold_is_released_by_its_context_however_it_ends() -> None:
    held = _held(per_user=1, total=0)
    hold = held.take(7)
    assert isinstance(hold, Hold)
    with pytest.raises(RuntimeError), hold:
        raise RuntimeError("the request failed")
    assert held.held_by(7) == 0
    assert held.total == 0


def test_exhaustion_is_recognised_through_wrappers() -> None:
    emfile = OSError(errno.EMFILE, "Too many open files")
    assert is_exhaustion(emfile)
    assert is_exhaustion(OSError(errno.ENFILE, "Too many open files in system"))
    assert not is_exhaustion(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_exhaustion(OSError(errno.ECONNREFUSED, "Connection refused"))
    # aiohttp keeps the socket's error as `os_error`.
    key = aiohttp.client_reqrep.ConnectionKey("127.0.0.1", 9000, False, True, None, None, None)
    assert is_exhaustion(aiohttp.ClientConnectorError(key, emfile))
    refused = OSError(errno.ECONNREFUSED, "Connection refused")
    assert not is_exhaustion(aiohttp.ClientConnectorError(key, refused))
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = emfile
    assert is_exhaustion(wrapped)
