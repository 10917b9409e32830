"""The fleet as /metrics, /status, /services and the queue view read it: a frozen snapshot of
the node loop's last look (server/fleet_snapshot.py), which later checks leave unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from job_orchestrator.config import load_server_settings
from job_orchestrator.server.nodes import Fleet
from job_orchestrator.server.storage import MemoryStore
from tests.engine.fake_nodes import FakeNode, FakeNodes

pytestmark = pytest.mark.timeout(30)

CLIENTS = ("http://127.0.0.1:1", "http://127.0.0.1:2")


async def test_a_snapshot_keeps_the_moment_it_was_taken(tmp_path: Path) -> None:
    settings = load_server_settings(
        {
            "DB_PATH": str(tmp_path / "unused.db"),
            "DATA_PATH": str(tmp_path / "data"),
            "SERVICE_EXAMPLE_CLIENTS": ",".join(CLIENTS),
        }
    )
    first, second = (node.upload_url for node in settings.services["example"].nodes)
    nodes = FakeNodes(FakeNode(first), FakeNode(second))
    store = MemoryStore()
    fleet = Fleet(settings, store, nodes)
    try:
        await fleet.check_once()
        healthy = fleet.snapshot()
        nodes[first].down = True
        for _ in range(2):  # FAILURES_BEFORE_DOWN
            await fleet.check_once()
        later = fleet.snapshot()
    finally:
        await store.close()

    assert healthy.services == {"example": (first, second)}
    assert [view.url for view in later.of_service("example")] == [first, second]
    assert healthy[first].condition == "up"
    assert not healthy.is_down(first)
    assert later[first].condition == "down"
    assert later.is_down(first)
    assert later[first].down_since is not None
    assert later[first].last_error
    assert later[second].condition == "up"
    assert not later.is_down("http://127.0.0.1:3/submit")  # not a client of this server
    with pytest.raises(dataclasses.FrozenInstanceError):
        later[first].healthy = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        later.nodes[first] = healthy[first]  # type: ignore[index]
