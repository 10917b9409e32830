"""Markers by tier, so `-m` can select what a machine can run (the markers are in pyproject).

Every test of `acceptance/`, `interop/` and `deploy/` starts real processes: `slow`. Every
test of `interop/` runs the original Rust binary beside ours: `needs_original`. Modules mark
what they need themselves (`needs_slurm`, `needs_docker`, `postgres`), and so do the unit and
integration tests that start processes (`slow`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).parent
SLOW_TIERS = frozenset({"acceptance", "interop", "deploy"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            tier = item.path.relative_to(TESTS).parts[0]
        except ValueError:  # a test outside tests/ (none today)
            continue
        if tier in SLOW_TIERS:
            item.add_marker(pytest.mark.slow)
        if tier == "interop":
            item.add_marker(pytest.mark.needs_original)
