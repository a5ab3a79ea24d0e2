"""The link directory: every link's state, its timers, and the counts derived from them.

A link's life is one state machine, and this directory is its only owner. Handlers
never change a link themselves: the tunnel endpoint *claims* a link during the
handshake, tells the directory once WELCOME is on the wire (:meth:`welcome`), and
*releases* its claim on every way out (:meth:`release`, from a ``finally``). The
expiry and the reconnect grace are timers the directory keeps, so they fire whatever
happens to any handler (a cancelled one included)::

            welcomed              left
  CLAIMED ----------> LIVE ----------------> AWAY
     |                ^  |  <--------------   |
     | abandoned      |  |     welcomed       | grace over
     v   (never       +--+ ended (owner        v
   GONE  welcomed)   taken  stopped, or       GONE
                     over   broke the rules)

  An AWAY link is also *evicted* (to GONE) when a new link from its address or token
  needs its slot: a crashed client must not lock everyone behind its address (a whole
  NAT) out until its grace ends, and it loses nothing, since its lease brings the link
  back. CLAIMED, LIVE and AWAY all go to EXPIRED at the expiry time, and to REVOKED
  when an operator takes the link down. In a cluster they also go to GONE when the link
  *moved*: its client came back through another node, whose newer claim wins.
  GONE, EXPIRED and REVOKED are final for a Link object; the subdomain is remembered
  (boundedly) so visitors get 404 or 410, no new link reuses it, and a GONE link can
  come back from its lease until it expires.

Only CLAIMED, LIVE and AWAY links *hold* their subdomain; the per-address and
per-token counts are changed in :meth:`_move` alone, from that one fact, so they
cannot drift from the states. Revoked subdomains are remembered apart from the bounded
memory of ended ones, until their expiry: however many links end meanwhile, a revoked
link's lease stays refused (the relay reloads them at start with :meth:`note_revoked`).

Whoever needs to know about changes (metrics) registers with :meth:`LinkDirectory.watch`;
every implementation reports each transition through :meth:`LinkDirectory._changed`.

:class:`LinkDirectory` is the interface (the cluster gives it a second
implementation); :class:`MemoryDirectory` keeps everything in this process.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

from tunnel_client.protocol.aio import Session
from tunnel_client.protocol.errors import GoAwayCode, HandshakeRefused, InvalidState

from .leases import Lease

__all__ = [
    "SUBDOMAIN_ALPHABET",
    "SUBDOMAIN_LENGTH",
    "TRANSITIONS",
    "Claim",
    "Limits",
    "Link",
    "LinkDirectory",
    "LinkEvent",
    "LinkState",
    "Listener",
    "MemoryDirectory",
]

logger = logging.getLogger(__name__)

SUBDOMAIN_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
SUBDOMAIN_LENGTH = 16
"""16 characters of 36 give log2(36**16) = 82.7 bits: unguessable, and DNS-safe."""

ENDED_MEMORY = 100_000
"""How many ended subdomains are remembered for 404/410 pages (about 10 MB)."""


class LinkState(enum.Enum):
    """Where a link is in its life."""

    CLAIMED = "claimed"
    """A handshake for it is under way; no WELCOME has been sent yet."""
    LIVE = "live"
    """Its client is connected and serves visitors."""
    AWAY = "away"
    """Its client dropped; visitors get 503 until it comes back or the grace ends."""
    GONE = "gone"
    """Freed: its owner stopped, or stayed away too long (404; the lease may bring it back)."""
    EXPIRED = "expired"
    """Past its expiry time (410, for good)."""
    REVOKED = "revoked"
    """Taken down by the relay's operator (410, for good; its lease is refused)."""


class LinkEvent(enum.Enum):
    """What can happen to a link."""

    WELCOMED = "welcomed"
    LEFT = "left"
    ENDED = "ended"
    ABANDONED = "abandoned"
    GRACE_OVER = "grace over"
    EVICTED = "evicted"
    EXPIRY = "expiry"
    REVOKE = "revoke"
    MOVED = "moved"
    """(cluster) Another node holds a newer claim on the link: this node lets go."""


