"""The link directory of a cluster node: its own links, and what the broker says of the rest.

:class:`MqttDirectory` is a :class:`~relay_server.directory.MemoryDirectory` for the
links this node holds (one transition table, the same timers and counts), plus a view
of every other node's links built from the records of :mod:`.records`:

* Every transition of a local link is announced (:meth:`_changed`): welcomed and away
  links as a retained ``links/<sub>`` record, links that end as a cleared one, expired
  and revoked links as a retained ``ended/<sub>`` record as well.
* Records from other nodes fill the remote table. :meth:`get` answers for the whole
  cluster: a local :class:`Link`, or a :class:`RemoteLink` whose ``session`` is the
  hop to the node that holds it.
* Two claims on one link: a live one beats an away one, then the newer welcome wins
  (claim time, at least just after any claim the node had seen; then node id). The node
  with the losing claim lets go (MOVED: its session gets GOAWAY REPLACED); the node with
  the newer one answers any older record, or a cleared one, by announcing again.
* A node whose last will says "offline" drops out: its links are forgotten at once.
* Until the broker connection is up and this node has seen its own sync marker, no
  remote answer is trusted: a link not held here is *unlocated* (visitors get 503 at
  once), except links known to have expired or been revoked (410).

Nothing here does I/O: what to publish goes into an :class:`Outbox`, which the broker
loop (:mod:`.broker`) drains and re-sends whole after every reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from tunnel_client.protocol.aio import Session
from tunnel_client.protocol.errors import InvalidState

from ..directory import (
    ENDED_MEMORY,
    HOLDING,
    Limits,
    Link,
    LinkEvent,
    LinkState,
    MemoryDirectory,
)
from .records import (
    EndedRecord,
    Kind,
    LinkRecord,
    NodeRecord,
    RecordError,
    Topics,
    decode,
    encode,
)

__all__ = ["Identity", "MqttDirectory", "Outbox", "PeerSessions", "RemoteLink"]

logger = logging.getLogger(__name__)

ENDED_RETAIN_S = 24 * 3600.0
"""An ended record stays on the broker this long past the link's expiry (then 404, not 410)."""

FORGERY_LOG_INTERVAL_S = 10.0

STALE_GRACE_S = 15.0
"""After the broker comes back, how long links not announced again answer 503 (not 404):
other nodes reconnect with a backoff of up to 10 s."""


class PeerSessions(Protocol):
    """What the directory needs of the node-to-node hops (:class:`.peers.PeerPool`)."""

    def session(self, node_id: str) -> Session | None:
        """The live session to a node, or None while there is none."""

    def node_online(self, node_id: str, peer_url: str) -> None:
        """A node announced itself: keep a session to it."""

    def node_offline(self, node_id: str) -> None:
        """A node left: drop the session to it."""


@dataclass(frozen=True)
class Identity:
    """Who this node is."""

    node_id: str
    incarnation: str
    """Random per process start."""
    conn: str
    """Random per broker connection (the broker loop replaces it on reconnect)."""
    peer_url: str


@dataclass
class _Outgoing:
    payload: bytes
    expiry_s: float | None


class Outbox:
    """Retained messages this node wants on the broker, by topic, and those not yet sent.

    An empty payload clears a topic; it is forgotten once sent. Everything else stays,
    so that after a reconnect (a broker that restarted without its retained messages,
    say) :meth:`resend_all` puts it all back.
    """

    def __init__(self) -> None:
        self._wanted: dict[str, _Outgoing] = {}
        self._pending: OrderedDict[str, _Outgoing] = OrderedDict()
        self.wake = asyncio.Event()
        """Set while something is pending."""
        self.empty = asyncio.Event()
        """Set while nothing is pending."""
        self.empty.set()

    def put(self, topic: str, payload: bytes, *, expiry_s: float | None = None) -> None:
        item = _Outgoing(payload, expiry_s)
        if payload:
            self._wanted[topic] = item
        else:
            self._wanted.pop(topic, None)
        self._pending[topic] = item
        self._pending.move_to_end(topic)
        self.wake.set()
        self.empty.clear()

    def wanted(self, topic: str) -> bytes | None:
        item = self._wanted.get(topic)
        return None if item is None else item.payload

    def forget(self, topic: str) -> None:
        """Stop re-sending a topic (an ended record whose time is over)."""
        self._wanted.pop(topic, None)

    def drop(self, topic: str) -> None:
        """Send nothing more on a topic (another node's record stands there now)."""
        self._wanted.pop(topic, None)
        if self._pending.pop(topic, None) is not None and not self._pending:
            self.wake.clear()
            self.empty.set()

    def pending(self) -> list[tuple[str, bytes, float | None]]:
        """What is still to send, oldest first."""
        return [(t, i.payload, i.expiry_s) for t, i in self._pending.items()]

    def sent(self, topic: str, payload: bytes) -> None:
        """The broker took it (unless a newer payload for the topic is queued meanwhile)."""
        item = self._pending.get(topic)
        if item is not None and item.payload == payload:
            del self._pending[topic]
        if not self._pending:
            self.wake.clear()
            self.empty.set()

    def resend_all(self) -> None:
        for topic, item in self._wanted.items():
            self._pending.setdefault(topic, item)
        if self._pending:
            self.wake.set()
            self.empty.clear()

    def __len__(self) -> int:
        return len(self._pending)


