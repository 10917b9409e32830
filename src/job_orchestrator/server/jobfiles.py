"""Where a job's files live under DATA_PATH, shared by the routes and the engine.

Every replica of the server reads and writes the same directories (DATA_PATH on a shared
volume), so anything written while another process may write or read it goes to a name of its
own first and is renamed into place: a reader sees the old file or the whole new one.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

RESULT_NAME = "output.zip"
PARTIAL_NAME = "partial.zip"
INPUT_DIR = "input"
#: The server's copy of a finished job's log (server/log_keeper.py).
LOG_NAME = "output.log"


def input_dir(loc: str) -> Path:
    """Where a job's uploaded files are; jobs from an upstream database keep them in loc."""
    nested = Path(loc) / INPUT_DIR
    return nested if nested.is_dir() else Path(loc)


def result_path(loc: str) -> Path:
    return Path(loc) / RESULT_NAME


def partial_path(loc: str) -> Path:
    return Path(loc) / PARTIAL_NAME


def log_path(loc: str) -> Path:
    return Path(loc) / LOG_NAME


def temporary_name(destination: Path) -> Path:
    """A name next to destination that no other writer (here or in another replica) uses."""
    return destination.with_name(f".{destination.name}.{os.getpid()}-{uuid.uuid4().hex}.part")
