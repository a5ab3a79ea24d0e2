"""The cluster's link directory, fed records by hand: no broker, no sockets.

Another node is played by encoding its records with the shared secret and handing them
to :meth:`MqttDirectory.receive`, as the broker loop would.
"""

from __future__ import annotations

import json
import logging
import time

import pytest

from relay_server.cluster import directory as cluster_directory
from relay_server.cluster.directory import Identity, MqttDirectory, RemoteLink
from relay_server.cluster.records import (
    EndedRecord,
    Kind,
    LinkRecord,
    NodeRecord,
    Record,
    Topics,
    decode,
    encode,
)
from relay_server.directory import Claim, Limits, LinkState
from relay_server.leases import Lease
from relay_server.routing import LocalLink, PeerLink, Router, Unknown
from tests.relay.test_directory import StandInSession, until
from tunnel_client.protocol.errors import GoAwayCode, HandshakeRefused
from tunnel_client.protocol.events import SessionEnded

pytestmark = pytest.mark.timeout(10)

SECRET = b"cluster-secret-for-tests-0123456789"
TOPICS = Topics("example")
ME = "relay-1"
OTHER = "relay-2"


class StandInPeers:
    def __init__(self) -> None:
        self.online: dict[str, str] = {}
        self.sessions: dict[str, object] = {}

    def session(self, node_id: str) -> object | None:
        return self.sessions.get(node_id)

    def node_online(self, node_id: str, peer_url: str) -> None:
        self.online[node_id] = peer_url
        self.sessions.setdefault(node_id, StandInSession())

    def node_offline(self, node_id: str) -> None:
        self.online.pop(node_id, None)
        self.sessions.pop(node_id, None)


def make(peers: StandInPeers | None = None) -> MqttDirectory:
    d = MqttDirectory(
        Limits(ttl_s=3600, reconnect_grace_s=600, tunnels_per_ip=5, tunnels_per_token=5),
        lambda sub: f"http://{sub}.example/",
        identity=Identity(ME, "inc-1", "", "http://127.0.0.1:1"),
        secret=SECRET,
        topics=TOPICS,
        peers=peers,  # type: ignore[arg-type]
    )
    d.broker_connected("conn-1")
    return d


def sync(d: MqttDirectory) -> None:
    d.receive(TOPICS.sync(ME), d.identity.conn.encode())


def publish(d: MqttDirectory, topic: str, record: Record, secret: bytes = SECRET) -> None:
    d.receive(topic, encode(secret, topic, record))


def other_online(d: MqttDirectory, conn: str = "c2", incarnation: str = "inc-2") -> None:
    record = NodeRecord(OTHER, incarnation, conn, "http://127.0.0.1:2", "online", time.time())
    publish(d, TOPICS.node(OTHER), record)


def their_link(sub: str, *, claimed_at: float, state: str = "live") -> LinkRecord:
    return LinkRecord(
        sub, OTHER, "inc-2", "http://127.0.0.1:2", state, time.time() + 3600, "k", None, claimed_at
    )


def live(d: MqttDirectory) -> tuple[Claim, StandInSession]:
    claim = d.claim_new(client_ip="10.0.0.1", token_id=None, key_hash="k", ttl_s=None)
    session = StandInSession()
    d.welcome(claim, session, visitor_auth=None)  # type: ignore[arg-type]
    return claim, session


def sent(d: MqttDirectory, topic: str) -> Record | None:
    """What the outbox will publish on a topic (None: a clear)."""
    pending = {t: p for t, p, _ in d.outbox.pending()}
    payload = pending[topic]
    if not payload:
        return None
    parsed = TOPICS.parse(topic)
    assert parsed is not None
    return decode(SECRET, topic, parsed[0], payload)


