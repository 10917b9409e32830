"""Completion callbacks: which URLs are accepted, where they may lead, and how bodies are signed.

A callback URL is checked twice against CALLBACK_ALLOW: at upload, and at every delivery
attempt, where the connection then goes to one of the addresses just checked (never to a
second resolution of the name), so a name that is re-pointed at a private address after the
upload (DNS rebinding) reaches nothing. The orchestrator's own clients (the host and port of
each configured client URL) are never a target, whatever CALLBACK_ALLOW says: a callback to
`http://client:9000/kill/1` would otherwise be a request to a client on a user's behalf. A
refusal names the address only when the URL itself holds it (a name's resolution is not
shown: the uploader could map the server's network with it). The delivery loop itself is in
`delivery.py`.

The signature (`X-Orchestrator-Signature: v2=<hex>`) is an HMAC-SHA256 with CALLBACK_SECRET
of the attempt's time, the delivery's id, the URL and the body, each sent in a header too, so
a receiver can refuse a replayed, re-addressed or stale callback (docs/api.md, "Callbacks").
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

from job_orchestrator.config import IPNetwork, ServerSettings
from job_orchestrator.status import Status

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The header carrying `v2=<hex HMAC-SHA256(CALLBACK_SECRET, signed_message(...))>`.
SIGNATURE_HEADER = "X-Orchestrator-Signature"
SIGNATURE_PREFIX = "v2="
#: When the attempt was signed (Unix seconds): receivers refuse what is too old.
TIMESTAMP_HEADER = "X-Orchestrator-Timestamp"
#: The same for every attempt of one job's callback: receivers refuse what they have seen.
DELIVERY_HEADER = "X-Orchestrator-Delivery"
#: Client endpoints are resolved again after this long (a client's name may move).
CLIENT_ENDPOINTS_TTL_S = 60.0
#: Longer callback URLs are refused (browsers and proxies commonly stop near 2 KiB).
MAX_URL_CHARS = 2048
_SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# IPv6 forms that carry an IPv4 address a gateway would reach: judged by that address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# IANA's special-purpose ranges that are not globally reachable, listed as well as Python's
# flags: their coverage changed between Python versions (192.0.0.0/24 in 3.12.4, 3.13).
_SPECIAL = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/3",  # multicast and the reserved 240.0.0.0/4 (with the broadcast address)
        "::/8",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)


class CallbackURLError(ValueError):
    """A callback URL that is refused; the message says why (it is shown to the uploader)."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, 6to4 or NAT64 (64:ff9b::/96) address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast: not private, loopback, link-local, multicast, reserved,
    unspecified or shared (100.64.0.0/10), also when wrapped in an IPv6 address."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            return is_public(inner)
    if any(address.version == network.version and address in network for network in _SPECIAL):
        return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


Endpoint = tuple[IPAddress, int]


