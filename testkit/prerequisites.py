"""What a test needs from the machine: a program, a service, root.

The rule, in one place: a missing prerequisite skips the test with the reason on a
developer's machine, and fails it when `CI=true`, where `.ci/run` installs everything (so a
skip there would hide a broken set-up).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip with `reason`, or fail with it when `CI=true`."""
    if in_ci():
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def require(tool: str, hint: str = "") -> str:
    """The path of the program `tool` (on PATH or beside this interpreter), else unavailable.

    `hint`: how to install it, shown in the reason (e.g. "Debian package bubblewrap").
    """
    found = shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent))
    if found is None:
        unavailable(f"{tool} is not installed" + (f" ({hint})" if hint else ""))
    return found