async def test_a_welcomed_link_is_announced_live_then_away_then_cleared() -> None:
    d = make()
    claim, session = live(d)
    sub = claim.link.subdomain
    record = sent(d, TOPICS.link(sub))
    assert isinstance(record, LinkRecord)
    assert (record.node, record.state, record.incarnation) == (ME, "live", "inc-1")
    assert record.expires_at == claim.link.expires_at and record.key_hash == "k"
    session.ended = SessionEnded(GoAwayCode.INTERNAL_ERROR, "lost", by_peer=False)
    d.release(claim)
    record = sent(d, TOPICS.link(sub))
    assert isinstance(record, LinkRecord) and record.state == "away"
    d._move(claim.link, cluster_directory.LinkEvent.GRACE_OVER)
    assert sent(d, TOPICS.link(sub)) is None


async def test_a_handshake_that_never_finishes_announces_nothing() -> None:
    d = make()
    claim = d.claim_new(client_ip="10.0.0.1", token_id=None, key_hash="k", ttl_s=None)
    d.release(claim)
    assert d.outbox.pending() == []


async def test_links_on_other_nodes_route_through_the_hop_to_them() -> None:
    peers = StandInPeers()
    d = make(peers)
    other_online(d)
    publish(d, TOPICS.link("theirs"), their_link("theirs", claimed_at=1.0))
    sync(d)
    link = d.get("theirs")
    assert isinstance(link, RemoteLink) and link.node == OTHER
    assert link.session is peers.sessions[OTHER]
    assert peers.online == {OTHER: "http://127.0.0.1:2"}
    route = Router(d).where("theirs")
    assert isinstance(route, PeerLink) and route.session is peers.sessions[OTHER]
    # An away link elsewhere answers 503 here: no session.
    publish(d, TOPICS.link("theirs"), their_link("theirs", claimed_at=1.0, state="away"))
    assert d.get("theirs") is not None and d.get("theirs").session is None  # type: ignore[union-attr]


async def test_a_link_of_a_node_not_online_is_unknown() -> None:
    d = make(StandInPeers())
    publish(d, TOPICS.link("theirs"), their_link("theirs", claimed_at=1.0))
    sync(d)
    assert d.get("theirs") is None
    other_online(d, incarnation="a-later-life")
    assert d.get("theirs") is None, "a record of the node's previous life routes nowhere"


async def test_until_the_view_is_complete_links_elsewhere_are_unlocated() -> None:
    d = make(StandInPeers())
    claim, _ = live(d)
    unlocated = d.get("somewhere")
    assert isinstance(unlocated, RemoteLink) and unlocated.session is None
    assert Router(d).where("somewhere") == Unknown(None, located=False)
    assert isinstance(Router(d).where(claim.link.subdomain), LocalLink), "local answers at once"
    d.receive(TOPICS.sync(ME), b"someone-elses-marker")
    assert isinstance(d.get("somewhere"), RemoteLink)
    sync(d)
    assert d.get("somewhere") is None
    assert Router(d).where("somewhere") == Unknown(None, located=True)
    d.broker_lost()
    assert isinstance(d.get("somewhere"), RemoteLink)


async def test_forged_records_are_ignored_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    peers = StandInPeers()
    d = make(peers)
    other_online(d)
    publish(d, TOPICS.link("theirs"), their_link("theirs", claimed_at=1.0))
    sync(d)
    evil = LinkRecord(
        "theirs", "evil", "x", "http://evil:1", "live", time.time() + 60, "k", None, 9e9
    )
    with caplog.at_level(logging.WARNING, logger="relay_server.cluster.directory"):
        publish(d, TOPICS.link("theirs"), evil, secret=b"not-the-secret")
        d.receive(TOPICS.link("theirs"), json.dumps({"node": "evil"}).encode())
        forged_node = NodeRecord("evil", "x", "y", "http://evil:1", "online", 1.0)
        publish(d, TOPICS.node("evil"), forged_node, secret=b"nope")
    assert "not ours" in caplog.text and "bad signature" in caplog.text
    link = d.get("theirs")
    assert isinstance(link, RemoteLink) and link.node == OTHER
    assert "evil" not in peers.online
    # A genuine record on the wrong topic is refused too.
    publish(d, TOPICS.link("other-sub"), their_link("theirs", claimed_at=2.0))
    assert d.get("other-sub") is None


