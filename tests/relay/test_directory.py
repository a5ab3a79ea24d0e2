"""The link directory: one state machine per link, its timers, and the counts it derives.

The sessions here are stand-ins with the two things the directory uses (``ended`` and
``close``); the real endpoint and sessions are exercised by tests/integration.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from relay_server.directory import (
    HOLDING,
    SUBDOMAIN_ALPHABET,
    SUBDOMAIN_LENGTH,
    TRANSITIONS,
    Claim,
    Limits,
    LinkEvent,
    LinkState,
    MemoryDirectory,
)
from relay_server.leases import Lease
from tunnel_client.protocol.errors import GoAwayCode, HandshakeRefused, InvalidState
from tunnel_client.protocol.events import SessionEnded

pytestmark = pytest.mark.timeout(10)


class StandInSession:
    def __init__(self) -> None:
        self.ended: SessionEnded | None = None
        self.closed_with: GoAwayCode | None = None

    def close(self, code: GoAwayCode = GoAwayCode.NORMAL, reason: str = "") -> None:
        self.closed_with = code
        self.ended = SessionEnded(code, reason, by_peer=False)


def directory(**limits: float) -> MemoryDirectory:
    base = {
        "ttl_s": 3600.0,
        "reconnect_grace_s": 600.0,
        "tunnels_per_ip": 3,
        "tunnels_per_token": 2,
    }
    base.update(limits)
    return MemoryDirectory(
        Limits(
            ttl_s=base["ttl_s"],
            reconnect_grace_s=base["reconnect_grace_s"],
            tunnels_per_ip=int(base["tunnels_per_ip"]),
            tunnels_per_token=int(base["tunnels_per_token"]),
        ),
        url_for=lambda sub: f"http://{sub}.localhost/",
    )


def live(
    d: MemoryDirectory, ip: str = "10.0.0.1", token: str | None = None
) -> tuple[Claim, StandInSession]:
    claim = d.claim_new(client_ip=ip, token_id=token, key_hash="k", ttl_s=None)
    session = StandInSession()
    d.welcome(claim, session, visitor_auth=None)  # type: ignore[arg-type]
    return claim, session


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_the_table_ends_every_holding_state_by_expiry_or_revocation() -> None:
    for state in HOLDING:
        assert TRANSITIONS[state][LinkEvent.EXPIRY] is LinkState.EXPIRED
        assert TRANSITIONS[state][LinkEvent.REVOKE] is LinkState.REVOKED
    for state in set(LinkState) - HOLDING:
        assert TRANSITIONS[state] == {}


async def test_subdomains_are_unguessable_and_distinct() -> None:
    d = directory(tunnels_per_ip=10_000)
    subs = {
        d.claim_new(client_ip="a", token_id=None, key_hash="k", ttl_s=None).link.subdomain
        for _ in range(2000)
    }
    assert len(subs) == 2000
    assert all(len(s) == SUBDOMAIN_LENGTH and set(s) <= set(SUBDOMAIN_ALPHABET) for s in subs)


async def test_a_handshake_that_never_finishes_frees_its_link_and_its_counts() -> None:
    d = directory()
    claim = d.claim_new(client_ip="10.0.0.1", token_id="t", key_hash="k", ttl_s=None)
    assert claim.link.state is LinkState.CLAIMED
    assert d.count_by_ip("10.0.0.1") == 1 and d.count_by_token("t") == 1
    d.release(claim)
    d.release(claim)  # twice is harmless
    assert d.get(claim.link.subdomain) is None
    assert d.ended(claim.link.subdomain) == (LinkState.GONE, claim.link.expires_at)
    assert d.count_by_ip("10.0.0.1") == 0 and d.count_by_token("t") == 0


async def test_a_dropped_client_is_away_then_gone_after_the_grace() -> None:
    d = directory(reconnect_grace_s=0.05)
    claim, session = live(d)
    link = claim.link
    assert link.state is LinkState.LIVE and link.session is session
    session.ended = SessionEnded(GoAwayCode.INTERNAL_ERROR, "connection lost", by_peer=False)
    d.release(claim)
    assert link.state is LinkState.AWAY and link.session is None
    assert d.count_by_ip("10.0.0.1") == 1
    await until(lambda: link.state is LinkState.GONE)
    assert d.get(link.subdomain) is None and d.count_by_ip("10.0.0.1") == 0


async def test_coming_back_within_the_grace_keeps_the_link_and_cancels_the_timer() -> None:
    d = directory(reconnect_grace_s=0.2)
    claim, session = live(d, token="t")
    session.ended = SessionEnded(GoAwayCode.KEEPALIVE_TIMEOUT, "silent", by_peer=False)
    d.release(claim)
    lease = Lease(claim.link.subdomain, claim.link.expires_at, "k", "t")
    again = d.claim_lease(lease, client_ip="10.0.0.2")
    d.welcome(again, StandInSession(), visitor_auth=None)  # type: ignore[arg-type]
    assert again.link is claim.link and claim.link.state is LinkState.LIVE
    assert "grace" not in claim.link.timers
    # The link moved address: the counts moved with it.
    assert d.count_by_ip("10.0.0.1") == 0 and d.count_by_ip("10.0.0.2") == 1
    assert d.count_by_token("t") == 1


async def test_the_owner_stopping_frees_the_link_at_once() -> None:
    d = directory()
    claim, session = live(d)
    session.ended = SessionEnded(GoAwayCode.NORMAL, "bye", by_peer=True)
    d.release(claim)
    assert claim.link.state is LinkState.GONE and d.count_by_ip("10.0.0.1") == 0


async def test_expiry_fires_from_the_directory_and_closes_the_session() -> None:
    d = directory(ttl_s=0.05)
    claim, session = live(d)
    await until(lambda: claim.link.state is LinkState.EXPIRED)
    assert session.closed_with is GoAwayCode.EXPIRED
    assert d.ended(claim.link.subdomain) == (LinkState.EXPIRED, claim.link.expires_at)
    d.release(claim)  # the endpoint's finally, after the fact: nothing changes
    assert d.count_by_ip("10.0.0.1") == 0
    with pytest.raises(HandshakeRefused) as refused:
        d.claim_lease(Lease(claim.link.subdomain, time.time() + 60, "k"), client_ip="x")
    assert refused.value.code is GoAwayCode.EXPIRED


async def test_a_gone_link_reads_as_expired_once_past_its_expiry() -> None:
    d = directory(ttl_s=0.05)
    claim = d.claim_new(client_ip="a", token_id=None, key_hash="k", ttl_s=None)
    d.release(claim)
    assert d.ended(claim.link.subdomain) is not None
    await until(lambda: d.ended(claim.link.subdomain)[0] is LinkState.EXPIRED)  # type: ignore[index]


async def test_a_gone_link_comes_back_from_its_lease() -> None:
    d = directory()
    claim = d.claim_new(client_ip="a", token_id=None, key_hash="k", ttl_s=None)
    d.release(claim)
    back = d.claim_lease(Lease(claim.link.subdomain, claim.link.expires_at, "k"), client_ip="a")
    assert back.resumed and d.get(claim.link.subdomain) is back.link
    assert d.ended(claim.link.subdomain) is None


async def test_a_newer_connection_takes_a_live_link_over() -> None:
    d = directory()
    claim, old = live(d)
    lease = Lease(claim.link.subdomain, claim.link.expires_at, "k")
    newer = d.claim_lease(lease, client_ip="10.0.0.1")
    assert claim.link.session is old  # nothing attached before WELCOME is out
    new_session = StandInSession()
    d.welcome(newer, new_session, visitor_auth=None)  # type: ignore[arg-type]
    assert old.closed_with is GoAwayCode.REPLACED and claim.link.session is new_session
    d.release(claim)  # the old connection's finally: the link is not its any more
    assert claim.link.state is LinkState.LIVE and claim.link.session is new_session


async def test_limits_per_address_and_per_token() -> None:
    d = directory(tunnels_per_ip=2, tunnels_per_token=1)
    live(d, ip="a")
    live(d, ip="a")
    with pytest.raises(HandshakeRefused, match="address already holds 2") as refused:
        d.claim_new(client_ip="a", token_id=None, key_hash="k", ttl_s=None)
    assert refused.value.code is GoAwayCode.LIMIT_EXCEEDED
    live(d, ip="b", token="t")
    with pytest.raises(HandshakeRefused, match="token already holds 1"):
        d.claim_new(client_ip="c", token_id="t", key_hash="k", ttl_s=None)


async def test_a_lease_keeps_counting_against_its_token_after_a_restart() -> None:
    d = directory(tunnels_per_token=1)  # a fresh directory: the relay restarted
    d.claim_lease(Lease("abc", time.time() + 60, "k", "t"), client_ip="a")
    with pytest.raises(HandshakeRefused, match="token already holds 1"):
        d.claim_new(client_ip="b", token_id="t", key_hash="k", ttl_s=None)


async def test_another_clients_lease_and_revoked_links_are_refused() -> None:
    d = directory()
    claim, session = live(d)
    with pytest.raises(HandshakeRefused, match="another client"):
        d.claim_lease(Lease(claim.link.subdomain, claim.link.expires_at, "other"), client_ip="a")
    assert d.revoke(claim.link.subdomain, "abuse")
    assert session.closed_with is GoAwayCode.AUTH_FAILED
    assert d.ended(claim.link.subdomain)[0] is LinkState.REVOKED  # type: ignore[index]
    with pytest.raises(HandshakeRefused, match="taken down") as refused:
        d.claim_lease(Lease(claim.link.subdomain, claim.link.expires_at, "k"), client_ip="a")
    assert refused.value.code is GoAwayCode.AUTH_FAILED
    assert not d.revoke("nosuchlink", "x")


async def test_an_illegal_transition_is_our_bug() -> None:
    d = directory()
    claim = d.claim_new(client_ip="a", token_id=None, key_hash="k", ttl_s=None)
    with pytest.raises(InvalidState):
        d._move(claim.link, LinkEvent.GRACE_OVER)


async def test_a_new_link_evicts_the_longest_away_link_of_a_full_address() -> None:
    d = directory(tunnels_per_ip=2)
    first, first_session = live(d, ip="nat")
    second, second_session = live(d, ip="nat")
    for claim, session in ((first, first_session), (second, second_session)):
        session.ended = SessionEnded(GoAwayCode.INTERNAL_ERROR, "connection lost", by_peer=False)
        d.release(claim)
    third = d.claim_new(client_ip="nat", token_id=None, key_hash="k", ttl_s=None)
    assert first.link.state is LinkState.GONE  # away the longest: its slot goes first
    assert second.link.state is LinkState.AWAY and d.count_by_ip("nat") == 2
    # The evicted client loses nothing: its lease brings the link back.
    back = d.claim_lease(Lease(first.link.subdomain, first.link.expires_at, "k"), client_ip="nat")
    assert back.link.subdomain == first.link.subdomain
    assert third.link.state is LinkState.CLAIMED


async def test_live_links_are_never_evicted() -> None:
    d = directory(tunnels_per_ip=1, tunnels_per_token=1)
    live(d, ip="a", token="t")
    with pytest.raises(HandshakeRefused):
        d.claim_new(client_ip="a", token_id=None, key_hash="k", ttl_s=None)
    with pytest.raises(HandshakeRefused):
        d.claim_new(client_ip="b", token_id="t", key_hash="k", ttl_s=None)


async def test_revoked_subdomains_outlive_the_memory_of_ended_links(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import relay_server.directory as directory_module

    monkeypatch.setattr(directory_module, "ENDED_MEMORY", 3)
    d = directory()
    claim, _ = live(d)
    sub = claim.link.subdomain
    assert d.revoke(sub, "abuse")
    d.note_revoked("a" * SUBDOMAIN_LENGTH, time.time() + 60)  # loaded from revoked.jsonl
    for _ in range(5):  # more ended links than the memory holds
        other, session = live(d)
        session.ended = SessionEnded(GoAwayCode.NORMAL, "", by_peer=True)  # owner stopped
        d.release(other)
        assert d.ended(other.link.subdomain) is not None
    for revoked in (sub, "a" * SUBDOMAIN_LENGTH):
        assert d.ended(revoked) is not None
        assert d.ended(revoked)[0] is LinkState.REVOKED  # type: ignore[index]
        with pytest.raises(HandshakeRefused, match="taken down") as refused:
            d.claim_lease(Lease(revoked, time.time() + 60, "k"), client_ip="10.0.0.9")
        assert refused.value.code is GoAwayCode.AUTH_FAILED


async def test_note_revoked_refuses_a_held_link_and_forgets_expired_ones() -> None:
    d = directory()
    claim, _ = live(d)
    with pytest.raises(InvalidState):
        d.note_revoked(claim.link.subdomain, time.time() + 60)
    d.note_revoked("b" * SUBDOMAIN_LENGTH, time.time() - 1)
    d.note_revoked("c" * SUBDOMAIN_LENGTH, time.time() + 60)  # prunes the expired one
    assert "b" * SUBDOMAIN_LENGTH not in d._revoked
    assert "c" * SUBDOMAIN_LENGTH in d._revoked


async def test_watchers_hear_every_transition_and_cannot_break_one() -> None:
    d = directory()
    heard: list[tuple[str, str, str]] = []
    d.watch(lambda link, old, event: heard.append((old.value, link.state.value, event.value)))

    def broken(*args: object) -> None:
        raise RuntimeError("a watcher's bug")

    d.watch(broken)
    claim, _ = live(d)
    d.release(claim)
    d.revoke(claim.link.subdomain, "abuse")
    assert heard == [
        ("claimed", "live", "welcomed"),
        ("live", "away", "left"),
        ("away", "revoked", "revoke"),
    ]
