"""Keys and JWTs made by the tests, as a portal would make them (and as an attacker would).

Shared by tests/unit/test_principal.py and tests/acceptance/test_portal_auth.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

AUDIENCE = "job-orchestrator"
ISSUER = "https://portal.example"


@dataclass(frozen=True)
class SigningKey:
    private: Any
    algorithm: str

    @property
    def public_pem(self) -> str:
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    @property
    def fingerprint(self) -> str:
        """The key's name on the server when it comes from a PEM file: SHA-256 of its DER."""
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(der).hexdigest()[:12]

    def jwk(self, kid: str) -> dict[str, Any]:
        """The public key as a JWKS entry."""
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        public: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": kid, "use": "sig"}

    def sign(self, claims: dict[str, Any], kid: str | None = None) -> str:
        headers = {"kid": kid} if kid is not None else None
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers=headers)


def rsa_key() -> SigningKey:
    return SigningKey(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


def ec_key() -> SigningKey:
    return SigningKey(ec.generate_private_key(ec.SECP256R1()), "ES256")


def ed_key() -> SigningKey:
    return SigningKey(ed25519.Ed25519PrivateKey.generate(), "EdDSA")


def claims(user: int | str, now: float, **more: Any) -> dict[str, Any]:
    """What a portal puts in a token: who, for whom, from whom, for five minutes."""
    return {"sub": str(user), "aud": AUDIENCE, "iss": ISSUER, "exp": int(now) + 300, **more}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A JWT built by hand: `alg: none` (no secret) or HS256 with any bytes as the secret,
    as an attacker holding only the public key would make it."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if secret is None:
        return f"{signing_input}."
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"
