"""The server's credential files, parsed: API_TOKENS_FILE and JWT_PUBLIC_KEYS.

Pure text -> data, shared by config (a malformed file stops the start, naming the line)
and the server (which re-reads the files when they change; see `server.auth`).

API_TOKENS_FILE, one token a line (blank lines and `#` comments allowed)::

    <token> <user_id> [name=<name>]                     a user's own token
    <token> portal:<low>-<high>[,<low>-<high>...] name=<name>   a portal's token

A user token acts for its user only; a portal token for any user id in its inclusive ranges
that it names. Tokens have 16+ characters and appear once; names are 1-64 of
`A-Z a-z 0-9 . _ @ -` and unique when given (a user token without one is `user-<id>`); the
ranges of two portals never overlap (user ids are one namespace for every portal).

JWT_PUBLIC_KEYS: PEM public keys (`-----BEGIN PUBLIC KEY-----` blocks, one after another)
or a JWKS document (`{"keys": [...]}`). Only RSA (RS256), P-256 (ES256) and Ed25519 (EdDSA)
keys are taken; a key's name is its JWKS `kid`, else the first 12 hex digits of the SHA-256
of its DER encoding.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from job_orchestrator import wire
from job_orchestrator.errors import ConfigError

#: An inclusive range of user ids, (low, high).
UserRange = tuple[int, int]

_MIN_TOKEN_CHARS = 16
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_RANGE = re.compile(r"([+-]?[0-9]+)-([+-]?[0-9]+)")
_PORTAL = "portal:"


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One line of API_TOKENS_FILE: a user's token (`user_id`) or a portal's (`ranges`)."""

    name: str
    user_id: int | None = None
    ranges: tuple[UserRange, ...] = ()

    @property
    def is_portal(self) -> bool:
        return self.user_id is None


