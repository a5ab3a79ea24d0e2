"""What nodes tell each other through the broker: topics, records, and their signatures.

Every node of a cluster subscribes to ``sharetunnel/<cluster>/#``. Three kinds of
retained message live there, each a JSON object signed with HMAC-SHA256 over the
cluster secret (the ``mac`` key, computed over the topic and the other keys in
canonical form, so a record cannot be moved to another topic either):

``links/<subdomain>``  -> :class:`LinkRecord`
    "this node holds this link": node, its incarnation, its peer URL, the link's state
    (live or away), expiry, key hash, token id, the hash of its warning-bypass token,
    and when the node's claim was made (the newest claim wins). An empty retained
    message clears it: the link ended.
``ended/<subdomain>``  -> :class:`EndedRecord`
    "this link expired / was revoked", kept (with an MQTT message expiry) so every node,
    and every node that starts later, answers 410 and refuses its lease.
``nodes/<node-id>``    -> :class:`NodeRecord`
    "online" while a node is connected to the broker; the node's last will replaces it
    with "offline" (same ``conn``), so a node that dies without a goodbye drops out.
``sync/<node-id>``     (not retained, not signed)
    a marker a node sends itself after subscribing: once it comes back, every retained
    message published before it has arrived too, so the node's view is complete.

This module does no I/O.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "PROTOCOL",
    "EndedRecord",
    "Kind",
    "LinkRecord",
    "NodeRecord",
    "Record",
    "RecordError",
    "Topics",
    "decode",
    "encode",
    "peer_mac",
]

PROTOCOL = 1
"""Version of the records; a node ignores records of another version."""


class RecordError(ValueError):
    """A message that is not a valid, correctly signed record."""


class Kind(enum.Enum):
    LINK = "links"
    ENDED = "ended"
    NODE = "nodes"
    SYNC = "sync"


@dataclass(frozen=True, slots=True)
class LinkRecord:
    """A node holds a link."""

    subdomain: str
    node: str
    incarnation: str
    """Random per process start: a record from a node's previous life is stale."""
    peer_url: str
    state: str
    """``live`` or ``away`` (its client dropped; 503 until it is back)."""
    expires_at: float
    key_hash: str
    token_id: str | None
    claimed_at: float
    """When this node welcomed the link's client; of two claims, the newer wins."""
    bypass_hash: str | None = None
    """SHA-256 of the owner's token that skips the warning page (``--interstitial``):
    the node a browser reaches shows the page, whichever node holds the link."""


@dataclass(frozen=True, slots=True)
class EndedRecord:
    """A link ended for good (expired, or revoked by an operator)."""

    subdomain: str
    state: str
    """``expired`` or ``revoked``."""
    expires_at: float
    reason: str
    node: str
    """The node that said so."""
    at: float


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A node is online (announced on connect) or offline (its last will, or goodbye)."""

    node: str
    incarnation: str
    conn: str
    """Random per broker connection: an old connection's late will cannot take down a new one."""
    peer_url: str
    state: str
    """``online`` or ``offline``."""
    at: float


Record = LinkRecord | EndedRecord | NodeRecord

_TYPES: dict[Kind, type[Any]] = {
    Kind.LINK: LinkRecord,
    Kind.ENDED: EndedRecord,
    Kind.NODE: NodeRecord,
}


class Topics:
    """The topic names of one cluster."""

    def __init__(self, cluster: str) -> None:
        self.root = f"sharetunnel/{cluster}"
        self.all = f"{self.root}/#"

    def link(self, subdomain: str) -> str:
        return f"{self.root}/links/{subdomain}"

    def ended(self, subdomain: str) -> str:
        return f"{self.root}/ended/{subdomain}"

    def node(self, node_id: str) -> str:
        return f"{self.root}/nodes/{node_id}"

    def sync(self, node_id: str) -> str:
        return f"{self.root}/sync/{node_id}"

    def parse(self, topic: str) -> tuple[Kind, str] | None:
        """``(kind, name)`` of a topic of this cluster, or None for anything else."""
        prefix = self.root + "/"
        if not topic.startswith(prefix):
            return None
        kind, _, name = topic[len(prefix) :].partition("/")
        if not name or "/" in name:
            return None
        try:
            return Kind(kind), name
        except ValueError:
            return None


def _mac(secret: bytes, topic: str, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hmac.new(secret, f"{topic}\n{canonical}".encode(), hashlib.sha256).hexdigest()


def encode(secret: bytes, topic: str, record: Record) -> bytes:
    """The signed payload of a record published on ``topic``."""
    body = {"v": PROTOCOL, **asdict(record)}
    return json.dumps({**body, "mac": _mac(secret, topic, body)}).encode()


def decode(secret: bytes, topic: str, kind: Kind, payload: bytes) -> Record:
    """The record a payload on ``topic`` holds, once its signature checks out.

    Raises:
        RecordError: not JSON, not signed with the cluster secret, or malformed.
    """
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise RecordError("not JSON") from None
    if not isinstance(body, dict):
        raise RecordError("not a JSON object")
    mac = body.pop("mac", None)
    if not isinstance(mac, str):
        raise RecordError("no signature")
    if not hmac.compare_digest(mac, _mac(secret, topic, body)):
        raise RecordError("bad signature")
    if body.pop("v", None) != PROTOCOL:
        raise RecordError("another version of the records")
    try:
        record: Record = _TYPES[kind](**body)
    except (KeyError, TypeError) as exc:
        raise RecordError(f"malformed: {exc}") from None
    return record


def peer_mac(secret: bytes, role: str, *parts: str) -> str:
    """The proof one side of a node-to-node handshake gives: HMAC over both nonces and ids."""
    text = "\n".join(("sharetunnel-peer", role, *parts))
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()