def _canonical(address: IPAddress) -> IPAddress:
    """::ffff:10.0.0.1 is 10.0.0.1 to the kernel."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(slots=True)
class ClientEndpoints:
    """The addresses and ports of the configured clients: never a callback target."""

    urls: tuple[str, ...]
    _known: frozenset[Endpoint] = frozenset()
    _resolved_at: float = field(default=-CLIENT_ENDPOINTS_TTL_S)

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ClientEndpoints:
        urls = {
            url
            for service in settings.services.values()
            for node in service.nodes
            for url in (node.upload_url, node.download_url, node.terminate_url)
        }
        return cls(tuple(sorted(urls)))

    async def current(self) -> frozenset[Endpoint]:
        if time.monotonic() - self._resolved_at >= CLIENT_ENDPOINTS_TTL_S:
            found: set[Endpoint] = set()
            for raw in self.urls:
                found |= await _endpoints_of(raw)
            self._known, self._resolved_at = frozenset(found), time.monotonic()
        return self._known

    async def includes(self, address: IPAddress, port: int) -> bool:
        return (_canonical(address), port) in await self.current()


async def _endpoints_of(raw: str) -> set[Endpoint]:
    """Where a client URL leads (nothing if its name does not resolve now)."""
    try:
        url = httpx.URL(raw)
        infos = await asyncio.get_running_loop().getaddrinfo(
            url.raw_host.decode("ascii"), port_of(url), type=socket.SOCK_STREAM
        )
    except (httpx.InvalidURL, OSError, KeyError, UnicodeError):
        return set()
    return {(_canonical(ipaddress.ip_address(info[4][0])), port_of(url)) for info in infos}


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """CALLBACK_ALLOW: public addresses (if `public`) and the listed networks."""

    public: bool = True
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> AddressPolicy:
        return cls(settings.callback_allow_public, settings.callback_allow_networks)

    def permits(self, address: IPAddress) -> bool:
        if self.public and is_public(address):
            return True
        candidates: list[IPAddress] = [address]
        # ::ffff:127.0.0.1 is 127.0.0.1 to the kernel: an IPv4 network covers it.
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(
            candidate.version == network.version and candidate in network
            for candidate in candidates
            for network in self.networks
        )

    def describe(self) -> str:
        parts = (["public addresses"] if self.public else []) + [str(n) for n in self.networks]
        return ", ".join(parts) if parts else "nothing"


def parse_callback_url(raw: str) -> httpx.URL:
    """The URL as it will be called; CallbackURLError if it is not a plain http(s) URL."""
    if len(raw) > MAX_URL_CHARS:
        raise CallbackURLError(f"longer than {MAX_URL_CHARS} characters")
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in raw):
        raise CallbackURLError("contains a space or a control character")
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL as error:
        raise CallbackURLError(f"not a valid URL ({error})") from None
    if url.scheme not in _SCHEMES:
        shown = f"{url.scheme!r}" if url.scheme else "none"
        raise CallbackURLError(f"only http and https URLs are accepted, got scheme {shown}")
    if not url.host:
        raise CallbackURLError("no host")
    if url.userinfo:
        raise CallbackURLError("credentials in the URL are not accepted (the body is signed)")
    if url.port is not None and not 1 <= url.port <= 65535:
        raise CallbackURLError(f"port {url.port} is out of range")
    return url


def port_of(url: httpx.URL) -> int:
    return url.port or _DEFAULT_PORTS[url.scheme]


async def resolve_permitted(
    url: httpx.URL, policy: AddressPolicy, clients: ClientEndpoints | None = None
) -> list[IPAddress]:
    """Every address the URL's host resolves to, if the policy permits them all and none is
    a client's endpoint.

    CallbackURLError says why not: the forbidden address when the URL holds it literally,
    else only that the name leads somewhere not allowed (or does not resolve).
    """
    host = url.raw_host.decode("ascii")  # IDNA-encoded, as the resolver wants it
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port_of(url), type=socket.SOCK_STREAM
        )
    except OSError as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise CallbackURLError(f"host {host!r} does not resolve ({reason})") from None
    addresses = _unique(ipaddress.ip_address(info[4][0]) for info in infos)
    if not addresses:
        raise CallbackURLError(f"host {host!r} has no address")
    literal = _is_address(host)
    for address in addresses:
        if clients is not None and await clients.includes(address, port_of(url)):
            raise CallbackURLError(
                f"host {host!r} is one of this orchestrator's clients, never a callback target"
                if literal
                else f"host {host!r} leads to one of this orchestrator's clients, "
                "never a callback target"
            )
        if not policy.permits(address):
            where = f"resolves to {address}, which" if literal else "resolves to an address"
            raise CallbackURLError(
                f"host {host!r} {where} CALLBACK_ALLOW does not allow "
                f"(allowed: {policy.describe()})"
            )
    return addresses


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _unique(addresses: Iterable[IPAddress]) -> list[IPAddress]:
    return list(dict.fromkeys(addresses))


def callback_body(job_id: int, status: Status, message: str) -> bytes:
    """The JSON a callback POSTs: the same three fields as `GET /download/{id}`."""
    document = {"id": job_id, "status": status.wire, "message": message}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def delivery_id(job_id: int, first_attempt_at: float) -> str:
    """The id every attempt of one job's callback carries (the first claim fixes it)."""
    return f"{job_id}.{int(first_attempt_at * 1000)}"


def signed_message(timestamp: int, delivery: str, url: str, body: bytes) -> bytes:
    """What the signature covers: `v2`, the time, the delivery id and the URL, one per line,
    then the body."""
    return f"v2\n{timestamp}\n{delivery}\n{url}\n".encode() + body


def signature(secret: str, timestamp: int, delivery: str, url: str, body: bytes) -> str:
    """The X-Orchestrator-Signature value of one attempt."""
    message = signed_message(timestamp, delivery, url, body)
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_PREFIX}{digest}"


def signed_headers(secret: str, delivery: str, url: str, body: bytes) -> dict[str, str]:
    """The headers that sign one attempt made now."""
    timestamp = int(time.time())
    return {
        TIMESTAMP_HEADER: str(timestamp),
        DELIVERY_HEADER: delivery,
        SIGNATURE_HEADER: signature(secret, timestamp, delivery, url, body),
    }
