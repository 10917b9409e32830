"""Who is calling: API_TOKENS_FILE's user and portal lines, JWT_PUBLIC_KEYS, and the pure
`identify` that turns a credential into a principal (no server, no clock: `now` is given)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from job_orchestrator.config import load_server_settings
from job_orchestrator.credentials import (
    PublicKey,
    TokenEntry,
    parse_api_tokens,
    parse_public_keys,
)
from job_orchestrator.errors import ConfigError
from job_orchestrator.server.principal import (
    ANYONE,
    INVALID,
    LEEWAY_S,
    AuthRefusedError,
    JwtRules,
    Principal,
    TokenTable,
    credential_of,
    identify,
)
from tests.portal_keys import (
    AUDIENCE,
    ISSUER,
    SigningKey,
    claims,
    ec_key,
    ed_key,
    forge,
    rsa_key,
)

NOW = 1_800_000_000.0
USER_TOKEN = "user-token-of-eleven-0123456789"
PORTAL_TOKEN = "portal-token-of-haddock-0123456789"
TOKENS_TEXT = f"""
# a user, and a portal acting for users 1000..1999 and 5000..5009
{USER_TOKEN} 11
{PORTAL_TOKEN} portal:1000-1999,5000-5009 name=haddock
"""
RULES = JwtRules(audience=AUDIENCE, issuer=ISSUER)


# --- API_TOKENS_FILE -------------------------------------------------------------------------


def test_user_and_portal_lines_parse() -> None:
    entries = parse_api_tokens(TOKENS_TEXT)
    assert entries == {
        USER_TOKEN: TokenEntry(name="user-11", user_id=11),
        PORTAL_TOKEN: TokenEntry(name="haddock", ranges=((1000, 1999), (5000, 5009))),
    }
    assert entries[PORTAL_TOKEN].is_portal
    assert not entries[USER_TOKEN].is_portal


def test_a_user_line_may_be_named() -> None:
    entries = parse_api_tokens(f"{USER_TOKEN} -7 name=alice.laptop\n")
    assert entries[USER_TOKEN] == TokenEntry(name="alice.laptop", user_id=-7)


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("short 1", "line 1: tokens must have at least 16 characters"),
        (f"{USER_TOKEN}", "line 1: expected 'token user_id"),
        (f"{USER_TOKEN} eleven", "line 1: expected 'token user_id"),
        (f"{USER_TOKEN} 2147483648", "line 1: expected 'token user_id"),
        (f"{USER_TOKEN} 1 nom=x", "line 1: expected name=NAME"),
        (f"{USER_TOKEN} 1 name=a:b", "line 1: expected name=NAME"),
        (f"{USER_TOKEN} 1 name=x extra", "line 1: expected 'token user_id"),
        (f"{PORTAL_TOKEN} portal:1-10", "line 1: a portal token needs name=NAME"),
        (f"{PORTAL_TOKEN} portal:10-1 name=p", "line 1: expected portal:LOW-HIGH"),
        (f"{PORTAL_TOKEN} portal:1-10,5-20 name=p", "line 1: expected portal:LOW-HIGH"),
        (f"{PORTAL_TOKEN} portal: name=p", "line 1: expected portal:LOW-HIGH"),
        (f"{PORTAL_TOKEN} portal:1-x name=p", "line 1: expected portal:LOW-HIGH"),
        (f"{USER_TOKEN} 1\n\n{USER_TOKEN} 2", "line 3: the token of line 1 again"),
        (f"{USER_TOKEN} 1 name=a\n{PORTAL_TOKEN} portal:1-2 name=a", "line 2: name 'a' is taken"),
        (
            f"{PORTAL_TOKEN} portal:1-100 name=a\n{USER_TOKEN} portal:100-200 name=b",
            "line 2: portal range 100-200 overlaps 1-100 of line 1",
        ),
    ],
)
def test_malformed_lines_are_refused_naming_the_line(text: str, fault: str) -> None:
    with pytest.raises(ConfigError, match="API_TOKENS_FILE") as refused:
        parse_api_tokens(text)
    assert fault in str(refused.value)
    assert USER_TOKEN not in str(refused.value)  # never the secret


def test_two_user_tokens_of_one_user_share_the_default_name() -> None:
    entries = parse_api_tokens(f"{USER_TOKEN} 1\n{PORTAL_TOKEN} 1\n")
    assert {entry.name for entry in entries.values()} == {"user-1"}


ranges = st.lists(
    st.tuples(st.integers(-(2**31), 2**31 - 1), st.integers(0, 1000)).map(
        lambda pair: (pair[0], min(pair[0] + pair[1], 2**31 - 1))
    ),
    min_size=1,
    max_size=4,
)


def _overlap(given: Sequence[tuple[int, int]]) -> bool:
    return any(
        low <= other_high and other_low <= high
        for index, (low, high) in enumerate(given)
        for other_low, other_high in given[:index]
    )


@given(first=ranges, second=ranges)
def test_two_portals_are_refused_exactly_when_their_ranges_overlap(
    first: list[tuple[int, int]], second: list[tuple[int, int]]
) -> None:
    def line(token: str, given: list[tuple[int, int]], name: str) -> str:
        return f"{token} portal:{','.join(f'{low}-{high}' for low, high in given)} name={name}"

    text = f"{line(USER_TOKEN, first, 'one')}\n{line(PORTAL_TOKEN, second, 'two')}\n"
    if _overlap(first) or _overlap(second) or _overlap(first + second):
        with pytest.raises(ConfigError):
            parse_api_tokens(text)
    else:
        entries = parse_api_tokens(text)
        assert entries[USER_TOKEN].ranges == tuple(first)
        assert entries[PORTAL_TOKEN].ranges == tuple(second)


@given(ranges=ranges, user_id=st.integers(-(2**31), 2**31 - 1))
def test_a_portal_acts_for_exactly_the_users_of_its_ranges(
    ranges: list[tuple[int, int]], user_id: int
) -> None:
    portal = Principal(name="p", user_id=None, ranges=tuple(ranges))
    assert portal.is_portal
    assert portal.may_act_for(user_id) == any(low <= user_id <= high for low, high in ranges)


@given(own=st.integers(-(2**31), 2**31 - 1), other=st.integers(-(2**31), 2**31 - 1))
def test_a_user_acts_for_itself_only_and_anyone_for_all(own: int, other: int) -> None:
    user = Principal(name="u", user_id=own)
    assert not user.is_portal
    assert user.may_act_for(own)
    assert user.may_act_for(other) == (other == own)
    assert ANYONE.may_act_for(other)
    assert not ANYONE.is_portal


# --- identify: tokens ------------------------------------------------------------------------

TABLE = TokenTable(parse_api_tokens(TOKENS_TEXT))


def who(
    credential: str | None,
    keys: Sequence[PublicKey] | None = None,
    rules: JwtRules | None = RULES,
    admins: frozenset[int] = frozenset(),
    tokens: TokenTable | None = TABLE,
    now: float = NOW,
) -> Principal:
    return identify(credential, tokens=tokens, keys=keys, rules=rules, admin_users=admins, now=now)


def test_tokens_identify_users_and_portals() -> None:
    assert who(USER_TOKEN) == Principal(name="user-11", user_id=11)
    assert who(USER_TOKEN, admins=frozenset({11})).admin
    portal = who(PORTAL_TOKEN, admins=frozenset({1000}))
    assert portal == Principal(name="haddock", user_id=None, ranges=((1000, 1999), (5000, 5009)))
    assert not portal.admin  # a portal is nobody's admin, whoever it acts for


@pytest.mark.parametrize(
    "credential", [None, "", "x" * 40, USER_TOKEN[:-1], USER_TOKEN + "x", " " + USER_TOKEN]
)
def test_unknown_tokens_are_refused(credential: str | None) -> None:
    with pytest.raises(AuthRefusedError, match=INVALID):
        who(credential)


def test_without_tokens_or_keys_everyone_is_anyone() -> None:
    assert who(None, tokens=None) is ANYONE
    assert who("whatever", tokens=None) is ANYONE
    assert ANYONE.admin


@pytest.mark.parametrize(
    ("authorization", "cookie", "method", "expected"),
    [
        (f"Bearer {USER_TOKEN}", None, "POST", USER_TOKEN),
        (f"bearer   {USER_TOKEN} ", "c" * 20, "GET", USER_TOKEN),
        (f"Basic {USER_TOKEN}", "c" * 20, "GET", None),  # a header that is not Bearer wins
        ("Bearer", None, "GET", None),
        (None, "c" * 20, "GET", "c" * 20),
        (None, "c" * 20, "HEAD", "c" * 20),
        # A cookie is sent by a browser with a cross-site form: never for what changes state.
        (None, "c" * 20, "POST", None),
        (None, "c" * 20, "DELETE", None),
        (None, None, "GET", None),
    ],
)
def test_the_credential_is_the_bearer_header_else_the_cookie_on_reads(
    authorization: str | None, cookie: str | None, method: str, expected: str | None
) -> None:
    assert credential_of(authorization, cookie, method) == expected


# --- identify: JWTs --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signers() -> dict[str, SigningKey]:
    return {"RS256": rsa_key(), "ES256": ec_key(), "EdDSA": ed_key()}


def keys_of(*signers: SigningKey) -> tuple[PublicKey, ...]:
    return parse_public_keys("\n".join(signer.public_pem for signer in signers))


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
def test_jwts_of_each_algorithm_identify_their_user(
    signers: dict[str, SigningKey], algorithm: str
) -> None:
    keys = keys_of(*signers.values())
    token = signers[algorithm].sign(claims(1234, NOW))
    found = who(token, keys)
    assert found.user_id == 1234
    assert not found.is_portal
    assert not found.admin
    name = next(key.name for key in keys if key.algorithm == algorithm)
    assert found.name == f"jwt:{name}"


def test_jwks_keys_are_named_by_kid_and_picked_by_it(signers: dict[str, SigningKey]) -> None:
    old, new = signers["RS256"], rsa_key()
    document = {"keys": [old.jwk("2026-old"), new.jwk("2026-new"), signers["EdDSA"].jwk("ed")]}
    keys = parse_public_keys(json.dumps(document))
    assert [(key.name, key.algorithm) for key in keys] == [
        ("2026-old", "RS256"),
        ("2026-new", "RS256"),
        ("ed", "EdDSA"),
    ]
    assert who(new.sign(claims(5, NOW), kid="2026-new"), keys).name == "jwt:2026-new"
    assert who(old.sign(claims(5, NOW)), keys).name == "jwt:2026-old"  # no kid: each key tried
    with pytest.raises(AuthRefusedError, match="not verified by any key"):
        who(old.sign(claims(5, NOW), kid="2026-new"), keys)


def test_admins_are_admin_users_or_hold_the_admin_claim(signers: dict[str, SigningKey]) -> None:
    keys, signer = keys_of(signers["ES256"]), signers["ES256"]
    rules = JwtRules(audience=AUDIENCE, issuer=ISSUER, admin_claim="jo_admin")
    assert who(signer.sign(claims(7, NOW)), keys, admins=frozenset({7})).admin
    assert who(signer.sign(claims(8, NOW, jo_admin=True)), keys, rules).admin
    assert not who(signer.sign(claims(8, NOW, jo_admin="true")), keys, rules).admin
    assert not who(signer.sign(claims(8, NOW, jo_admin=True)), keys).admin  # no JWT_ADMIN_CLAIM


def test_tokens_and_jwts_work_together(signers: dict[str, SigningKey]) -> None:
    keys = keys_of(signers["RS256"])
    assert who(PORTAL_TOKEN, keys).is_portal
    assert who(signers["RS256"].sign(claims(3, NOW)), keys).user_id == 3
    assert who(signers["RS256"].sign(claims(3, NOW)), keys, tokens=None).user_id == 3
    with pytest.raises(AuthRefusedError, match=INVALID):
        who(USER_TOKEN, keys, tokens=None)


def refusal(token: str, keys: Sequence[PublicKey], rules: JwtRules = RULES) -> str:
    with pytest.raises(AuthRefusedError) as refused:
        who(token, keys, rules)
    return str(refused.value)


def test_forged_and_foreign_jwts_are_refused(signers: dict[str, SigningKey]) -> None:
    signer = signers["RS256"]
    keys = keys_of(signer)
    payload = claims(1, NOW)
    assert "'none' is not accepted" in refusal(forge({"alg": "none"}, payload, None), keys)
    # HMAC with the public key (as PEM, as the file holds it) for the secret.
    confused = forge({"alg": "HS256", "typ": "JWT"}, payload, signer.public_pem.encode())
    assert "'HS256' is not accepted" in refusal(confused, keys)
    assert "not verified by any key" in refusal(rsa_key().sign(payload), keys)
    # The right key, a tampered payload.
    head, _, signature = signer.sign(payload).split(".")
    tampered = forge({"alg": "RS256"}, claims(2, NOW), None).split(".")[1]
    assert "not verified by any key" in refusal(f"{head}.{tampered}.{signature}", keys)
    assert refusal("a.b.c", keys) == "malformed JWT"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"aud": "another-service"}, "JWT audience is not JWT_AUDIENCE"),
        ({"aud": None}, "JWT has no 'aud' claim"),
        ({"iss": "https://elsewhere.example"}, "JWT issuer is not JWT_ISSUER"),
        ({"iss": None}, "JWT has no 'iss' claim"),
        ({"exp": None}, "JWT has no 'exp' claim"),
        ({"exp": "tomorrow"}, "JWT 'exp' claim is not a number"),
        ({"exp": True}, "JWT 'exp' claim is not a number"),
        ({"nbf": "now"}, "JWT 'nbf' claim is not a number"),
        ({"sub": "alice"}, "JWT claim 'sub' is not a numeric user id"),
        ({"sub": None}, "JWT claim 'sub' is not a numeric user id"),
        ({"sub": "2147483648"}, "JWT claim 'sub' is not a numeric user id"),
        ({"sub": " 12"}, "JWT claim 'sub' is not a numeric user id"),
        ({"sub": 1.5}, "JWT claim 'sub' is not a numeric user id"),
    ],
)
def test_jwts_with_wrong_claims_are_refused_saying_why(
    signers: dict[str, SigningKey], changes: dict[str, Any], message: str
) -> None:
    payload = {
        key: value
        for key, value in {**claims(1, NOW), **changes}.items()
        if value is not None or key not in changes
    }
    token = signers["EdDSA"].sign(payload)
    assert refusal(token, keys_of(signers["EdDSA"])) == message


def test_an_unset_issuer_accepts_any_and_a_user_claim_can_be_chosen(
    signers: dict[str, SigningKey],
) -> None:
    keys, signer = keys_of(signers["ES256"]), signers["ES256"]
    rules = JwtRules(audience=AUDIENCE, user_claim="uid")
    token = signer.sign({**claims("ignored", NOW), "iss": "anyone", "uid": 42})
    assert who(token, keys, rules).user_id == 42


_ED = ed_key()
_ED_KEYS = keys_of(_ED)


_NEAR = st.integers(-100, 100) | st.integers(-3600, 3600)


@given(exp_offset=_NEAR, nbf_offset=st.none() | _NEAR)
def test_exp_and_nbf_hold_with_the_leeway(exp_offset: int, nbf_offset: int | None) -> None:
    signer = _ED  # one key for every example: generating one per example would be slow
    payload = {**claims(9, NOW), "exp": NOW + exp_offset}
    if nbf_offset is not None:
        payload["nbf"] = NOW + nbf_offset
    token = signer.sign(payload)
    valid = exp_offset >= -LEEWAY_S and (nbf_offset is None or nbf_offset <= LEEWAY_S)
    if valid:
        assert who(token, _ED_KEYS).user_id == 9
    else:
        with pytest.raises(AuthRefusedError, match=r"expired|not valid yet"):
            who(token, _ED_KEYS)


@pytest.mark.parametrize(
    ("exp", "nbf", "valid"),
    [
        (-LEEWAY_S, None, True),
        (-LEEWAY_S - 1, None, False),
        (3600, LEEWAY_S, True),
        (3600, LEEWAY_S + 1, False),
    ],
)
def test_the_leeway_is_exactly_leeway_s(exp: float, nbf: float | None, valid: bool) -> None:
    payload = {**claims(9, NOW), "exp": NOW + exp}
    if nbf is not None:
        payload["nbf"] = NOW + nbf
    if valid:
        assert who(_ED.sign(payload), _ED_KEYS).user_id == 9
    else:
        with pytest.raises(AuthRefusedError):
            who(_ED.sign(payload), _ED_KEYS)


@given(user=st.integers(-(2**31), 2**31 - 1), as_text=st.booleans())
def test_any_32_bit_user_id_is_taken_as_a_number_or_as_digits(user: int, as_text: bool) -> None:
    token = _ED.sign({**claims(0, NOW), "sub": str(user) if as_text else user})
    assert who(token, _ED_KEYS).user_id == user


# --- JWT_PUBLIC_KEYS -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("", "no public key found"),
        ("{not json", "not valid JSON"),
        ('{"keys": 3}', 'a JWKS document is {"keys": [...]}'),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "key 1: not a public key"),
        ('{"keys": [{"kty": "RSA", "n": "x"}]}', "key 1: not a usable public key"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "not a valid public key"),
    ],
)
def test_bad_key_files_are_refused(text: str, fault: str) -> None:
    with pytest.raises(ConfigError, match="JWT_PUBLIC_KEYS") as refused:
        parse_public_keys(text)
    assert fault in str(refused.value)


def test_private_keys_and_weak_or_other_keys_are_refused() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    signer = rsa_key()
    private_pem = signer.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    with pytest.raises(ConfigError, match="is a PRIVATE KEY, not a PUBLIC KEY"):
        parse_public_keys(private_pem)
    jwk = {**signer.jwk("k"), "d": "x"}
    with pytest.raises(ConfigError, match="not a public key"):
        parse_public_keys(json.dumps({"keys": [jwk]}))
    weak = SigningKey(rsa.generate_private_key(public_exponent=65537, key_size=1024), "RS256")
    with pytest.raises(ConfigError, match="2048 bits"):
        parse_public_keys(weak.public_pem)
    other_curve = SigningKey(ec.generate_private_key(ec.SECP384R1()), "ES384")
    with pytest.raises(ConfigError, match="only RSA, P-256 and Ed25519"):
        parse_public_keys(other_curve.public_pem)


# --- the settings ----------------------------------------------------------------------------


def test_the_settings_check_the_files_at_start(tmp_path: Path) -> None:
    keys, tokens = tmp_path / "keys.pem", tmp_path / "tokens.txt"
    keys.write_text(_ED.public_pem)
    tokens.write_text(TOKENS_TEXT)
    settings = load_server_settings(
        {
            "API_TOKENS_FILE": str(tokens),
            "JWT_PUBLIC_KEYS": str(keys),
            "JWT_AUDIENCE": AUDIENCE,
            "JWT_ADMIN_CLAIM": "jo_admin",
        }
    )
    assert (settings.jwt_public_keys, settings.jwt_audience) == (keys, AUDIENCE)
    assert (settings.jwt_issuer, settings.jwt_user_claim) == (None, "sub")
    assert settings.jwt_admin_claim == "jo_admin"
    # Without an audience a JWT signed for another service would pass: refused at start.
    with pytest.raises(ConfigError, match="JWT_AUDIENCE: must be set with JWT_PUBLIC_KEYS"):
        load_server_settings({"JWT_PUBLIC_KEYS": str(keys)})
    keys.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConfigError, match="JWT_PUBLIC_KEYS: PEM block 1 is not a valid"):
        load_server_settings({"JWT_PUBLIC_KEYS": str(keys), "JWT_AUDIENCE": AUDIENCE})
    with pytest.raises(ConfigError, match="JWT_PUBLIC_KEYS: cannot read"):
        load_server_settings({"JWT_PUBLIC_KEYS": str(tmp_path / "nowhere")})
    tokens.write_text(f"{PORTAL_TOKEN} portal:1-10\n")
    with pytest.raises(ConfigError, match="API_TOKENS_FILE: line 1: a portal token needs"):
        load_server_settings({"API_TOKENS_FILE": str(tokens)})