class RemoteLink(Link):
    """A link another node holds, as that node announced it.

    Its :attr:`session` is the hop to that node (None while the hop is down or the link
    is away): the edge forwards a visitor's request on it exactly as on a local link's
    own session. Visitor passwords are checked by the node that holds the link.
    """

    def __init__(
        self,
        record: LinkRecord | None,
        subdomain: str,
        url: str,
        peers: PeerSessions | None,
    ) -> None:
        self.record = record
        self.node = None if record is None else record.node
        self._peers = peers
        super().__init__(
            subdomain,
            url,
            record.expires_at if record else 0.0,
            record.key_hash if record else "",
            "",
            record.token_id if record else None,
            state=LinkState.LIVE if record and record.state == "live" else LinkState.AWAY,
            bypass_hash=record.bypass_hash if record else None,
        )

    @property
    def session(self) -> Session | None:
        if self.node is None or self._peers is None or self.state is not LinkState.LIVE:
            return None
        return self._peers.session(self.node)

    @session.setter
    def session(self, value: Session | None) -> None:
        if value is not None:
            raise InvalidState("a remote link's session is the hop to its node")


@dataclass
class _Remote:
    record: LinkRecord
    view: RemoteLink
    generation: int


@dataclass
class _Node:
    record: NodeRecord
    generation: int


@dataclass
class _Forgeries:
    """Rate-limits the warnings about badly signed messages (a flood must not flood logs)."""

    count: int = 0
    logged_at: float = field(default=-FORGERY_LOG_INTERVAL_S)


