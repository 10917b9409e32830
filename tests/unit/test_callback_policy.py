"""Callbacks: the address policy (CALLBACK_ALLOW), URL checks, body and signature, settings."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from job_orchestrator.config import load_server_settings, parse_callback_allow
from job_orchestrator.errors import ConfigError
from job_orchestrator.server.callbacks import (
    AddressPolicy,
    CallbackURLError,
    ClientEndpoints,
    IPAddress,
    callback_body,
    delivery_id,
    embedded_ipv4,
    is_public,
    parse_callback_url,
    resolve_permitted,
    signature,
)
from job_orchestrator.status import Status

NOT_PUBLIC = [
    "0.0.0.0",
    "0.1.2.3",
    "10.0.0.1",
    "100.64.0.1",
    "127.0.0.1",
    "127.255.255.254",
    "169.254.169.254",
    "172.16.0.1",
    "192.0.0.8",
    "192.0.2.1",
    "192.168.1.1",
    "198.18.0.1",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "::127.0.0.1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2001:db8::1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fec0::1",
    "ff02::1",
    "ff0e::1",
]
PUBLIC = [
    "1.1.1.1",
    "8.8.8.8",
    "93.184.216.34",
    "2606:4700:4700::1111",
    "2a00:1450:4001::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


def address(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize("text", NOT_PUBLIC)
def test_not_public(text: str) -> None:
    assert not is_public(address(text))
    assert not AddressPolicy().permits(address(text))


@pytest.mark.parametrize("text", PUBLIC)
def test_public(text: str) -> None:
    assert is_public(address(text))
    assert AddressPolicy().permits(address(text))


ipv4s = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ipv6s = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


@given(ipv4s)
def test_an_ipv4_address_wrapped_in_ipv6_is_judged_as_itself(inner: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{inner}")
    nat64 = ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(inner))
    sixtofour = ipaddress.IPv6Address((0x2002 << 112) | (int(inner) << 80) | 1)
    for wrapped in (mapped, nat64, sixtofour):
        assert embedded_ipv4(wrapped) == inner
        assert is_public(wrapped) == is_public(inner)


@given(st.one_of(ipv4s, ipv6s))
def test_public_never_includes_the_special_ranges(candidate: IPAddress) -> None:
    if is_public(candidate):
        judged = candidate
        if isinstance(candidate, ipaddress.IPv6Address):
            judged = embedded_ipv4(candidate) or candidate
        flags = ("private", "loopback", "link_local", "multicast", "reserved", "unspecified")
        assert [flag for flag in flags if getattr(judged, f"is_{flag}")] == []


@given(st.one_of(ipv4s, ipv6s))
def test_a_listed_network_permits_exactly_its_addresses(candidate: IPAddress) -> None:
    policy = AddressPolicy(public=False, networks=(ipaddress.ip_network("127.0.0.0/8"),))
    judged = candidate
    if isinstance(candidate, ipaddress.IPv6Address) and candidate.ipv4_mapped is not None:
        judged = candidate.ipv4_mapped
    assert policy.permits(candidate) == (
        isinstance(judged, ipaddress.IPv4Address) and int(judged) >> 24 == 127
    )


def test_the_policy_joins_public_and_networks() -> None:
    policy = AddressPolicy(public=True, networks=(ipaddress.ip_network("10.1.0.0/16"),))
    assert policy.permits(address("8.8.8.8"))
    assert policy.permits(address("10.1.2.3"))
    assert policy.permits(address("::ffff:10.1.2.3"))
    assert not policy.permits(address("10.2.0.1"))
    assert not policy.permits(address("127.0.0.1"))
    assert policy.describe() == "public addresses, 10.1.0.0/16"
    assert AddressPolicy(public=False).describe() == "nothing"
    assert not AddressPolicy(public=False).permits(address("8.8.8.8"))


# ---- CALLBACK_ALLOW and the other settings ----------------------------------------------------


def test_callback_allow_parsing() -> None:
    assert parse_callback_allow("") == (True, ())
    assert parse_callback_allow(" , ") == (True, ())
    assert parse_callback_allow("127.0.0.0/8") == (False, (ipaddress.ip_network("127.0.0.0/8"),))
    assert parse_callback_allow("PUBLIC, 10.1.2.3/16, ::1") == (
        True,
        (ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("::1/128")),
    )


@pytest.mark.parametrize("raw", ["localhost", "10.0.0.0/33", "public-ish", "127.0.0.0/8;x"])
def test_a_bad_callback_allow_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^CALLBACK_ALLOW: "):
        parse_callback_allow(raw)


def test_callback_settings_and_defaults() -> None:
    defaults = load_server_settings({})
    assert defaults.callback_secret is None
    assert (defaults.callback_allow_public, defaults.callback_allow_networks) == (True, ())
    assert (defaults.callback_deadline_s, defaults.callback_timeout_s) == (86400.0, 10.0)
    settings = load_server_settings(
        {
            "CALLBACK_SECRET": "s" * 16,
            "CALLBACK_ALLOW": "127.0.0.0/8",
            "CALLBACK_DEADLINE": "60",
            "CALLBACK_TIMEOUT": "2.5",
        }
    )
    assert settings.callback_secret == "s" * 16
    assert settings.callback_allow_public is False
    assert (settings.callback_deadline_s, settings.callback_timeout_s) == (60.0, 2.5)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CALLBACK_SECRET": "short"}, "CALLBACK_SECRET"),
        ({"CALLBACK_TIMEOUT": "0"}, "CALLBACK_TIMEOUT"),
        ({"CALLBACK_TIMEOUT": "-1"}, "CALLBACK_TIMEOUT"),
        ({"CALLBACK_DEADLINE": "a day"}, "CALLBACK_DEADLINE"),
    ],
)
def test_bad_callback_settings(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}: "):
        load_server_settings(env)


# ---- URLs, resolution ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    ["http://127.0.0.1:8080/a?b=c", "https://portal.example/jobs/done", "HTTP://Example.org/"],
)
def test_http_and_https_urls_are_accepted(raw: str) -> None:
    assert parse_callback_url(raw).scheme in ("http", "https")


@given(st.text(max_size=40))
def test_a_url_without_an_http_scheme_is_refused(rest: str) -> None:
    for scheme in ("ftp", "file", "gopher", "ws", "data"):
        with pytest.raises(CallbackURLError):
            parse_callback_url(f"{scheme}:{rest}")


async def test_every_resolved_address_is_checked() -> None:
    loopback = AddressPolicy(public=False, networks=(ipaddress.ip_network("127.0.0.0/8"),))
    url = parse_callback_url("http://127.0.0.1:9/")
    assert await resolve_permitted(url, loopback) == [address("127.0.0.1")]
    with pytest.raises(CallbackURLError, match=r"resolves to 127\.0\.0\.1, which CALLBACK_ALLOW"):
        await resolve_permitted(url, AddressPolicy())
    with pytest.raises(CallbackURLError, match="does not resolve"):
        await resolve_permitted(parse_callback_url("http://nothing.invalid/"), loopback)


async def test_a_name_is_refused_without_saying_what_it_resolves_to() -> None:
    """Issue 21, finding 12: the refusal was an oracle of the server's DNS view."""
    with pytest.raises(CallbackURLError) as refused:
        await resolve_permitted(parse_callback_url("http://localhost:9/"), AddressPolicy())
    assert "resolves to an address CALLBACK_ALLOW does not allow" in str(refused.value)
    assert "127.0.0.1" not in str(refused.value)
    assert "::1" not in str(refused.value)


