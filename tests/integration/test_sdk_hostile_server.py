"""The SDK against a broken or hostile server (tests/hostile_server.py, a real HTTP server):
answers are bounded, waits keep their timeout, listings stop (issue 21, finding 11)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from job_orchestrator.sdk import AsyncClient, Client, ServerError, WaitTimeout
from job_orchestrator.sdk._protocol import MAX_ANSWER_BYTES
from tests.hostile_server import HUGE_ANSWER_BYTES, Hostility, hostile_server


@pytest.fixture
def hostile() -> Iterator[Hostility]:
    with hostile_server() as started:
        yield started


@pytest.mark.parametrize("job_id", [7, 8], ids=["declared-length", "chunked"])
def test_an_answer_far_too_large_is_refused_not_read(hostile: Hostility, job_id: int) -> None:
    with Client(hostile.url) as client, pytest.raises(ServerError, match="larger than"):
        client.status(job_id)
    # Read up to the bound (plus what the sockets buffered), never the whole answer.
    assert hostile.huge_bytes_sent < MAX_ANSWER_BYTES + 64 * 1024 * 1024 < HUGE_ANSWER_BYTES


async def test_the_async_client_refuses_it_too(hostile: Hostility) -> None:
    async with AsyncClient(hostile.url) as client:
        with pytest.raises(ServerError, match="larger than"):
            await client.status(8)
    assert hostile.huge_bytes_sent < HUGE_ANSWER_BYTES


def test_a_wait_ends_with_wait_timeout_when_the_server_holds_the_answer(
    hostile: Hostility,
) -> None:
    with Client(hostile.url) as client, pytest.raises(WaitTimeout):
        client.wait(1, timeout=0.5)


async def test_an_async_wait_ends_with_wait_timeout_too(hostile: Hostility) -> None:
    async with AsyncClient(hostile.url) as client:
        with pytest.raises(WaitTimeout):
            await client.wait(1, timeout=0.5)


def test_a_listing_stops_on_a_repeated_cursor(hostile: Hostility) -> None:
    with Client(hostile.url) as client, pytest.raises(ServerError, match="cursor again"):
        list(client.jobs())
    assert hostile.pages_served == 2


async def test_an_async_listing_stops_too(hostile: Hostility) -> None:
    async with AsyncClient(hostile.url) as client:
        with pytest.raises(ServerError, match="cursor again"):
            [job async for job in client.jobs()]
    assert hostile.pages_served == 2