_S, _E = LinkState, LinkEvent
TRANSITIONS: dict[LinkState, dict[LinkEvent, LinkState]] = {
    _S.CLAIMED: {
        _E.WELCOMED: _S.LIVE,
        _E.ABANDONED: _S.GONE,
        _E.EXPIRY: _S.EXPIRED,
        _E.REVOKE: _S.REVOKED,
        _E.MOVED: _S.GONE,
    },
    _S.LIVE: {
        _E.WELCOMED: _S.LIVE,  # a newer connection took the link over
        _E.LEFT: _S.AWAY,
        _E.ENDED: _S.GONE,
        _E.EXPIRY: _S.EXPIRED,
        _E.REVOKE: _S.REVOKED,
        _E.MOVED: _S.GONE,
    },
    _S.AWAY: {
        _E.WELCOMED: _S.LIVE,
        _E.GRACE_OVER: _S.GONE,
        _E.EVICTED: _S.GONE,
        _E.EXPIRY: _S.EXPIRED,
        _E.REVOKE: _S.REVOKED,
        _E.MOVED: _S.GONE,
    },
    _S.GONE: {},
    _S.EXPIRED: {},
    _S.REVOKED: {},
}
"""Every legal transition; anything else raises :class:`InvalidState` (our bug)."""

HOLDING = frozenset({LinkState.CLAIMED, LinkState.LIVE, LinkState.AWAY})
"""States in which a link holds its subdomain and counts against its address and token."""


@dataclass(eq=False)
class Link:
    """One link; while its client is connected, the session that serves it."""

    subdomain: str
    url: str
    expires_at: float
    """Unix time."""
    key_hash: str
    """SHA-256 of the client's secret: only that client may reconnect to the link."""
    client_ip: str
    token_id: str | None = None
    created_at: float = field(default_factory=time.time)
    state: LinkState = LinkState.CLAIMED
    session: Session | None = None
    visitor_auth: str | None = field(default=None, repr=False)
    bypass_hash: str | None = field(default=None, repr=False)
    """SHA-256 (hex) of the owner's token that lets browsers skip the warning page."""
    rate_tokens: float = 0.0
    rate_checked: float = 0.0
    claims: int = 0
    """Handshakes under way for this link."""
    requests: int = 0
    """Visitor requests served for this link by this relay (for the admin API)."""
    timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict, repr=False)

    @property
    def connected(self) -> bool:
        return self.session is not None and self.session.ended is None


@dataclass(eq=False)
class Claim:
    """One handshake's hold on a link, from HELLO until the connection ends."""

    link: Link
    client_ip: str
    resumed: bool
    session: Session | None = None
    """Set once WELCOME is on the wire and the link is this connection's."""
    released: bool = False


@dataclass(frozen=True)
class Limits:
    """What the directory enforces when a new link is claimed."""

    ttl_s: float
    reconnect_grace_s: float
    tunnels_per_ip: int
    tunnels_per_token: int


Listener: TypeAlias = Callable[[Link, LinkState, LinkEvent], None]
"""Told of each transition: the link (already in its new state), its old state, the event."""