def parse_api_tokens(text: str, source: str = "API_TOKENS_FILE") -> dict[str, TokenEntry]:
    """The file's lines -> {token: entry}; ConfigError naming the line of the first fault."""
    entries: dict[str, TokenEntry] = {}
    first_line: dict[str, int] = {}
    named: dict[str, int] = {}
    portals: list[tuple[UserRange, int]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        token, entry, explicit = _parse_line(stripped, f"line {number}", source)
        if token in first_line:
            raise ConfigError(source, f"line {number}: the token of line {first_line[token]} again")
        if explicit:
            if entry.name in named:
                raise ConfigError(
                    source,
                    f"line {number}: name {entry.name!r} is taken by line {named[entry.name]}",
                )
            named[entry.name] = number
        for low, high in entry.ranges:
            for (other_low, other_high), other in portals:
                if low <= other_high and other_low <= high:
                    raise ConfigError(
                        source,
                        f"line {number}: portal range {low}-{high} overlaps "
                        f"{other_low}-{other_high} of line {other}",
                    )
            portals.append(((low, high), number))
        first_line[token] = number
        entries[token] = entry
    return entries


def _parse_line(line: str, where: str, source: str) -> tuple[str, TokenEntry, bool]:
    """(token, entry, whether the name was given)."""
    parts = line.split()
    usage = "expected 'token user_id [name=NAME]' or 'token portal:LOW-HIGH name=NAME'"
    if len(parts) not in (2, 3):
        raise ConfigError(source, f"{where}: {usage}")
    token, who = parts[0], parts[1]
    if len(token) < _MIN_TOKEN_CHARS:
        raise ConfigError(
            source, f"{where}: tokens must have at least {_MIN_TOKEN_CHARS} characters"
        )
    name = None
    if len(parts) == 3:
        key, _, name = parts[2].partition("=")
        if key != "name" or not _NAME.fullmatch(name):
            raise ConfigError(source, f"{where}: expected name=NAME (1-64 of A-Z a-z 0-9 . _ @ -)")
    if who.startswith(_PORTAL):
        ranges = _parse_ranges(who[len(_PORTAL) :])
        if ranges is None:
            raise ConfigError(source, f"{where}: expected portal:LOW-HIGH[,LOW-HIGH...] user ids")
        if name is None:
            raise ConfigError(source, f"{where}: a portal token needs name=NAME")
        return token, TokenEntry(name=name, ranges=ranges), True
    user_id = wire.parse_i32(who)
    if user_id is None:
        raise ConfigError(source, f"{where}: {usage}")
    return token, TokenEntry(name=name or f"user-{user_id}", user_id=user_id), name is not None


def _parse_ranges(text: str) -> tuple[UserRange, ...] | None:
    ranges = []
    for part in text.split(","):
        match = _RANGE.fullmatch(part)
        if match is None:
            return None
        low, high = wire.parse_i32(match[1]), wire.parse_i32(match[2])
        if low is None or high is None or low > high:
            return None
        ranges.append((low, high))
    for index, (low, high) in enumerate(ranges):  # one portal's own ranges may not overlap
        if any(low <= h and lo <= high for lo, h in ranges[:index]):
            return None
    return tuple(ranges)


# --- JWT_PUBLIC_KEYS -------------------------------------------------------------------------

#: The one algorithm accepted for each kind of key: the token's `alg` must be it.
RS256, ES256, EDDSA = "RS256", "ES256", "EdDSA"


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A verification key with the one algorithm it is used with (never chosen by a token)."""

    name: str
    algorithm: str
    key: Any  # a cryptography public key object


def parse_public_keys(text: str, source: str = "JWT_PUBLIC_KEYS") -> tuple[PublicKey, ...]:
    """PEM public keys or a JWKS document -> keys; ConfigError when none or any is unusable."""
    stripped = text.strip()
    keys = tuple(_jwks(stripped, source) if stripped.startswith("{") else _pems(stripped, source))
    if not keys:
        raise ConfigError(source, "no public key found (expected PEM blocks or a JWKS document)")
    names = [key.name for key in keys]
    if len(set(names)) != len(names):
        raise ConfigError(source, "two keys have the same name (kid)")
    return keys


def _pems(text: str, source: str) -> Iterator[PublicKey]:
    from cryptography.hazmat.primitives import serialization

    blocks = re.finditer(r"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----", text, re.DOTALL)
    for number, block in enumerate(blocks, start=1):
        label = block[1]
        if label != "PUBLIC KEY":
            raise ConfigError(source, f"PEM block {number} is a {label}, not a PUBLIC KEY")
        try:
            key = serialization.load_pem_public_key(block[0].encode())
        except ValueError:
            raise ConfigError(source, f"PEM block {number} is not a valid public key") from None
        der = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        name = hashlib.sha256(der).hexdigest()[:12]
        yield PublicKey(
            name=name, algorithm=_algorithm(key, f"PEM block {number}", source), key=key
        )


def _jwks(text: str, source: str) -> Iterator[PublicKey]:
    import jwt

    try:
        document = json.loads(text)
    except ValueError:
        raise ConfigError(source, "not valid JSON (expected a JWKS document)") from None
    found = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(found, list):
        raise ConfigError(source, 'a JWKS document is {"keys": [...]}')
    for number, jwk in enumerate(found, start=1):
        if not isinstance(jwk, dict) or "d" in jwk or jwk.get("kty") == "oct":
            raise ConfigError(source, f"key {number}: not a public key")
        if jwk.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK.from_dict(jwk).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            raise ConfigError(source, f"key {number}: not a usable public key") from None
        kid = jwk.get("kid")
        name = kid if isinstance(kid, str) and _NAME.fullmatch(kid) else f"key{number}"
        yield PublicKey(name=name, algorithm=_algorithm(key, f"key {number}", source), key=key)


def _algorithm(key: Any, where: str, source: str) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ConfigError(source, f"{where}: RSA keys need 2048 bits or more")
        return RS256
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return ES256
    if isinstance(key, ed25519.Ed25519PublicKey):
        return EDDSA
    raise ConfigError(source, f"{where}: only RSA, P-256 and Ed25519 public keys are accepted")


def key_names(keys: Sequence[PublicKey]) -> str:
    return ", ".join(f"{key.name} ({key.algorithm})" for key in keys)
