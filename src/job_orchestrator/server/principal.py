"""Who is calling: a request's credential -> a `Principal`, or `AuthRefusedError` (a 401).

Pure: no file, no clock, no HTTP. `server.auth` feeds it the current API_TOKENS_FILE and
JWT_PUBLIC_KEYS and the time; `server.requesting` turns its answer into the routes' caller.

A principal is one of:
- `ANYONE`: authentication is off (neither API_TOKENS_FILE nor JWT_PUBLIC_KEYS); it may act
  for every user and is an admin, as in the original.
- a user: a user token of API_TOKENS_FILE or a JWT (its user claim); it acts for that user.
- a portal: a portal token of API_TOKENS_FILE; it acts for any user id of its ranges that it
  names, and for no other.

A credential is looked up first in API_TOKENS_FILE (by the SHA-256 of its value, so timing
tells nothing about a prefix), then, when it has the shape of a JWT and keys are set,
verified as one. A JWT's algorithm is the one of the key (RS256, ES256 or EdDSA), never the
token's choice: `alg: none` and HMAC with a public key as secret are refused before any key
is used.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from job_orchestrator.credentials import EDDSA, ES256, RS256, PublicKey, TokenEntry, UserRange

#: Seconds of clock difference allowed between the portal and us for `exp` and `nbf`.
LEEWAY_S = 30.0
#: The cookie read, on GET and HEAD only, when there is no Authorization header: a browser
#: opening /status or a download. Never on other methods, so a forged cross-site form
#: cannot upload or terminate with it.
COOKIE = "jo_token"
#: The answer to a missing or unknown credential (the SDK and CLI print it as it is).
INVALID = "missing or invalid bearer token"

_ACCEPTED_ALGORITHMS = (RS256, ES256, EDDSA)
_NUMERIC = re.compile(r"-?[0-9]{1,10}")
_COOKIE_METHODS = frozenset({"GET", "HEAD"})


class AuthRefusedError(Exception):
    """The credential is missing or not accepted; the message says why (never the secret)."""


@dataclass(frozen=True, slots=True)
class Principal:
    #: The credential's name: the token's name, `jwt:<key name>`; None when auth is off.
    name: str | None
    #: The user it acts as (a user token or a JWT); None for a portal and for ANYONE.
    user_id: int | None
    #: A portal's inclusive ranges of user ids.
    ranges: tuple[UserRange, ...] = ()
    admin: bool = False
    #: Authentication is off: every caller may act for anyone.
    anyone: bool = False

    @property
    def is_portal(self) -> bool:
        return not self.anyone and self.user_id is None

    def may_act_for(self, user_id: int) -> bool:
        if self.anyone:
            return True
        if self.user_id is not None:
            return user_id == self.user_id
        return any(low <= user_id <= high for low, high in self.ranges)


ANYONE = Principal(name=None, user_id=None, admin=True, anyone=True)


@dataclass(frozen=True, slots=True)
class JwtRules:
    """What a JWT must say besides its signature (JWT_AUDIENCE, JWT_ISSUER, ...)."""

    audience: str
    issuer: str | None = None
    user_claim: str = "sub"
    #: A claim that, when `true`, makes the caller an admin; None: only ADMIN_USERS are.
    admin_claim: str | None = None
    leeway_s: float = LEEWAY_S


class TokenTable:
    """API_TOKENS_FILE's entries keyed by the SHA-256 of their token."""

    def __init__(self, entries: Mapping[str, TokenEntry]) -> None:
        self._by_digest = {_digest(token): entry for token, entry in entries.items()}

    def __len__(self) -> int:
        return len(self._by_digest)

    def find(self, token: str) -> TokenEntry | None:
        return self._by_digest.get(_digest(token))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def credential_of(authorization: str | None, cookie: str | None, method: str) -> str | None:
    """The bearer credential of a request: the Authorization header's, else (GET and HEAD
    only) the `jo_token` cookie's."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        return value.strip() or None if scheme.lower() == "bearer" else None
    if cookie and method.upper() in _COOKIE_METHODS:
        return cookie.strip() or None
    return None


def identify(
    credential: str | None,
    *,
    tokens: TokenTable | None,
    keys: Sequence[PublicKey] | None,
    rules: JwtRules | None,
    admin_users: Collection[int],
    now: float,
) -> Principal:
    """The principal a credential stands for (tokens and keys: None when not configured)."""
    if tokens is None and keys is None:
        return ANYONE
    if not credential:
        raise AuthRefusedError(INVALID)
    entry = tokens.find(credential) if tokens is not None else None
    if entry is not None:
        admin = entry.user_id is not None and entry.user_id in admin_users
        return Principal(name=entry.name, user_id=entry.user_id, ranges=entry.ranges, admin=admin)
    if keys is not None and rules is not None and credential.count(".") == 2:
        return jwt_principal(credential, keys, rules, admin_users, now)
    raise AuthRefusedError(INVALID)


def jwt_principal(
    token: str,
    keys: Sequence[PublicKey],
    rules: JwtRules,
    admin_users: Collection[int],
    now: float,
) -> Principal:
    key, claims = _verified(token, keys, rules)
    _check_times(claims, now, rules.leeway_s)
    user_id = _user_id(claims.get(rules.user_claim))
    if user_id is None:
        raise AuthRefusedError(f"JWT claim {rules.user_claim!r} is not a numeric user id")
    admin = user_id in admin_users or (
        rules.admin_claim is not None and claims.get(rules.admin_claim) is True
    )
    return Principal(name=f"jwt:{key.name}", user_id=user_id, admin=admin)


def _verified(
    token: str, keys: Sequence[PublicKey], rules: JwtRules
) -> tuple[PublicKey, dict[str, Any]]:
    """The key that signed `token` and its claims, with audience and issuer checked."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthRefusedError("malformed JWT") from None
    algorithm = header.get("alg")
    if algorithm not in _ACCEPTED_ALGORITHMS:
        raise AuthRefusedError(
            f"JWT algorithm {str(algorithm)[:20]!r} is not accepted (RS256, ES256, EdDSA)"
        )
    candidates = [key for key in keys if key.algorithm == algorithm]
    kid = header.get("kid")
    if any(key.name == kid for key in candidates):
        candidates = [key for key in candidates if key.name == kid]
    required = ["aud", "exp"] + (["iss"] if rules.issuer is not None else [])
    options: Any = {
        "verify_exp": False,  # checked by _check_times against the given `now`
        "verify_nbf": False,
        "verify_iat": False,
        "verify_sub": False,  # a numeric `sub` is allowed: _user_id judges the user claim
        "require": required,
    }
    for key in candidates:
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=rules.audience,
                issuer=rules.issuer,
                options=options,
            )
        except jwt.InvalidSignatureError:
            continue
        except jwt.MissingRequiredClaimError as error:
            raise AuthRefusedError(f"JWT has no {error.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise AuthRefusedError("JWT audience is not JWT_AUDIENCE") from None
        except jwt.InvalidIssuerError:
            raise AuthRefusedError("JWT issuer is not JWT_ISSUER") from None
        except jwt.PyJWTError:
            raise AuthRefusedError("malformed JWT") from None
        return key, claims
    raise AuthRefusedError("JWT signature is not verified by any key of JWT_PUBLIC_KEYS")


def _check_times(claims: Mapping[str, Any], now: float, leeway_s: float) -> None:
    expires: Any = claims.get("exp")
    if not _is_number(expires):
        raise AuthRefusedError("JWT 'exp' claim is not a number")
    if now > expires + leeway_s:
        raise AuthRefusedError("JWT has expired")
    not_before = claims.get("nbf")
    if not_before is None:
        return
    if not _is_number(not_before):
        raise AuthRefusedError("JWT 'nbf' claim is not a number")
    if now < not_before - leeway_s:
        raise AuthRefusedError("JWT is not valid yet (nbf)")


def _is_number(value: Any) -> bool:
    # NaN compares false with everything: an `exp` of NaN would never expire.
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _user_id(value: Any) -> int | None:
    """A 32-bit user id from a claim: an integer, or a string of decimal digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and _NUMERIC.fullmatch(value):
        value = int(value)
    if isinstance(value, int) and -(2**31) <= value < 2**31:
        return value
    return None
