"""Cluster directories of several nodes in one process, over a real mosquitto.

No relay around them: stand-in sessions, as in tests/relay/test_directory.py, so the
broker loop (connect, will, sync, reconnect) and the records are what is tested.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable

import pytest

from relay_server.cluster.broker import Broker as BrokerLoop
from relay_server.cluster.directory import Identity, MqttDirectory, RemoteLink
from relay_server.cluster.records import Topics
from relay_server.directory import Claim, Limits, LinkState
from relay_server.leases import Lease
from tests.cluster.conftest import Broker
from tests.relay.test_directory import StandInSession
from tunnel_client.protocol.errors import GoAwayCode, HandshakeRefused

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]

SECRET = secrets.token_bytes(32)


class Node:
    def __init__(self, broker: Broker, node_id: str) -> None:
        self.directory = MqttDirectory(
            Limits(ttl_s=3600, reconnect_grace_s=600, tunnels_per_ip=5, tunnels_per_token=5),
            lambda sub: f"http://{sub}.example/",
            identity=Identity(node_id, secrets.token_hex(4), "", f"http://{node_id}:1"),
            secret=SECRET,
            topics=Topics("in-process"),
        )
        self.loop = BrokerLoop(
            self.directory, broker.url, username=None, password=None, ca_file=None, keepalive_s=2
        )
        self.loop.start()

    def live(self) -> tuple[Claim, StandInSession]:
        claim = self.directory.claim_new(
            client_ip="10.0.0.1", token_id=None, key_hash="k", ttl_s=None
        )
        session = StandInSession()
        self.directory.welcome(claim, session, visitor_auth=None)  # type: ignore[arg-type]
        return claim, session


async def until(condition: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def nodes(broker: Broker) -> AsyncIterator[Callable[[str], Node]]:
    started: list[Node] = []

    def start(node_id: str) -> Node:
        started.append(Node(broker, node_id))
        return started[-1]

    yield start
    for node in started:
        await node.loop.stop()
        node.directory.close()


async def test_a_revocation_holds_cluster_wide_and_for_nodes_that_come_later(
    nodes: Callable[[str], Node],
) -> None:
    a, b = nodes("a"), nodes("b")
    await until(lambda: a.directory.synced and b.directory.synced)
    claim, session = a.live()
    sub = claim.link.subdomain
    await until(lambda: isinstance(b.directory.get(sub), RemoteLink))
    assert b.directory.revoke(sub, "abuse")
    await until(lambda: session.closed_with is GoAwayCode.AUTH_FAILED)
    assert claim.link.state is LinkState.REVOKED
    late = nodes("c")
    await until(lambda: late.directory.synced)
    assert late.directory.ended(sub) == (LinkState.REVOKED, claim.link.expires_at)
    with pytest.raises(HandshakeRefused):
        late.directory.claim_lease(Lease(sub, time.time() + 60, "k", None), client_ip="x")


async def test_a_node_that_leaves_is_forgotten_and_one_that_moves_a_link_wins(
    nodes: Callable[[str], Node],
) -> None:
    a, b = nodes("a"), nodes("b")
    await until(lambda: a.directory.synced and b.directory.synced)
    claim, session = a.live()
    sub = claim.link.subdomain
    await until(lambda: isinstance(b.directory.get(sub), RemoteLink))
    # The client comes back through b (its lease is good on every node): b's claim is newer.
    moved = b.directory.claim_lease(
        Lease(sub, claim.link.expires_at, "k", None), client_ip="10.0.0.1"
    )
    b.directory.welcome(moved, StandInSession(), visitor_auth=None)  # type: ignore[arg-type]
    await until(lambda: session.closed_with is GoAwayCode.REPLACED)
    await until(lambda: getattr(a.directory.get(sub), "node", None) == "b")
    # b says goodbye: a forgets its links at once.
    await b.loop.stop()
    await until(lambda: a.directory.get(sub) is None)


async def test_the_view_comes_back_after_the_broker_does(
    broker: Broker, nodes: Callable[[str], Node]
) -> None:
    a, b = nodes("a"), nodes("b")
    await until(lambda: a.directory.synced and b.directory.synced)
    claim, _ = a.live()
    sub = claim.link.subdomain
    await until(lambda: isinstance(b.directory.get(sub), RemoteLink))
    broker.kill()
    await until(lambda: not b.directory.synced)
    unlocated = b.directory.get(sub)
    assert isinstance(unlocated, RemoteLink) and unlocated.node is None
    assert a.directory.get(sub) is claim.link, "local links never wait on the broker"
    broker.start()  # without persistence: every retained record is gone
    await until(lambda: getattr(b.directory.get(sub), "node", None) == "a", timeout=30)
