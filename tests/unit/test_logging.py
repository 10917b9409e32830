"""LOG_FORMAT=json: the formatter writes one parseable object per record."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from job_orchestrator._logging import JsonFormatter


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.getLogger("job_orchestrator.test").makeRecord(
        "job_orchestrator.test", logging.WARNING, "x.py", 1, message, args, None, extra=extra
    )
    return made


def test_standard_fields_and_extra() -> None:
    line = JsonFormatter().format(record("job %d failed", 7, job_id=7, service="svc", client=None))
    entry = json.loads(line)
    assert entry.pop("time").endswith("+00:00")
    assert entry == {
        "level": "WARNING",
        "logger": "job_orchestrator.test",
        "message": "job 7 failed",
        "job_id": 7,
        "service": "svc",
        "client": None,
    }


def test_one_line_even_with_newlines_and_a_traceback() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        made = record("multi\nline")
        made.exc_info = sys.exc_info()
    line = JsonFormatter().format(made)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "multi\nline"
    assert "ValueError: bad" in entry["exception"]


def test_values_json_cannot_carry_are_strings() -> None:
    entry = json.loads(JsonFormatter().format(record("x", path=Path("/a"), ids={1})))
    assert entry["path"] == "/a"
    assert entry["ids"] == "{1}"
