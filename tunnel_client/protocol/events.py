"""Events the multiplexer reports after it receives data.

:meth:`Mux.events_received() <.mux.Mux.events_received>` returns these, in the order
the frames that caused them arrived. They are immutable; don't subclass them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import GoAwayCode, ResetCode
from .heads import RequestHead, ResponseHead

__all__ = [
    "CloseReceived",
    "DataReceived",
    "Event",
    "MessageReceived",
    "PingAcknowledged",
    "ReplyReceived",
    "ResetReceived",
    "SessionEnded",
    "StreamOpened",
    "WindowOpened",
]


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """(client) The relay opened a stream for one public request."""

    stream_id: int
    head: RequestHead
    end_stream: bool
    """True when the request has no body."""


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """(relay) The client answered a stream with a response head."""

    stream_id: int
    head: ResponseHead
    end_stream: bool
    """True when the response has no body."""


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Body bytes arrived; acknowledge them once taken (:meth:`Mux.acknowledge`)."""

    stream_id: int
    data: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A WebSocket message, or a fragment of one, arrived on an upgraded stream."""

    stream_id: int
    data: bytes
    text: bool
    final: bool
    """False while more fragments of the same message follow."""


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer's WebSocket closed with a close code; its direction has ended."""

    stream_id: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ResetReceived:
    """The peer reset a stream; nothing more will arrive on it or may be sent."""

    stream_id: int
    code: ResetCode
    reason: str


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """The peer granted more send credit on a stream."""

    stream_id: int
    increment: int


@dataclass(frozen=True, slots=True)
class PingAcknowledged:
    """The peer answered one of our PINGs."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The session is over: the peer sent GOAWAY, or broke the protocol (``remote``)."""

    code: GoAwayCode
    reason: str
    by_peer: bool
    """True when the peer sent GOAWAY; False when we ended it for the peer's fault."""


Event = (
    StreamOpened
    | ReplyReceived
    | DataReceived
    | MessageReceived
    | CloseReceived
    | ResetReceived
    | WindowOpened
    | PingAcknowledged
    | SessionEnded
)