async def test_a_newer_claim_elsewhere_takes_the_link_over() -> None:
    d = make(StandInPeers())
    other_online(d)
    sync(d)
    claim, session = live(d)
    sub = claim.link.subdomain
    publish(d, TOPICS.link(sub), their_link(sub, claimed_at=time.time() + 1))
    assert session.closed_with is GoAwayCode.REPLACED
    assert claim.link.state is LinkState.GONE
    link = d.get(sub)
    assert isinstance(link, RemoteLink) and link.node == OTHER
    d.release(claim)  # the endpoint's finally: nothing more happens
    assert d.outbox.pending() == [], "nothing may overwrite the newer claim's record"


async def test_an_older_claim_elsewhere_is_answered_by_announcing_again() -> None:
    d = make(StandInPeers())
    other_online(d)
    sync(d)
    claim, session = live(d)
    sub = claim.link.subdomain
    topic = TOPICS.link(sub)
    d.outbox.sent(topic, d.outbox.pending()[0][1])
    assert d.outbox.pending() == []
    publish(d, topic, their_link(sub, claimed_at=1.0))
    assert session.closed_with is None and d.get(sub) is claim.link
    record = sent(d, topic)
    assert isinstance(record, LinkRecord) and record.node == ME
    # Someone clearing the record of a link this node holds: it is put back too.
    d.outbox.sent(topic, d.outbox.pending()[0][1])
    d.receive(topic, b"")
    assert isinstance(sent(d, topic), LinkRecord)


async def test_a_dead_node_drops_out_with_its_links() -> None:
    peers = StandInPeers()
    d = make(peers)
    other_online(d, conn="c2")
    publish(d, TOPICS.link("theirs"), their_link("theirs", claimed_at=1.0))
    sync(d)
    # The late will of an earlier connection changes nothing.
    old_will = NodeRecord(OTHER, "inc-2", "c1", "http://127.0.0.1:2", "offline", 0.0)
    publish(d, TOPICS.node(OTHER), old_will)
    assert isinstance(d.get("theirs"), RemoteLink)
    will = NodeRecord(OTHER, "inc-2", "c2", "http://127.0.0.1:2", "offline", 0.0)
    publish(d, TOPICS.node(OTHER), will)
    assert d.get("theirs") is None
    assert OTHER not in peers.online
    # relay-1 < relay-2: this node is the janitor and clears the dead node's records.
    assert sent(d, TOPICS.link("theirs")) is None


async def test_revoking_a_link_held_elsewhere_tells_the_cluster() -> None:
    d = make(StandInPeers())
    other_online(d)
    publish(d, TOPICS.link("theirs"), their_link("theirs", claimed_at=1.0))
    sync(d)
    assert d.revoke("theirs", "abuse")
    assert not d.revoke("never-was", "abuse")
    record = sent(d, TOPICS.ended("theirs"))
    assert isinstance(record, EndedRecord) and (record.state, record.reason) == ("revoked", "abuse")
    assert d.get("theirs") is None
    assert d.ended("theirs") is not None and d.ended("theirs")[0] is LinkState.REVOKED  # type: ignore[index]
    lease = Lease("theirs", time.time() + 60, "k", None)
    with pytest.raises(HandshakeRefused) as refused:
        d.claim_lease(lease, client_ip="10.0.0.1")
    assert refused.value.code is GoAwayCode.AUTH_FAILED


async def test_a_revocation_from_another_node_takes_a_local_link_down() -> None:
    d = make(StandInPeers())
    sync(d)
    claim, session = live(d)
    sub = claim.link.subdomain
    revoked = EndedRecord(sub, "revoked", claim.link.expires_at, "abuse", OTHER, time.time())
    publish(d, TOPICS.ended(sub), revoked)
    assert session.closed_with is GoAwayCode.AUTH_FAILED
    assert claim.link.state is LinkState.REVOKED
    assert sent(d, TOPICS.link(sub)) is None
    assert TOPICS.ended(sub) not in {t for t, _, _ in d.outbox.pending()}, "no echo"


