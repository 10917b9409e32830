"""LOG_FORMAT=json: one JSON object per log line, for log collectors.

Each object has `time` (UTC, ISO 8601), `level`, `logger` and `message`, plus the fields a call
passed in `extra=` (`job_id`, `service`, `client`, `payload_id`, ...) and `exception` when one
is logged. Values JSON cannot carry are written as their `str()`.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

#: The attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)
