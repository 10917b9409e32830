"""Container health check: exit 0 when `GET /health` of this container's process answers 200.

The image runs either mode, and the server (5000) and the client (9000) default to different
ports, so with `PORT` unset both defaults are tried. Standard library only: the image has
no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORTS = ("5000", "9000")


def healthy(port: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout_s) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main() -> int:
    configured = os.environ.get("PORT")
    ports = (configured,) if configured else DEFAULT_PORTS
    return 0 if any(healthy(port) for port in ports) else 1


if __name__ == "__main__":
    sys.exit(main())
