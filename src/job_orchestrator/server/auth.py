"""Optional authentication: API_TOKENS_FILE (users' and portals' tokens) and portal-signed
JWTs verified with JWT_PUBLIC_KEYS. Either, both or neither may be set.

Both files are re-read when their modification time, size or inode changes, so tokens are
added or revoked and keys rotated without a restart; a file that cannot be read or parsed
then is logged and the last good content kept. What a credential stands for is decided by
the pure `principal.identify`. Tokens are never logged.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from job_orchestrator.config import ServerSettings
from job_orchestrator.credentials import (
    PublicKey,
    key_names,
    parse_api_tokens,
    parse_public_keys,
)
from job_orchestrator.errors import ConfigError
from job_orchestrator.server.principal import (
    JwtRules,
    Principal,
    TokenTable,
    credential_of,
    identify,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ReloadingFile(Generic[T]):
    """A file's parsed content, parsed again when the file changes."""

    def __init__(self, path: Path, parse: Callable[[str], T], describe: Callable[[T], str]):
        self.path = path
        self._parse = parse
        self._describe = describe
        self._seen: tuple[int, int, int] | None = None
        self._content = self._load(os.stat(path))  # a bad file at start stops the start

    def _load(self, stat: os.stat_result) -> T:
        content = self._parse(self.path.read_text())
        self._seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        logger.info("loaded %s from %s", self._describe(content), self.path)
        return content

    def current(self) -> T:
        try:
            stat = os.stat(self.path)
            if (stat.st_mtime_ns, stat.st_size, stat.st_ino) != self._seen:
                self._content = self._load(stat)
        except (OSError, UnicodeDecodeError, ConfigError) as error:
            logger.error(
                "could not re-read %s (%s); keeping what was loaded before", self.path, error
            )
        return self._content


class Authenticator:
    """The server's credential files and JWT rules; `principal` answers who is calling."""

    def __init__(self, settings: ServerSettings) -> None:
        self._admin_users = settings.admin_users
        self._tokens: ReloadingFile[TokenTable] | None = None
        self._keys: ReloadingFile[tuple[PublicKey, ...]] | None = None
        self._rules: JwtRules | None = None
        if settings.api_tokens_file is not None:
            self._tokens = ReloadingFile(
                settings.api_tokens_file,
                lambda text: TokenTable(parse_api_tokens(text)),
                lambda table: f"{len(table)} API tokens",
            )
        if settings.jwt_public_keys is not None:
            assert settings.jwt_audience is not None  # config requires it
            self._keys = ReloadingFile(
                settings.jwt_public_keys,
                parse_public_keys,
                lambda keys: f"JWT public keys {key_names(keys)}",
            )
            self._rules = JwtRules(
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                user_claim=settings.jwt_user_claim,
                admin_claim=settings.jwt_admin_claim,
            )

    @property
    def enabled(self) -> bool:
        return self._tokens is not None or self._keys is not None

    def principal(self, authorization: str | None, cookie: str | None, method: str) -> Principal:
        """The caller; raises principal.AuthRefusedError (a 401) when it is not accepted."""
        return identify(
            credential_of(authorization, cookie, method),
            tokens=self._tokens.current() if self._tokens is not None else None,
            keys=self._keys.current() if self._keys is not None else None,
            rules=self._rules,
            admin_users=self._admin_users,
            now=time.time(),
        )
