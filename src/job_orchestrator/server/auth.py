"""Optional user authentication: bearer tokens mapped to user ids by API_TOKENS_FILE.

The file holds one `token user_id` pair per line (blank lines and `#` comments allowed).
It is re-read when its modification time changes, so tokens can be added or revoked without
a restart. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

from job_orchestrator.config import parse_tokens
from job_orchestrator.errors import ConfigError

logger = logging.getLogger(__name__)


class UserTokens:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime_ns = -1
        self._tokens: dict[str, int] = {}
        self._reload()

    def _reload(self) -> None:
        stat = self.path.stat()
        if stat.st_mtime_ns == self._mtime_ns:
            return
        self._tokens = parse_tokens(self.path.read_text())
        self._mtime_ns = stat.st_mtime_ns
        logger.info("loaded %d user tokens from %s", len(self._tokens), self.path)

    def user_for(self, authorization: str | None) -> int | None:
        """The user id of a valid `Bearer <token>` header, else None."""
        try:
            self._reload()
        except (OSError, ConfigError):
            logger.exception("could not re-read %s; keeping the tokens loaded before", self.path)
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        supplied = token.encode()
        found = None
        # Compare against every token, so timing reveals nothing about which prefix matched.
        for token, user_id in self._tokens.items():
            if hmac.compare_digest(supplied, token.encode()):
                found = user_id
        return found
