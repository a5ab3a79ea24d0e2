"""Leases give a link back to its own client only, and only until it expires."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from pathlib import Path

import pytest

from relay_server.leases import Lease, LeaseSigner, hash_secret
from tests.processes import RelayProcess, run_relay
from tunnel_client.connection import (
    AuthRejected,
    LinkExpired,
    RelayTarget,
    open_tunnel,
)
from tunnel_client.protocol.handshake import Hello, Welcome
from tunnel_client.protocol.window import MIN_WINDOW
from tunnel_client.relay_socket import RelaySocket

pytestmark = pytest.mark.integration


def _hello(secret: str, lease: str | None = None) -> Hello:
    return Hello(window=MIN_WINDOW, max_streams=8, client_secret=secret, lease=lease)


async def _connect(relay: RelayProcess, hello: Hello) -> tuple[RelaySocket, Welcome]:
    return await open_tunnel(RelayTarget(f"{relay.url}/_tunnel"), hello, timeout_s=10)


async def _first_link(relay: RelayProcess, secret: str) -> Welcome:
    transport, welcome = await _connect(relay, _hello(secret))
    await transport.close()  # the client drops: its link waits for it to come back
    return welcome


def _forge(lease: str, **changes: object) -> str:
    payload_b64, signature = lease.split(".")
    payload = json.loads(base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4)))
    payload.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"{forged}.{signature}"


async def test_only_the_client_holding_the_secret_gets_its_link_back() -> None:
    with run_relay() as relay:
        secret = secrets.token_urlsafe(32)
        first = await _first_link(relay, secret)
        # Another client replaying the lease (copied from a log, say) is refused.
        with pytest.raises(AuthRejected, match="another client"):
            await _connect(relay, _hello(secrets.token_urlsafe(32), first.lease))
        # The owner comes back to the same link.
        transport, again = await _connect(relay, _hello(secret, first.lease))
        await transport.close()
        assert again.resumed and again.subdomain == first.subdomain and again.url == first.url


async def test_forged_leases_are_refused(tmp_path: Path) -> None:
    with run_relay() as relay:
        secret = secrets.token_urlsafe(32)
        first = await _first_link(relay, secret)
        other = await _first_link(relay, secrets.token_urlsafe(32))
        # A lease edited to name another link, or to live longer, no longer verifies.
        for forged in (
            _forge(first.lease, s=other.subdomain),
            _forge(first.lease, e=first.expires_at + 86400),
            "garbage",
            first.lease + "x",
        ):
            with pytest.raises(AuthRejected, match=r"not issued by this relay|malformed"):
                await _connect(relay, _hello(secret, forged))
        # A well-formed lease signed by some other key is refused too.
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        stranger = LeaseSigner(Ed25519PrivateKey.generate()).issue(
            Lease(other.subdomain, time.time() + 3600, hash_secret(secret))
        )
        with pytest.raises(AuthRejected, match="not issued by this relay"):
            await _connect(relay, _hello(secret, stranger))


@pytest.mark.timeout(60)
async def test_an_expired_lease_is_refused_and_its_link_never_returns() -> None:
    with run_relay("--ttl", "2s") as relay:
        secret = secrets.token_urlsafe(32)
        first = await _first_link(relay, secret)
        await asyncio.sleep(max(0.0, first.expires_at - time.time()) + 0.5)
        with pytest.raises(LinkExpired, match="expired"):
            await _connect(relay, _hello(secret, first.lease))
        # New links never reuse an expired subdomain (82 random bits, and the relay
        # remembers expired ones).
        fresh = await _first_link(relay, secret)
        assert fresh.subdomain != first.subdomain


def test_lease_signer_checks_signature_secret_and_clock() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from relay_server.errors import LeaseExpired, LeaseInvalid

    now = [1000.0]
    signer = LeaseSigner(Ed25519PrivateKey.generate(), clock=lambda: now[0])
    token = signer.issue(Lease("abc", 2000.0, hash_secret("s" * 20)))
    assert signer.verify(token, "s" * 20) == Lease("abc", 2000.0, hash_secret("s" * 20))
    with pytest.raises(LeaseInvalid, match="another client"):
        signer.verify(token, "t" * 20)
    now[0] = 2000.0
    with pytest.raises(LeaseExpired):
        signer.verify(token, "s" * 20)
