"""The suite relies on `--dist loadgroup` to keep some modules on one worker (Slurm's
controller is stopped by one of its tests; the sandbox tests share one job user's process
count). pytest 9.2 stopped honouring the node ids pytest-xdist 3.8 marks groups with, and the
groups were silently split: this canary fails when that happens again."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.xdist_group("groups-canary")


def test_loadgroup_keeps_marked_tests_on_one_worker(request: pytest.FixtureRequest) -> None:
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run by pytest-xdist with --dist loadgroup")
    assert request.node.nodeid.endswith("@groups-canary"), request.node.nodeid
