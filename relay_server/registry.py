"""The registry of links: subdomain -> tunnel, in memory, no I/O.

A :class:`Tunnel` outlives the WebSocket that created it: when its client drops, the
link stays registered (visitors get 503) for the reconnect grace period, so a client
that comes back with its lease finds it again. Expired subdomains are remembered
(boundedly) so visitors get 410 and no new link ever reuses them.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunnel_client.protocol.aio import Session

__all__ = ["SUBDOMAIN_ALPHABET", "SUBDOMAIN_LENGTH", "Registry", "Tunnel"]


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


SUBDOMAIN_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
SUBDOMAIN_LENGTH = 16
"""16 characters of 36 give log2(36**16) = 82.7 bits: unguessable, and DNS-safe."""

EXPIRED_MEMORY = 100_000
"""How many expired subdomains we remember for 410 pages."""


@dataclass(eq=False)
class Tunnel:
    """One link and, while its client is connected, the session that serves it."""

    subdomain: str
    url: str
    expires_at: float
    key_hash: str
    """SHA-256 of the client's secret: only that client may reconnect to the link."""
    client_ip: str
    token_id: str | None = None
    visitor_auth: str | None = field(default=None, repr=False)
    session: Session | None = None
    away_since: float | None = None
    """When the client dropped; None while connected."""
    rate_tokens: float = 0.0
    rate_checked: float = 0.0

    @property
    def connected(self) -> bool:
        return self.session is not None and self.session.ended is None


class Registry:
    """Live links by subdomain, plus recently expired ones."""

    def __init__(self) -> None:
        self._tunnels: dict[str, Tunnel] = {}
        self._expired: OrderedDict[str, float] = OrderedDict()
        # Links per address and per token, kept as counts so that a HELLO costs O(1)
        # however many links the relay holds.
        self._per_ip: Counter[str] = Counter()
        self._per_token: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._tunnels)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._tunnels.values()))

    def new_subdomain(self) -> str:
        """A fresh random subdomain no live or remembered link uses."""
        while True:
            sub = "".join(secrets.choice(SUBDOMAIN_ALPHABET) for _ in range(SUBDOMAIN_LENGTH))
            if sub not in self._tunnels and sub not in self._expired:
                return sub

    def get(self, subdomain: str) -> Tunnel | None:
        return self._tunnels.get(subdomain)

    def add(self, tunnel: Tunnel) -> None:
        old = self._tunnels.get(tunnel.subdomain)
        if old is not None:
            self.remove(old)
        self._tunnels[tunnel.subdomain] = tunnel
        self._per_ip[tunnel.client_ip] += 1
        if tunnel.token_id is not None:
            self._per_token[tunnel.token_id] += 1

    def remove(self, tunnel: Tunnel) -> None:
        if self._tunnels.get(tunnel.subdomain) is tunnel:
            del self._tunnels[tunnel.subdomain]
            _decrement(self._per_ip, tunnel.client_ip)
            if tunnel.token_id is not None:
                _decrement(self._per_token, tunnel.token_id)

    def expire(self, tunnel: Tunnel) -> None:
        """Forget a link for good; visitors get 410 from now on."""
        self.remove(tunnel)
        self.mark_expired(tunnel.subdomain, tunnel.expires_at)

    def mark_expired(self, subdomain: str, expired_at: float) -> None:
        self._expired[subdomain] = expired_at
        self._expired.move_to_end(subdomain)
        while len(self._expired) > EXPIRED_MEMORY:
            self._expired.popitem(last=False)

    def expired_at(self, subdomain: str) -> float | None:
        return self._expired.get(subdomain)

    def count_by_ip(self, client_ip: str) -> int:
        """Links (connected, or waiting for their client) held by one address."""
        return self._per_ip[client_ip]

    def count_by_token(self, token_id: str) -> int:
        """Links (connected, or waiting for their client) held by one token."""
        return self._per_token[token_id]

    def sweep(self, now: float | None = None, *, grace_s: float) -> list[Tunnel]:
        """Drop links whose client has been away longer than the grace; return them."""
        now = time.time() if now is None else now
        gone = [
            t
            for t in self._tunnels.values()
            if t.away_since is not None and now - t.away_since > grace_s
        ]
        for tunnel in gone:
            self.remove(tunnel)
        return gone
