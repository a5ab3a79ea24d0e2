"""The routing seam: where a link lives, and which session carries a request to it.

The edge (the visitor side) asks this and nothing else about links::

    route = relay.seam.where(sub)
    match route:
        case LocalLink(link): ...       # held here: link.session is its client's session
        case PeerLink(link, node): ...  # held by another node: route.session is the hop there
        case Unknown(ended=None, located=True): ...   # 404
        case Unknown(ended=(state, when)): ...        # 410 (expired or revoked)
        case Unknown(located=False): ...              # 503: the cluster cannot say now

Either session takes ``open_stream(head)`` and the same pump serves both: the node at
the far end of a hop splices the stream onto the link's own session. For an edge
written against the directory's answers, :meth:`Router.lookup` returns what
``directory.get`` returns (a remote link's ``session`` is the hop to its node) and
:meth:`Router.session_for` the session to use for a link.

With one relay the answers are only ever local or unknown; with ``--cluster`` the
directory is an :class:`~relay_server.cluster.directory.MqttDirectory`, which knows the
other nodes' links.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunnel_client.protocol.aio import Session

from .cluster.directory import RemoteLink
from .directory import Link, LinkDirectory, LinkState

__all__ = ["LocalLink", "PeerLink", "Route", "Router", "Unknown"]


@dataclass(frozen=True, slots=True)
class LocalLink:
    """The link is held by this node."""

    link: Link

    @property
    def session(self) -> Session | None:
        """Its client's session; None while the client is away (503)."""
        return self.link.session


@dataclass(frozen=True, slots=True)
class PeerLink:
    """The link is held by another node of the cluster."""

    link: Link
    """As that node announced it (state, expiry); checks like the rate apply here."""
    node: str

    @property
    def session(self) -> Session | None:
        """The hop to that node; None while it is down or the link is away (503)."""
        return self.link.session


@dataclass(frozen=True, slots=True)
class Unknown:
    """No node holds the link, or none can be found right now."""

    ended: tuple[LinkState, float] | None = None
    """How it ended, if known: ``(EXPIRED or REVOKED, expiry time)`` means 410."""
    located: bool = True
    """False when the cluster cannot say (its broker is away): 503, not 404."""


Route = LocalLink | PeerLink | Unknown


class Router:
    """Answers "where does this link live" from the link directory."""

    def __init__(self, directory: LinkDirectory) -> None:
        self.directory = directory

    def where(self, subdomain: str) -> Route:
        link = self.directory.get(subdomain)
        if isinstance(link, RemoteLink):
            if link.node is None:
                return Unknown(self._final(subdomain), located=False)
            return PeerLink(link, link.node)
        if link is not None:
            return LocalLink(link)
        return Unknown(self.directory.ended(subdomain))

    def lookup(self, subdomain: str) -> Link | None:
        """The link wherever it is held, as ``directory.get`` answers (None: 404 or 410)."""
        return self.directory.get(subdomain)

    def ended(self, subdomain: str) -> tuple[LinkState, float] | None:
        """For a link no node holds: how it ended and when it expires (as the directory)."""
        return self.directory.ended(subdomain)

    def session_for(self, link: Link) -> Session | None:
        """The session a visitor's request for ``link`` goes on: its client's, or a hop."""
        return link.session

    def _final(self, subdomain: str) -> tuple[LinkState, float] | None:
        ended = self.directory.ended(subdomain)
        if ended is not None and ended[0] in (LinkState.EXPIRED, LinkState.REVOKED):
            return ended
        return None
