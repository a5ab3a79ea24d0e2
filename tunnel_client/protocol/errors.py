"""Exceptions of the tunnel protocol, and the codes that travel with them.

Every exception raised by sharetunnel derives from :class:`TunnelError`::

    TunnelError
    ├── ProtocolError              .code: GoAwayCode
    │   ├── LocalProtocolError     we tried to send something illegal (our bug)
    │   │   └── HeadTooLarge       .size/.limit: a head that does not fit its frame; refused
    │   │                          before anything changed, the session and stream carry on
    │   └── RemoteProtocolError    the peer did: the session ends with GOAWAY(PROTOCOL_ERROR)
    │       └── FlowControlError   the peer sent more than its credit, or overflowed a window
    ├── InvalidState               an API used in the wrong state (also an AssertionError)
    ├── HandshakeRefused           .code/.reason; the relay answered HELLO with GOAWAY
    ├── StreamReset                .code: ResetCode; one stream ended abnormally
    ├── SessionClosed              .code/.reason; the whole session is gone
    └── ConfigError                .problems: every problem found, collected at once

Errors are split by who is at fault, as in h11: code raises
:class:`LocalProtocolError` for its own mistakes and the multiplexer turns a peer's
mistakes into :class:`RemoteProtocolError` at the boundary, never letting them escape
as anything else.

One local error is not a bug but a refusal, and callers must expect it: a head comes
from a visitor or a local app, and its JSON encoding may exceed
:data:`~.frames.MAX_HEAD_PAYLOAD` (escaping can inflate a header up to 6 times). The
multiplexer raises :class:`HeadTooLarge` for it before it changes any state, as h11
raises ``LocalProtocolError`` for a response it will not send: the relay answers the
visitor 431, the client resets the stream with ``UPSTREAM_HEAD_TOO_LARGE``.
"""

from __future__ import annotations

import enum
import re

__all__ = [
    "ConfigError",
    "FlowControlError",
    "GoAwayCode",
    "HandshakeRefused",
    "HeadTooLarge",
    "InvalidState",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "ResetCode",
    "SessionClosed",
    "StreamReset",
    "TunnelError",
    "port_of_reason",
    "unavailable_reason",
]


class GoAwayCode(enum.IntEnum):
    """Why a whole session ends (the GOAWAY frame, README "Wire protocol")."""

    NORMAL = 0
    """The sender is done: the client stopped sharing, or the relay freed the link."""
    PROTOCOL_ERROR = 1
    """The receiver broke a rule of the protocol. Not retried with the same input."""
    INTERNAL_ERROR = 2
    """The sender hit a bug. Details stay in its log."""
    EXPIRED = 3
    """The link reached its expiry time. The client must not reconnect with its lease."""
    SHUTDOWN = 4
    """The relay is going away. The client should reconnect (to any node) with its lease."""
    AUTH_FAILED = 5
    """The token or lease was refused. The client must not retry with the same credentials."""
    VERSION_MISMATCH = 6
    """The two sides share no protocol version."""
    REPLACED = 7
    """A newer connection presented the same lease and took the link over."""
    KEEPALIVE_TIMEOUT = 8
    """Nothing arrived from the peer for longer than the keepalive timeout."""
    LIMIT_EXCEEDED = 9
    """The relay refuses more tunnels from this token or address."""
    BAD_REQUEST = 10
    """The handshake was malformed or asked for something not allowed."""


class ResetCode(enum.IntEnum):
    """Why one stream ends abnormally (the RESET frame)."""

    CANCEL = 0
    """The sender no longer wants the stream: the visitor left, or the local request was dropped."""
    REFUSED = 1
    """The receiver refused the stream before doing anything with it (too many streams)."""
    UPSTREAM_UNAVAILABLE = 2
    """The local server refused the connection (nothing listens on the port).

    The reason is :func:`unavailable_reason`: it names the port and nothing else."""
    UPSTREAM_TIMEOUT = 3
    """The local server did not start a response in time."""
    UPSTREAM_ERROR = 4
    """The local server broke the connection or sent an invalid response."""
    PROTOCOL_ERROR = 5
    """The stream was used against the rules (for example a bad request head)."""
    INTERNAL_ERROR = 6
    """The sender hit a bug while serving the stream."""
    TOO_LARGE = 7
    """A message on the stream exceeded a size limit."""
    UPSTREAM_HEAD_TOO_LARGE = 8
    """The local server's response head does not fit in a REPLY (see :class:`HeadTooLarge`)."""


class TunnelError(Exception):
    """Root of every exception raised by sharetunnel."""


class ProtocolError(TunnelError):
    """A rule of the wire protocol was broken.

    :attr:`code` is the GOAWAY code to send when this error ends a session.
    """

    code: GoAwayCode = GoAwayCode.PROTOCOL_ERROR


class LocalProtocolError(ProtocolError):
    """This side tried to send something the protocol forbids: always a bug here."""


class HeadTooLarge(LocalProtocolError):
    """A request or response head whose encoding exceeds what its frame may carry.

    Raised by :meth:`~.mux.Mux.open_stream` and :meth:`~.mux.Mux.send_reply` before
    anything changed: no stream id is used, nothing is queued, the session carries on.
    :attr:`size` is the encoded size in bytes, :attr:`limit` the most allowed.
    """

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} head of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids; the session must end."""


class FlowControlError(RemoteProtocolError):
    """The peer sent beyond its credit, or granted credit beyond the maximum window."""


class InvalidState(TunnelError, AssertionError):
    """An API was used in a state that forbids it (write after end, reply twice...)."""


class HandshakeRefused(TunnelError):
    """The relay refused a HELLO: :attr:`code` says why, :attr:`reason` in words.

    The relay raises it to refuse (and sends it as GOAWAY); the client raises it when it
    reads that GOAWAY. Whether trying again can help follows from the code alone.
    """

    def __init__(self, code: GoAwayCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    @property
    def retryable(self) -> bool:
        """A relay that is shutting down or failed may take us later (or another node may)."""
        return self.code in (GoAwayCode.SHUTDOWN, GoAwayCode.INTERNAL_ERROR)


class StreamReset(TunnelError):
    """A stream ended abnormally; :attr:`code` says why, :attr:`reason` says more."""

    def __init__(self, code: ResetCode, reason: str = "") -> None:
        super().__init__(f"stream reset ({code.name}){': ' + reason if reason else ''}")
        self.code = code
        self.reason = reason


class SessionClosed(TunnelError):
    """The session ended; no stream on it can be used any more."""

    def __init__(self, code: GoAwayCode, reason: str = "") -> None:
        super().__init__(f"session closed ({code.name}){': ' + reason if reason else ''}")
        self.code = code
        self.reason = reason


class ConfigError(TunnelError):
    """A configuration was invalid. :attr:`problems` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


_PORT_REASON = re.compile(r"\bport (\d{1,5})\b")


def unavailable_reason(port: int) -> str:
    """The reason a client sends with ``RESET(UPSTREAM_UNAVAILABLE)``: the port, no details.

    The relay builds its 502 page from the port alone (:func:`port_of_reason`); why the
    connection failed stays in the client's own log.
    """
    return f"nothing is listening on port {port}"


def port_of_reason(reason: str) -> int | None:
    """The port a :func:`unavailable_reason` names, or None if it names none."""
    match = _PORT_REASON.search(reason)
    if match is None:
        return None
    port = int(match.group(1))
    return port if 0 < port < 65536 else None
