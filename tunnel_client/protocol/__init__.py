"""The sharetunnel wire protocol, sans-I/O.

Frames (:mod:`.frames`), heads (:mod:`.heads`), flow-control windows (:mod:`.window`),
the handshake (:mod:`.handshake`) and the stream multiplexer (:mod:`.mux`) do no I/O;
:mod:`.aio` drives them over any message transport with asyncio. Both the client and
the relay use this package; it imports no WebSocket, HTTP or MQTT library.

It also holds what both command lines share and the relay may import from nowhere
else: the settings engine (:mod:`.settings`, :mod:`.parsers`) and :mod:`.units`.
"""

from .errors import (
    ConfigError,
    FlowControlError,
    GoAwayCode,
    InvalidState,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    ResetCode,
    SessionClosed,
    StreamReset,
    TunnelError,
)
from .handshake import PROTOCOL_VERSION, Hello, Welcome
from .heads import RequestHead, ResponseHead, strip_hop_by_hop
from .mux import DEFAULT_MAX_FRAME, DEFAULT_WINDOW, Mux, Role

__all__ = [
    "DEFAULT_MAX_FRAME",
    "DEFAULT_WINDOW",
    "PROTOCOL_VERSION",
    "ConfigError",
    "FlowControlError",
    "GoAwayCode",
    "Hello",
    "InvalidState",
    "LocalProtocolError",
    "Mux",
    "ProtocolError",
    "RemoteProtocolError",
    "RequestHead",
    "ResetCode",
    "ResponseHead",
    "Role",
    "SessionClosed",
    "StreamReset",
    "TunnelError",
    "Welcome",
    "strip_hop_by_hop",
]