class MqttDirectory(MemoryDirectory):
    """The directory of one node of a cluster (see the module docstring)."""

    def __init__(
        self,
        limits: Limits,
        url_for: Callable[[str], str],
        *,
        identity: Identity,
        secret: bytes,
        topics: Topics,
        peers: PeerSessions | None = None,
    ) -> None:
        super().__init__(limits, url_for)
        self.identity = identity
        self.secret = secret
        self.topics = topics
        self.peers = peers
        self.outbox = Outbox()
        self.synced = False
        """True once the broker is up and every retained record has arrived."""
        self._generation = 0
        self._remote: dict[str, _Remote] = {}
        self._nodes: dict[str, _Node] = {}
        self._claimed_at: dict[str, float] = {}
        """Local links announced as this node's, and when their client was welcomed."""
        self._cluster_ended: OrderedDict[str, tuple[LinkState, float]] = OrderedDict()
        self._forgeries = _Forgeries()
        self._stale_timer: asyncio.TimerHandle | None = None
        self._ever_synced = False
        self._duplicate_logged_at = -FORGERY_LOG_INTERVAL_S

    # -- answers for the whole cluster ---------------------------------------------------

    def get(self, subdomain: str) -> Link | None:
        """The link that holds ``subdomain``: here, on another node, or unlocated.

        An *unlocated* link (the broker is away, so this node cannot know) comes back as
        a :class:`RemoteLink` without a node: its session is None, and visitors get 503.
        """
        link = self._links.get(subdomain)
        if link is not None:
            return link
        if not self.synced:
            ended = self.ended(subdomain)
            if ended is not None and ended[0] in (LinkState.EXPIRED, LinkState.REVOKED):
                return None
            return RemoteLink(None, subdomain, self._url_for(subdomain), None)
        remote = self._remote.get(subdomain)
        if remote is None or not self._current(remote.record):
            return None
        if remote.record.expires_at <= time.time():
            return None  # ended() says 410
        if remote.generation < self._generation:
            # Announced before the broker came back, not confirmed since: 503 for now.
            return RemoteLink(None, subdomain, self._url_for(subdomain), None)
        return remote.view

    def local(self, subdomain: str) -> Link | None:
        """The link that holds ``subdomain`` on this node, if any."""
        return self._links.get(subdomain)

    def remote(self, subdomain: str) -> RemoteLink | None:
        """A link held by another node, as announced (whatever the broker's state)."""
        remote = self._remote.get(subdomain)
        return None if remote is None else remote.view

    def ended(self, subdomain: str) -> tuple[LinkState, float] | None:
        found = self._cluster_ended.get(subdomain)
        if found is not None:
            return found
        remote = self._remote.get(subdomain)
        if remote is not None and remote.record.expires_at <= time.time():
            return LinkState.EXPIRED, remote.record.expires_at
        return super().ended(subdomain)

    def nodes(self) -> dict[str, str]:
        """Online nodes (this one included) and their peer URLs."""
        return {
            node_id: node.record.peer_url
            for node_id, node in self._nodes.items()
            if node.record.state == "online"
        }

    def revoke(self, subdomain: str, reason: str) -> bool:
        """Take a link down cluster-wide, wherever it is held; also after restarts."""
        if subdomain in self._links:
            return super().revoke(subdomain, reason)
        remote = self._remote.pop(subdomain, None)
        if remote is None:
            return False
        self._publish_ended(subdomain, LinkState.REVOKED, remote.record.expires_at, reason)
        return True

    def close(self) -> None:
        super().close()
        if self._stale_timer is not None:
            self._stale_timer.cancel()

    # -- local transitions, announced ----------------------------------------------------

    def _changed(self, link: Link, old: LinkState, event: LinkEvent, reason: str = "") -> None:
        super()._changed(link, old, event, reason)
        sub, new = link.subdomain, link.state
        if event is LinkEvent.WELCOMED:
            # Newer than any claim this node has seen, whatever the clocks say.
            seen = self._remote.pop(sub, None)
            self._claimed_at[sub] = max(time.time(), seen.record.claimed_at + 1e-3 if seen else 0)
            self._announce(link)
            return
        if new in HOLDING:
            if sub in self._claimed_at:
                self._announce(link)  # LIVE -> AWAY
            return
        announced = self._claimed_at.pop(sub, None) is not None
        if event is LinkEvent.MOVED:
            self.outbox.drop(self.topics.link(sub))  # the newer claim's record stands
            return
        if announced:
            self.outbox.put(self.topics.link(sub), b"")
        if new in (LinkState.EXPIRED, LinkState.REVOKED) and sub not in self._cluster_ended:
            self._publish_ended(sub, new, link.expires_at, reason)

    def _announce(self, link: Link) -> None:
        identity = self.identity
        record = LinkRecord(
            subdomain=link.subdomain,
            node=identity.node_id,
            incarnation=identity.incarnation,
            peer_url=identity.peer_url,
            state="live" if link.state is LinkState.LIVE else "away",
            expires_at=link.expires_at,
            key_hash=link.key_hash,
            token_id=link.token_id,
            claimed_at=self._claimed_at[link.subdomain],
            bypass_hash=link.bypass_hash,
        )
        topic = self.topics.link(link.subdomain)
        self.outbox.put(topic, encode(self.secret, topic, record))

    def _publish_ended(self, sub: str, state: LinkState, expires_at: float, reason: str) -> None:
        now = time.time()
        record = EndedRecord(sub, state.value, expires_at, reason, self.identity.node_id, now)
        topic = self.topics.ended(sub)
        keep = max(60.0, expires_at - now + ENDED_RETAIN_S)
        self.outbox.put(topic, encode(self.secret, topic, record), expiry_s=keep)
        self._remember_cluster_ended(sub, state, expires_at)

    def _remember_cluster_ended(self, sub: str, state: LinkState, expires_at: float) -> None:
        self._cluster_ended[sub] = (state, expires_at)
        self._cluster_ended.move_to_end(sub)
        while len(self._cluster_ended) > ENDED_MEMORY:
            old, _ = self._cluster_ended.popitem(last=False)
            self.outbox.forget(self.topics.ended(old))

    # -- the broker's side ---------------------------------------------------------------

    def broker_connected(self, conn: str) -> None:
        """A (new) broker connection: what we knew is unconfirmed until the sync marker."""
        self.identity = Identity(
            self.identity.node_id, self.identity.incarnation, conn, self.identity.peer_url
        )
        self._generation += 1
        self.synced = False
        self.outbox.resend_all()

    def broker_lost(self) -> None:
        """The broker went away: remote answers can no longer be trusted."""
        self.synced = False

    def online_record(self) -> NodeRecord:
        """This node's "online" record (and, with state offline, its last will)."""
        identity = self.identity
        return NodeRecord(
            identity.node_id,
            identity.incarnation,
            identity.conn,
            identity.peer_url,
            "online",
            time.time(),
        )

    def node_payload(self, state: str) -> bytes:
        record = self.online_record()
        if state != "online":
            record = NodeRecord(
                record.node, record.incarnation, record.conn, record.peer_url, state, record.at
            )
        topic = self.topics.node(record.node)
        return encode(self.secret, topic, record)

    def receive(self, topic: str, payload: bytes) -> None:
        """Handle one message from the broker (any topic of this cluster)."""
        parsed = self.topics.parse(topic)
        if parsed is None:
            return
        kind, name = parsed
        if kind is Kind.SYNC:
            if name == self.identity.node_id and payload.decode(errors="replace") == (
                self.identity.conn
            ):
                self._synced()
            return
        if not payload:
            self._cleared(kind, name)
            return
        try:
            record = decode(self.secret, topic, kind, payload)
        except RecordError as exc:
            self._forged(topic, str(exc))
            return
        match record:
            case LinkRecord():
                if record.subdomain == name:
                    self._on_link(record)
                    return
            case EndedRecord():
                if record.subdomain == name:
                    self._on_ended(record)
                    return
            case NodeRecord():
                if record.node == name:
                    self._on_node(record)
                    return
        self._forged(topic, "the record names another topic")

    def _duplicate(self, incarnation: str) -> None:
        now = time.monotonic()
        if now - self._duplicate_logged_at >= FORGERY_LOG_INTERVAL_S:
            self._duplicate_logged_at = now
            logger.warning(
                "cluster: another process announces itself as node %s (%s): every node "
                "needs its own --node-id",
                self.identity.node_id,
                incarnation,
            )

    def _forged(self, topic: str, why: str) -> None:
        forgeries = self._forgeries
        forgeries.count += 1
        now = time.monotonic()
        if now - forgeries.logged_at >= FORGERY_LOG_INTERVAL_S:
            logger.warning(
                "ignoring a cluster message on %s that is not ours (%s; %d such so far): "
                "is something else publishing with a wrong secret?",
                topic,
                why,
                forgeries.count,
            )
            forgeries.logged_at = now

    def _synced(self) -> None:
        """Every retained record has arrived: the view is complete again.

        Records not seen again since the reconnect stay *stale* for
        :data:`STALE_GRACE_S` (their links answer 503, not 404): after a broker restart
        without persistence, the other nodes need a moment to reconnect and announce
        their links again. Whatever is still stale then is dropped.
        """
        generation = self._generation
        stale = sum(r.generation < generation for r in self._remote.values())
        if stale or any(n.generation < generation for n in self._nodes.values()):
            loop = asyncio.get_running_loop()
            if self._stale_timer is not None:
                self._stale_timer.cancel()
            self._stale_timer = loop.call_later(STALE_GRACE_S, self._drop_stale, generation)
        if not self.synced:
            logger.info(
                "cluster view complete: %d nodes online, %d links on other nodes (%d to confirm)",
                len(self.nodes()),
                len(self._remote),
                stale,
            )
        self.synced = self._ever_synced = True
        self._sweep_stale()

    def _drop_stale(self, generation: int) -> None:
        self._stale_timer = None
        for sub in [s for s, r in self._remote.items() if r.generation < generation]:
            del self._remote[sub]
        for node_id in [n for n, r in self._nodes.items() if r.generation < generation]:
            self._drop_node(node_id)

    def _current(self, record: LinkRecord) -> bool:
        """True if the record's node is online in the life that announced it."""
        node = self._nodes.get(record.node)
        return (
            node is not None
            and node.record.state == "online"
            and node.record.incarnation == record.incarnation
            and record.node != self.identity.node_id
        )

    def _on_link(self, record: LinkRecord) -> None:
        sub = record.subdomain
        if record.node == self.identity.node_id:
            if record.incarnation == self.identity.incarnation:
                return
            if not self._ever_synced and sub not in self._claimed_at:
                # A retained record of this node's previous life: nobody else clears it.
                self.outbox.put(self.topics.link(sub), b"")
            else:
                self._duplicate(record.incarnation)
            return
        local = self._links.get(sub)
        mine = self._claimed_at.get(sub)
        if local is not None and mine is not None:
            # A connected client beats one that is away; then the newer claim wins.
            theirs = (record.state == "live", record.claimed_at, record.node)
            ours = (local.state is LinkState.LIVE, mine, self.identity.node_id)
            if theirs > ours:
                logger.info("link %s: node %s holds a newer claim; letting go", sub, record.node)
                self._move(local, LinkEvent.MOVED)
            else:
                self._announce(local)  # ours is newer: say so again
                return
        if sub in self._cluster_ended:
            return
        url = self._url_for(sub)
        self._remote[sub] = _Remote(
            record, RemoteLink(record, sub, url, self.peers), self._generation
        )

    def _on_ended(self, record: EndedRecord) -> None:
        sub = record.subdomain
        try:
            state = LinkState(record.state)
        except ValueError:
            return
        if state not in (LinkState.EXPIRED, LinkState.REVOKED):
            return
        self._remember_cluster_ended(sub, state, record.expires_at)
        self._remote.pop(sub, None)
        local = self._links.get(sub)
        if local is None:
            return
        if state is LinkState.REVOKED:
            self._move(local, LinkEvent.REVOKE, record.reason)
        elif local.expires_at <= time.time():
            self._move(local, LinkEvent.EXPIRY)

    def _on_node(self, record: NodeRecord) -> None:
        if record.node == self.identity.node_id:
            if record.incarnation != self.identity.incarnation:
                if self._ever_synced and record.state == "online":
                    self._duplicate(record.incarnation)
                return
            if record.state == "online":
                self._nodes[record.node] = _Node(record, self._generation)
            return
        known = self._nodes.get(record.node)
        if record.state == "online":
            self._nodes[record.node] = _Node(record, self._generation)
            if known is None or known.record.conn != record.conn:
                logger.info("cluster: node %s is online at %s", record.node, record.peer_url)
            if self.peers is not None:
                self.peers.node_online(record.node, record.peer_url)
            return
        if known is not None and known.record.conn != record.conn:
            return  # the late will of an earlier connection: the node is back already
        self._drop_node(record.node, janitor=True)

    def _cleared(self, kind: Kind, name: str) -> None:
        if kind is Kind.LINK:
            local = self._links.get(name)
            if local is not None and name in self._claimed_at:
                self._announce(local)  # someone cleared a link this node holds: put it back
            self._remote.pop(name, None)
        elif kind is Kind.NODE and name != self.identity.node_id:
            self._drop_node(name, janitor=True)

    def _drop_node(self, node_id: str, *, janitor: bool = False) -> None:
        if node_id == self.identity.node_id:
            self._nodes.pop(node_id, None)
            return
        known = self._nodes.pop(node_id, None)
        gone = [sub for sub, r in self._remote.items() if r.record.node == node_id]
        for sub in gone:
            del self._remote[sub]
        if known is not None:
            logger.warning(
                "cluster: node %s went away; forgetting its %d links", node_id, len(gone)
            )
        if self.peers is not None:
            self.peers.node_offline(node_id)
        if janitor and self._is_janitor():
            for sub in gone:
                self.outbox.put(self.topics.link(sub), b"")

    def _is_janitor(self) -> bool:
        """One node (the lowest id online) clears the retained records of dead nodes."""
        online = [n for n, r in self._nodes.items() if r.record.state == "online"]
        return min([*online, self.identity.node_id]) == self.identity.node_id

    def _sweep_stale(self) -> None:
        """After a sync: clear retained records of nodes that are not online (janitor only)."""
        if not self._is_janitor():
            return
        for sub in [s for s, r in self._remote.items() if r.record.node not in self._nodes]:
            del self._remote[sub]
            self.outbox.put(self.topics.link(sub), b"")