async def test_a_local_expiry_is_announced_cluster_wide() -> None:
    d = make(StandInPeers())
    claim = d.claim_new(client_ip="10.0.0.1", token_id=None, key_hash="k", ttl_s=0.05)
    d.welcome(claim, StandInSession(), visitor_auth=None)  # type: ignore[arg-type]
    await until(lambda: claim.link.state is LinkState.EXPIRED)
    record = sent(d, TOPICS.ended(claim.link.subdomain))
    assert isinstance(record, EndedRecord) and record.state == "expired"
    assert sent(d, TOPICS.link(claim.link.subdomain)) is None


async def test_after_a_reconnect_links_not_announced_again_are_503_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cluster_directory, "STALE_GRACE_S", 0.1)
    d = make(StandInPeers())
    other_online(d)
    publish(d, TOPICS.link("theirs"), their_link("theirs", claimed_at=1.0))
    sync(d)
    assert isinstance(d.get("theirs"), RemoteLink)
    d.broker_lost()
    d.broker_connected("conn-2")  # a broker that lost its retained messages
    sync(d)
    stale = d.get("theirs")
    assert isinstance(stale, RemoteLink) and stale.node is None, "503, not 404"
    await until(lambda: d.get("theirs") is None)
    # Announced again: routed again.
    other_online(d, conn="c3")
    publish(d, TOPICS.link("theirs"), their_link("theirs", claimed_at=1.0))
    link = d.get("theirs")
    assert isinstance(link, RemoteLink) and link.node == OTHER


async def test_a_reconnect_puts_back_everything_this_node_wants_retained() -> None:
    d = make()
    claim, _ = live(d)
    for topic, payload, _ in d.outbox.pending():
        d.outbox.sent(topic, payload)
    assert d.outbox.empty.is_set()
    d.broker_connected("conn-2")
    assert [t for t, _, _ in d.outbox.pending()] == [TOPICS.link(claim.link.subdomain)]


async def test_records_of_this_nodes_previous_life_are_cleared() -> None:
    d = make()
    old = LinkRecord("mine", ME, "inc-0", "http://x:1", "live", time.time() + 60, "k", None, 1.0)
    publish(d, TOPICS.link("mine"), old)
    assert sent(d, TOPICS.link("mine")) is None


def test_the_kinds_have_their_topics() -> None:
    assert TOPICS.parse(TOPICS.ended("a")) == (Kind.ENDED, "a")


async def test_an_away_claim_elsewhere_never_takes_a_connected_link() -> None:
    d = make(StandInPeers())
    other_online(d)
    sync(d)
    claim, session = live(d)
    sub = claim.link.subdomain
    publish(d, TOPICS.link(sub), their_link(sub, claimed_at=time.time() + 60, state="away"))
    assert session.closed_with is None and d.get(sub) is claim.link


async def test_a_claim_is_newer_than_any_seen_whatever_the_clocks_say() -> None:
    d = make(StandInPeers())
    other_online(d)
    sync(d)
    skewed = time.time() + 3600  # the other node's clock runs an hour ahead
    publish(d, TOPICS.link("moving"), their_link("moving", claimed_at=skewed, state="away"))
    claim = d.claim_lease(Lease("moving", time.time() + 60, "k", None), client_ip="10.0.0.1")
    session = StandInSession()
    d.welcome(claim, session, visitor_auth=None)  # type: ignore[arg-type]
    record = sent(d, TOPICS.link("moving"))
    assert isinstance(record, LinkRecord) and record.claimed_at > skewed
    # Its stale "live" record arriving late does not take the link back.
    publish(d, TOPICS.link("moving"), their_link("moving", claimed_at=skewed))
    assert session.closed_with is None and d.get("moving") is claim.link
