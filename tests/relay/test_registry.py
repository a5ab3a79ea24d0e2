"""The registry: unguessable subdomains, per-address counts, grace and expiry."""

from __future__ import annotations

import math

from relay_server.registry import SUBDOMAIN_ALPHABET, SUBDOMAIN_LENGTH, Registry, Tunnel


def _tunnel(registry: Registry, ip: str = "10.0.0.1", token: str | None = None) -> Tunnel:
    sub = registry.new_subdomain()
    tunnel = Tunnel(sub, f"http://{sub}.x/", 1e12, "k", ip, token)
    registry.add(tunnel)
    return tunnel


def test_subdomains_carry_at_least_80_bits_and_are_dns_safe() -> None:
    assert SUBDOMAIN_LENGTH * math.log2(len(SUBDOMAIN_ALPHABET)) >= 80
    registry = Registry()
    subs = {registry.new_subdomain() for _ in range(2000)}
    assert len(subs) == 2000
    assert all(len(s) == SUBDOMAIN_LENGTH and s.isalnum() and s == s.lower() for s in subs)


def test_links_are_counted_per_address_and_token_until_removed() -> None:
    registry = Registry()
    a = _tunnel(registry, "10.0.0.1", "t1")
    _tunnel(registry, "10.0.0.1")
    _tunnel(registry, "10.0.0.2", "t1")
    assert registry.count_by_ip("10.0.0.1") == 2
    assert registry.count_by_token("t1") == 2
    registry.remove(a)
    registry.remove(a)  # twice is harmless
    assert registry.count_by_ip("10.0.0.1") == 1
    assert registry.count_by_token("t1") == 1
    assert len(registry) == 2


def test_away_links_are_swept_after_the_grace_and_expired_ones_remembered() -> None:
    registry = Registry()
    away = _tunnel(registry)
    away.away_since = 100.0
    kept = _tunnel(registry)
    kept.away_since = 190.0
    assert registry.sweep(200.0, grace_s=50) == [away]
    assert registry.get(away.subdomain) is None and registry.get(kept.subdomain) is kept
    registry.expire(kept)
    assert registry.expired_at(kept.subdomain) == kept.expires_at
    assert registry.count_by_ip(kept.client_ip) == 0
