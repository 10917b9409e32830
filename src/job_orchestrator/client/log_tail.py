"""The last line of a failed run.sh's output, for the payload's message (settling.py)."""

from __future__ import annotations

import io
from pathlib import Path

from job_orchestrator.client.sandbox import WRAPPER_NAME

#: How much of the end of the log a failure's message is taken from.
TAIL_BYTES = 500
_WRAPPER_REPORT = f"{WRAPPER_NAME}:"


def last_output_line(log: Path) -> str:
    """The last non-empty line in the end of the log, printable, or '' (never raises).

    The wrapper's own report of a signal (`job-orchestrator-wrapper: line 1: 42 Killed ...`)
    is skipped: the status already names the signal.
    """
    try:
        with log.open("rb") as source:
            size = source.seek(0, io.SEEK_END)
            source.seek(max(0, size - TAIL_BYTES))
            tail = source.read(TAIL_BYTES)
    except OSError:
        return ""
    for line in reversed(tail.decode("utf-8", errors="replace").splitlines()):
        printable = "".join(char if char.isprintable() else " " for char in line).strip()
        if printable and not printable.startswith(_WRAPPER_REPORT):
            return printable
    return ""


def with_last_line(message: str, log: Path) -> str:
    """`run.sh exited with status 2: grep: input.pdb: No such file or directory`."""
    line = last_output_line(log)
    return f"{message}: {line}" if line else message