async def test_the_clients_are_never_a_target_whatever_callback_allow_says() -> None:
    """Issue 21, finding 7: a callback to a client's /kill killed another user's job."""
    loopback = AddressPolicy(public=False, networks=(ipaddress.ip_network("127.0.0.0/8"),))
    clients = ClientEndpoints(("http://localhost:9000/submit", "http://127.0.0.2:9001/kill"))
    for raw in (
        "http://127.0.0.1:9000/kill/1",
        "http://localhost:9000/kill/1",
        "http://127.0.0.2:9001/",
        "http://[::ffff:127.0.0.2]:9001/",
    ):
        with pytest.raises(CallbackURLError, match="orchestrator's clients"):
            await resolve_permitted(parse_callback_url(raw), loopback, clients)
    # Another port of the same host is not a client.
    url = parse_callback_url("http://127.0.0.1:9002/hook")
    assert await resolve_permitted(url, loopback, clients) == [address("127.0.0.1")]


# ---- body and signature -------------------------------------------------------------------------


def test_the_body_and_its_signature() -> None:
    body = callback_body(7, Status.FAILED, "grep: input.pdb: No such file — é")
    assert json.loads(body) == {
        "id": 7,
        "status": "Failed",
        "message": "grep: input.pdb: No such file — é",
    }
    assert body.startswith(b'{"id":7,"status":"Failed","message":')
    key = "k" * 16
    url = "https://portal.example/hooks?job=7"
    message = b"v2\n1700000000\n7.1700000000000\n" + url.encode() + b"\n" + body
    expected = hmac.new(key.encode(), message, hashlib.sha256).hexdigest()
    signed = signature(key, 1700000000, "7.1700000000000", url, body)
    assert signed == f"v2={expected}"
    # Each part is covered: a replay with another time, delivery, URL or body fails.
    assert signature(key, 1700000001, "7.1700000000000", url, body) != signed
    assert signature(key, 1700000000, "8.1700000000000", url, body) != signed
    assert signature(key, 1700000000, "7.1700000000000", url + "x", body) != signed
    assert signature(key, 1700000000, "7.1700000000000", url, body + b" ") != signed
    assert delivery_id(7, 1700000000.0) == "7.1700000000000"