class LinkDirectory(abc.ABC):
    """Owns every link's state; nothing else changes it."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def watch(self, listener: Listener) -> None:
        """Call ``listener`` after every transition (never to change a link)."""
        self._listeners.append(listener)

    def _changed(self, link: Link, old: LinkState, event: LinkEvent, reason: str = "") -> None:
        """Called after every transition (with its side effects done): tells the watchers.

        The cluster directory also announces transitions from here (it calls this first).
        """
        for listener in self._listeners:
            try:
                listener(link, old, event)
            except Exception:  # a watcher's bug must not break a link's life
                logger.exception("link directory listener failed")

    @abc.abstractmethod
    def get(self, subdomain: str) -> Link | None:
        """The link that holds ``subdomain`` (claimed, live or away), if any."""

    @abc.abstractmethod
    def ended(self, subdomain: str) -> tuple[LinkState, float] | None:
        """For a subdomain no link holds: how its last link ended, and when it expires."""

    @abc.abstractmethod
    def claim_new(
        self, *, client_ip: str, token_id: str | None, key_hash: str, ttl_s: float | None
    ) -> Claim:
        """Reserve a fresh link.

        Raises:
            HandshakeRefused: LIMIT_EXCEEDED when the address or token holds enough links.
        """

    @abc.abstractmethod
    def claim_lease(self, lease: Lease, *, client_ip: str) -> Claim:
        """Reserve the link a verified lease names.

        Raises:
            HandshakeRefused: EXPIRED, or AUTH_FAILED (revoked, or another client's link).
        """

    @abc.abstractmethod
    def note_expired(self, subdomain: str, expires_at: float) -> None:
        """Remember a link known (from its lease) to have expired, for 410 pages."""

    @abc.abstractmethod
    def note_revoked(self, subdomain: str, expires_at: float) -> None:
        """Remember a subdomain no link holds as revoked until ``expires_at``: its lease is
        refused and visitors get 410 (revocations loaded at start, or of a GONE link)."""

    @abc.abstractmethod
    def welcome(
        self,
        claim: Claim,
        session: Session,
        *,
        visitor_auth: str | None,
        bypass_hash: str | None = None,
    ) -> None:
        """WELCOME is on the wire: the link is now served by ``session``.

        ``visitor_auth`` is the login visitors must give, ``bypass_hash`` the SHA-256 of
        the owner's token that skips the warning page of ``--interstitial``."""

    @abc.abstractmethod
    def release(self, claim: Claim) -> None:
        """The claim's connection ended, however it ended. Safe to call twice."""

    @abc.abstractmethod
    def revoke(self, subdomain: str, reason: str) -> bool:
        """Take a link down for good; False if no link holds the subdomain."""

    @abc.abstractmethod
    def links(self) -> list[Link]:
        """Every link that holds its subdomain."""

    @abc.abstractmethod
    def by_state(self) -> dict[str, int]:
        """How many links hold their subdomain, by state (claimed, live, away)."""

    @abc.abstractmethod
    def count_by_ip(self, client_ip: str) -> int:
        """Links held by one address."""

    @abc.abstractmethod
    def count_by_token(self, token_id: str) -> int:
        """Links held by one token."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop every timer (the relay is stopping)."""


class MemoryDirectory(LinkDirectory):
    """The directory of a single relay process."""

    def __init__(self, limits: Limits, url_for: Callable[[str], str]) -> None:
        super().__init__()
        self.limits = limits
        self._url_for = url_for
        self._links: dict[str, Link] = {}
        self._ended: OrderedDict[str, tuple[LinkState, float]] = OrderedDict()
        self._revoked: dict[str, float] = {}
        """Revoked subdomains and their expiry: never dropped from memory before it."""
        self._away: OrderedDict[str, Link] = OrderedDict()
        """AWAY links, the longest away first: the first to give up a slot."""
        # Counts kept in step with the states by _move, so a HELLO costs O(1).
        self._per_ip: Counter[str] = Counter()
        self._per_token: Counter[str] = Counter()

    # -- reading -------------------------------------------------------------------------

    def get(self, subdomain: str) -> Link | None:
        return self._links.get(subdomain)

    def ended(self, subdomain: str) -> tuple[LinkState, float] | None:
        revoked = self._revoked.get(subdomain)
        if revoked is not None:
            return LinkState.REVOKED, revoked
        found = self._ended.get(subdomain)
        if found is None:
            return None
        state, expires_at = found
        if state is LinkState.GONE and time.time() >= expires_at:
            return LinkState.EXPIRED, expires_at
        return found

    def links(self) -> list[Link]:
        return list(self._links.values())

    def count_by_ip(self, client_ip: str) -> int:
        return self._per_ip[client_ip]

    def count_by_token(self, token_id: str) -> int:
        return self._per_token[token_id]

    def by_state(self) -> dict[str, int]:
        counts = Counter(link.state.value for link in self._links.values())
        return {state.value: counts[state.value] for state in HOLDING}

    # -- claims --------------------------------------------------------------------------

    def claim_new(
        self, *, client_ip: str, token_id: str | None, key_hash: str, ttl_s: float | None
    ) -> Claim:
        limits = self.limits
        if self._per_ip[client_ip] >= limits.tunnels_per_ip and not self._evict(
            lambda link: link.client_ip == client_ip
        ):
            raise HandshakeRefused(
                GoAwayCode.LIMIT_EXCEEDED,
                f"this address already holds {_links(limits.tunnels_per_ip)}",
            )
        if (
            token_id is not None
            and self._per_token[token_id] >= limits.tunnels_per_token
            and not self._evict(lambda link: link.token_id == token_id)
        ):
            raise HandshakeRefused(
                GoAwayCode.LIMIT_EXCEEDED,
                f"this token already holds {_links(limits.tunnels_per_token)}",
            )
        ttl = limits.ttl_s if ttl_s is None else min(ttl_s, limits.ttl_s)
        sub = self._new_subdomain()
        link = Link(sub, self._url_for(sub), time.time() + ttl, key_hash, client_ip, token_id)
        self._add(link)
        return self._claim(link, client_ip, resumed=False)

    def claim_lease(self, lease: Lease, *, client_ip: str) -> Claim:
        sub = lease.subdomain
        link = self._links.get(sub)
        if link is None:
            ended = self.ended(sub)
            if ended is not None and ended[0] is LinkState.EXPIRED:
                raise HandshakeRefused(GoAwayCode.EXPIRED, f"the link {sub} has expired")
            if ended is not None and ended[0] is LinkState.REVOKED:
                raise HandshakeRefused(
                    GoAwayCode.AUTH_FAILED, f"the link {sub} was taken down by the relay"
                )
            # Not held here: the relay restarted, the client moved from another node, or
            # the link was freed after its grace. The lease brings it back until expiry.
            self._ended.pop(sub, None)
            link = Link(
                sub, self._url_for(sub), lease.expires_at, lease.key_hash, client_ip, lease.token_id
            )
            self._add(link)
        elif link.key_hash != lease.key_hash:
            raise HandshakeRefused(GoAwayCode.AUTH_FAILED, "the link belongs to another client")
        return self._claim(link, client_ip, resumed=True)

    def note_expired(self, subdomain: str, expires_at: float) -> None:
        link = self._links.get(subdomain)
        if link is not None:
            if link.expires_at <= time.time():
                self._move(link, LinkEvent.EXPIRY)
            return
        self._remember(subdomain, LinkState.EXPIRED, expires_at)

    def note_revoked(self, subdomain: str, expires_at: float) -> None:
        if subdomain in self._links:
            raise InvalidState(f"link {subdomain} is held: revoke() it")
        now = time.time()
        for sub in [s for s, until in self._revoked.items() if until <= now]:
            del self._revoked[sub]  # past expiry its lease is refused as expired anyway
        self._revoked[subdomain] = expires_at
        self._remember(subdomain, LinkState.REVOKED, expires_at)

    def welcome(
        self,
        claim: Claim,
        session: Session,
        *,
        visitor_auth: str | None,
        bypass_hash: str | None = None,
    ) -> None:
        link = claim.link
        if link.state not in HOLDING:
            # It expired or was revoked while the handshake ran: say so on the session.
            code = GoAwayCode.EXPIRED if link.state is LinkState.EXPIRED else GoAwayCode.NORMAL
            session.close(code, f"the link was {link.state.value} during the handshake")
            return
        old = link.session
        claim.session = session
        link.session = session
        link.visitor_auth = visitor_auth
        link.bypass_hash = bypass_hash
        self._move(link, LinkEvent.WELCOMED)
        if link.client_ip != claim.client_ip:
            self._count(link, -1)
            link.client_ip = claim.client_ip
            self._count(link, +1)
        if old is not None:
            old.close(GoAwayCode.REPLACED, "a newer connection took this link over")

    def release(self, claim: Claim) -> None:
        if claim.released:
            return
        claim.released = True
        link = claim.link
        link.claims -= 1
        if claim.session is None:  # the handshake never finished
            if link.state is LinkState.CLAIMED and link.claims == 0:
                self._move(link, LinkEvent.ABANDONED)
            return
        if link.session is not claim.session:
            return  # taken over by a newer connection, or the link already ended
        link.session = None
        ended = claim.session.ended
        owner_done = ended is not None and (
            (ended.by_peer and ended.code is GoAwayCode.NORMAL)
            # A client that broke the protocol is not waited for: its link goes now (its
            # lease could still bring it back), so broken connections cannot pile up links.
            or (not ended.by_peer and ended.code is GoAwayCode.PROTOCOL_ERROR)
        )
        self._move(link, LinkEvent.ENDED if owner_done else LinkEvent.LEFT)

    def revoke(self, subdomain: str, reason: str) -> bool:
        link = self._links.get(subdomain)
        if link is None:
            return False
        self._move(link, LinkEvent.REVOKE, reason)
        return True

    def close(self) -> None:
        for link in self._links.values():
            _cancel_timers(link)

    # -- the one place links change state -----------------------------------------------

    def _move(self, link: Link, event: LinkEvent, reason: str = "") -> None:
        try:
            new = TRANSITIONS[link.state][event]
        except KeyError:
            raise InvalidState(
                f"link {link.subdomain}: {event.value} in {link.state.value}"
            ) from None
        old, link.state = link.state, new
        if old is not new:
            logger.info("link %s: %s -> %s (%s)", link.subdomain, old.value, new.value, event.value)
        grace = link.timers.pop("grace", None)
        if grace is not None:
            grace.cancel()
        self._away.pop(link.subdomain, None)
        if new is LinkState.AWAY:
            self._away[link.subdomain] = link
            link.timers["grace"] = asyncio.get_running_loop().call_later(
                self.limits.reconnect_grace_s, self._fire, link, LinkEvent.GRACE_OVER
            )
        if new in HOLDING:
            self._changed(link, old, event, reason)
            return
        # Final for this Link: it stops holding its subdomain.
        _cancel_timers(link)
        del self._links[link.subdomain]
        self._count(link, -1)
        self._remember(link.subdomain, new, link.expires_at)
        if new is LinkState.REVOKED:
            self._revoked[link.subdomain] = link.expires_at
        session, link.session = link.session, None
        if session is not None:
            if new is LinkState.EXPIRED:
                session.close(GoAwayCode.EXPIRED, "the link reached its expiry time")
            elif new is LinkState.REVOKED:
                session.close(GoAwayCode.AUTH_FAILED, reason or "the relay took this link down")
            elif event is LinkEvent.MOVED:
                session.close(GoAwayCode.REPLACED, "a newer connection took this link over")
        self._changed(link, old, event, reason)

    def _fire(self, link: Link, event: LinkEvent) -> None:
        link.timers.pop("grace" if event is LinkEvent.GRACE_OVER else "expiry", None)
        if link.state in HOLDING and event in TRANSITIONS[link.state]:
            self._move(link, event)

    def _evict(self, matches: Callable[[Link], bool]) -> bool:
        """Free the slot of the longest-away link that matches; False if there is none."""
        victim = next((link for link in self._away.values() if matches(link)), None)
        if victim is None:
            return False
        self._move(victim, LinkEvent.EVICTED)
        return True

    def _add(self, link: Link) -> None:
        self._links[link.subdomain] = link
        self._count(link, +1)
        delay = max(0.0, link.expires_at - time.time())
        link.timers["expiry"] = asyncio.get_running_loop().call_later(
            delay, self._fire, link, LinkEvent.EXPIRY
        )

    def _claim(self, link: Link, client_ip: str, *, resumed: bool) -> Claim:
        link.claims += 1
        return Claim(link, client_ip, resumed)

    def _count(self, link: Link, delta: int) -> None:
        _bump(self._per_ip, link.client_ip, delta)
        if link.token_id is not None:
            _bump(self._per_token, link.token_id, delta)

    def _remember(self, subdomain: str, state: LinkState, expires_at: float) -> None:
        self._ended[subdomain] = (state, expires_at)
        self._ended.move_to_end(subdomain)
        while len(self._ended) > ENDED_MEMORY:
            self._ended.popitem(last=False)

    def _new_subdomain(self) -> str:
        while True:
            sub = "".join(secrets.choice(SUBDOMAIN_ALPHABET) for _ in range(SUBDOMAIN_LENGTH))
            if sub not in self._links and sub not in self._ended and sub not in self._revoked:
                return sub


def _bump(counter: Counter[str], key: str, delta: int) -> None:
    counter[key] += delta
    if counter[key] <= 0:
        del counter[key]


def _cancel_timers(link: Link) -> None:
    for timer in link.timers.values():
        timer.cancel()
    link.timers.clear()


def _links(n: int) -> str:
    return "1 link" if n == 1 else f"{n} links"
