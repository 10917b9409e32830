"""Fixtures of the interop tier: the original Rust binary beside ours, real processes only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.original import Fleet, require_original


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    require_original()
    running = Fleet(tmp_path)
    try:
        yield running
    finally:
        running.shutdown()
