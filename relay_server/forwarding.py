"""What the relay changes in requests and responses as they pass, and nothing more.

Requests: hop-by-hop headers go; ``X-Forwarded-For``, ``X-Forwarded-Host`` and
``X-Forwarded-Proto`` are set by the relay (a visitor's own copies, and ``Forwarded``,
are dropped: they would let anyone claim any address). Responses: hop-by-hop headers
go, and a cookie scoped to the relay's domain (which every link shares) is narrowed to
the link's own host, so one link can never set cookies for another.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from aiohttp import web

from tunnel_client.protocol.heads import Headers, strip_hop_by_hop

__all__ = ["forward_request_headers", "peer_address", "response_headers"]

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


@lru_cache(maxsize=64)
def _networks(
    proxies: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def _is_trusted(address: str, proxies: tuple[str, ...]) -> bool:
    if not proxies or not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in _networks(proxies))


def peer_address(request: web.BaseRequest, trusted_proxies: tuple[str, ...]) -> str:
    """The visitor's address: the socket peer, or what a trusted front says it saw."""
    remote = request.remote or ""
    if _is_trusted(remote, trusted_proxies):
        claimed = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
        if claimed:
            return claimed
    return remote


def forward_request_headers(
    request: web.BaseRequest,
    *,
    public_host: str,
    scheme: str,
    client_ip: str,
    drop: Iterable[str] = (),
) -> Headers:
    """The visitor's headers as the local server should see them."""
    dropped = _REPLACED | {d.lower() for d in drop}
    kept = [
        (name, value)
        for name, value in strip_hop_by_hop(request.headers.items())
        if name.lower() not in dropped
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


def response_headers(headers: Headers, *, domain: str, host: str) -> list[tuple[str, str]]:
    """The local server's response headers as visitors should see them."""
    result = []
    for name, value in strip_hop_by_hop(headers):
        if name.lower() == "set-cookie":
            value = _narrow_cookie(value, domain, host)
        result.append((name, value))
    return result
