"""What the relay changes in requests and responses as they pass, and nothing more.

Requests: hop-by-hop headers go; ``X-Forwarded-For``, ``X-Forwarded-Host`` and
``X-Forwarded-Proto`` are set by the relay (a visitor's own copies, and ``Forwarded``,
are dropped: they would let anyone claim any address). So are their spellings with
underscores (``X_Forwarded_For``): nginx drops such headers by default, and WSGI and
CGI servers turn ``-`` and ``_`` into the same ``HTTP_X_FORWARDED_FOR``, where a
visitor's copy could win over the relay's. Responses: hop-by-hop headers go, and a
cookie scoped to the relay's domain (which every link shares) is narrowed to the link's
own host, so one link can never set cookies for another.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache

from aiohttp import web

from tunnel_client.protocol.heads import HOP_BY_HOP, Headers

__all__ = [
    "ResponseFields",
    "client_address",
    "forward_request_headers",
    "peer_address",
    "response_headers",
]

_REPLACED = frozenset(
    {
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-real-ip",
        "forwarded",
        "expect",  # the relay answers 100-continue itself
    }
)
_DROPPED = _REPLACED | HOP_BY_HOP
# Connection options that name no header of their own.
_CONNECTION_OPTIONS = frozenset({"close", "keep-alive", "upgrade"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=64)
def _networks(proxies: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


@lru_cache(maxsize=1024)
def _is_trusted(address: str, proxies: tuple[str, ...]) -> bool:
    if not proxies or not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in _networks(proxies))


def client_address(remote: str, forwarded_for: Iterable[str], proxies: tuple[str, ...]) -> str:
    """The visitor's address: the socket peer, or what trusted fronts say they saw.

    Every ``X-Forwarded-For`` line is one comma-separated list (RFC 9110 §5.3); each
    front appends the address it saw, so it is read from the right, past the trusted
    fronts, up to the first address that none of them is. Nothing left of that can be
    believed. A front's list that is not an address there means a broken front: then
    the last trusted one's own address is all that is known.
    """
    if not _is_trusted(remote, proxies):
        return remote
    hops = [hop.strip() for line in forwarded_for for hop in line.split(",")]
    seen = remote
    for hop in reversed(hops):
        if not hop:
            continue
        if not _is_trusted(hop, proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return seen
        seen = hop
    return seen


def peer_address(request: web.BaseRequest, trusted_proxies: tuple[str, ...]) -> str:
    """:func:`client_address` of a request aiohttp serves (the relay's own host)."""
    return client_address(
        request.remote or "", request.headers.getall("X-Forwarded-For", ()), trusted_proxies
    )


def forward_request_headers(
    headers: Sequence[tuple[str, str]],
    *,
    public_host: str,
    scheme: str,
    client_ip: str,
    drop: frozenset[str] = frozenset(),
) -> Headers:
    """The visitor's headers as the local server should see them (``drop``: lowercase)."""
    kept = []
    named: set[str] = set()
    for name, value in headers:
        lname = name.lower()
        if lname == "connection":
            named.update(token.strip().lower() for token in value.split(","))
        if lname in _DROPPED or lname in drop:
            continue
        if "_" in lname:
            spelled = lname.replace("_", "-")
            if spelled in _DROPPED or spelled in drop:
                continue
        kept.append((name, value))
    named -= _CONNECTION_OPTIONS
    if named:
        # Named in Connection: hop-by-hop too, whatever its name (RFC 9110 §7.6.1).
        kept = [
            (n, v)
            for n, v in kept
            if n.lower() not in named and n.lower().replace("_", "-") not in named
        ]
    kept.append(("X-Forwarded-For", client_ip))
    kept.append(("X-Forwarded-Host", public_host))
    kept.append(("X-Forwarded-Proto", scheme))
    return tuple(kept)


def _narrow_cookie(value: str, domain: str, host: str) -> str:
    """Drop a Domain attribute that would share the cookie beyond ``host``."""
    parts = value.split(";")
    kept = [parts[0]]
    for attribute in parts[1:]:
        name, _, attr_value = attribute.partition("=")
        if name.strip().lower() == "domain":
            scope = attr_value.strip().lstrip(".").lower()
            if scope != host:
                # Scoped to the relay's domain, a parent of it, or another link: a
                # host-only cookie is the widest scope a link may have.
                continue
        kept.append(attribute)
    return ";".join(kept)


class ResponseFields:
    """A response's headers as visitors should see them, and what framing needs of them."""

    __slots__ = ("date", "headers", "lengths")

    def __init__(self, headers: list[tuple[str, str]], lengths: list[str], date: bool) -> None:
        self.headers = headers
        self.lengths = lengths
        """Every Content-Length value, as sent."""
        self.date = date
        """True if the response has a Date."""


def response_headers(headers: Headers, *, domain: str, host: str) -> ResponseFields:
    """The local server's response headers as visitors should see them (one pass)."""
    kept = []
    lengths = []
    named: set[str] = set()
    date = False
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == "connection":
                named.update(token.strip().lower() for token in value.split(","))
            continue
        if lname == "content-length":
            lengths.append(value)
        elif lname == "date":
            date = True
        elif lname == "set-cookie":
            value = _narrow_cookie(value, domain, host)
        kept.append((name, value))
    named -= _CONNECTION_OPTIONS
    if named:
        kept = [(n, v) for n, v in kept if n.lower() not in named]
        lengths = [v for n, v in kept if n.lower() == "content-length"]
    return ResponseFields(kept, lengths, date)
