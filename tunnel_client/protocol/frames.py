"""Frames: the units of the wire protocol, and their byte layout.

Every binary WebSocket message between a client and a relay holds one or more
frames back to back. A frame is a fixed 10-byte header followed by its payload::

    0       1       2               6               10
    +-------+-------+---------------+---------------+-----------------+
    | type  | flags |   stream id   |    length     | payload (length)|
    |  u8   |  u8   |  u32, big end |  u32, big end |                 |
    +-------+-------+---------------+---------------+-----------------+

Stream id 0 is the session itself (HELLO, WELCOME, PING, GOAWAY); every other type
names a stream. Only the relay opens streams, with even ids that strictly increase.

Types and their payloads (README "Wire protocol" gives the rules around them):

==========  ====  ================================================  ===========
type        code  payload                                           flags
==========  ====  ================================================  ===========
HELLO       0x01  JSON object: client's handshake                   -
WELCOME     0x02  JSON object: relay's answer (link, lease, limits) -
OPEN        0x03  JSON request head (relay -> client)               FIN
REPLY       0x04  JSON response head (client -> relay)              FIN
DATA        0x05  body bytes (counts against the stream window)     FIN
WINDOW      0x06  u32 credit increment, 1 .. 2**31-1                -
RESET       0x07  u32 ResetCode + UTF-8 reason                      -
PING        0x08  8 opaque bytes, echoed back with ACK               ACK
GOAWAY      0x09  u32 GoAwayCode + UTF-8 reason                     -
MESSAGE     0x0A  one WebSocket message or a fragment of one        TEXT, MORE
CLOSE       0x0B  u16 WebSocket close code + UTF-8 reason           -
==========  ====  ================================================  ===========

Flags: FIN (0x01) ends the sender's direction of the stream; ACK (0x02) marks a PING
answer; TEXT (0x04) marks a text WebSocket message on its first fragment; MORE (0x08)
says more fragments of the same WebSocket message follow.

Any other type, any flag not listed for the type, a payload over its type's limit or a
truncated header is a :class:`~.errors.RemoteProtocolError` when decoding.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from .errors import GoAwayCode, LocalProtocolError, RemoteProtocolError

__all__ = [
    "HEADER",
    "MAX_HEAD_PAYLOAD",
    "MAX_MESSAGE_BYTES",
    "MAX_PAYLOAD",
    "MAX_REASON_BYTES",
    "Flags",
    "Frame",
    "FrameType",
    "decode_frames",
    "encode_frame",
    "goaway_frame",
    "parse_goaway",
    "reason_bytes",
]

_U32 = struct.Struct("!I")

HEADER = struct.Struct("!BBII")
"""type u8, flags u8, stream id u32, payload length u32."""

MAX_PAYLOAD = 1 << 20
"""No frame payload may exceed 1 MiB, whatever its type."""

MAX_HEAD_PAYLOAD = 256 * 1024
"""HELLO, WELCOME, OPEN and REPLY carry JSON heads of at most 256 KiB."""

MAX_REASON_BYTES = 1024
"""Reasons in RESET, GOAWAY and CLOSE are at most 1 KiB of UTF-8."""

MAX_MESSAGE_BYTES = 4 << 20
"""A WebSocket message of the transport holds at most 4 MiB of frames."""

MAX_STREAM_ID = 2**32 - 1


class FrameType(enum.IntEnum):
    """The type byte of a frame."""

    HELLO = 0x01
    WELCOME = 0x02
    OPEN = 0x03
    REPLY = 0x04
    DATA = 0x05
    WINDOW = 0x06
    RESET = 0x07
    PING = 0x08
    GOAWAY = 0x09
    MESSAGE = 0x0A
    CLOSE = 0x0B


class Flags(enum.IntFlag):
    """The flags byte of a frame."""

    NONE = 0
    FIN = 0x01
    ACK = 0x02
    TEXT = 0x04
    MORE = 0x08


_ALLOWED_FLAGS: dict[FrameType, int] = {
    FrameType.HELLO: 0,
    FrameType.WELCOME: 0,
    FrameType.OPEN: Flags.FIN,
    FrameType.REPLY: Flags.FIN,
    FrameType.DATA: Flags.FIN,
    FrameType.WINDOW: 0,
    FrameType.RESET: 0,
    FrameType.PING: Flags.ACK,
    FrameType.GOAWAY: 0,
    FrameType.MESSAGE: Flags.TEXT | Flags.MORE,
    FrameType.CLOSE: 0,
}

# The same as plain ints: `int & IntFlag` goes through the enum machinery (slow, and
# done for every frame).
_FORBIDDEN_FLAGS: dict[FrameType, int] = {t: ~int(f) for t, f in _ALLOWED_FLAGS.items()}
_FIN = int(Flags.FIN)

_SESSION_TYPES = frozenset({FrameType.HELLO, FrameType.WELCOME, FrameType.PING, FrameType.GOAWAY})

# (minimum, maximum) payload length per type.
_PAYLOAD_BOUNDS: dict[FrameType, tuple[int, int]] = {
    FrameType.HELLO: (2, MAX_HEAD_PAYLOAD),
    FrameType.WELCOME: (2, MAX_HEAD_PAYLOAD),
    FrameType.OPEN: (2, MAX_HEAD_PAYLOAD),
    FrameType.REPLY: (2, MAX_HEAD_PAYLOAD),
    FrameType.DATA: (0, MAX_PAYLOAD),
    FrameType.WINDOW: (4, 4),
    FrameType.RESET: (4, 4 + MAX_REASON_BYTES),
    FrameType.PING: (8, 8),
    FrameType.GOAWAY: (4, 4 + MAX_REASON_BYTES),
    FrameType.MESSAGE: (0, MAX_PAYLOAD),
    FrameType.CLOSE: (2, 2 + MAX_REASON_BYTES),
}


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: header fields plus payload bytes."""

    type: FrameType
    flags: int
    stream_id: int
    payload: bytes = b""

    @property
    def fin(self) -> bool:
        """True when this frame ends the sender's direction of its stream."""
        return bool(self.flags & _FIN)


def check_frame(type_: FrameType, flags: int, stream_id: int, length: int) -> str | None:
    """Return why a frame with these header fields is illegal, or None if it is legal."""
    # ~int(), not ~: ~ of an IntFlag drops the undefined bits (~FIN == 0x0E), which
    # would let 0x10..0x80 by.
    if flags & _FORBIDDEN_FLAGS[type_]:
        return f"flags 0x{flags:02x} not allowed on {type_.name}"
    if (stream_id == 0) != (type_ in _SESSION_TYPES):
        return f"{type_.name} on stream {stream_id}"
    low, high = _PAYLOAD_BOUNDS[type_]
    if not low <= length <= high:
        return f"{type_.name} payload of {length} bytes (allowed {low}..{high})"
    return None


# What decode_frames checks per type code: (type, forbidden flags, session-wide,
# minimum and maximum payload length), from the tables above.
_RULES_BY_CODE: dict[int, tuple[FrameType, int, bool, int, int]] = {
    t.value: (t, _FORBIDDEN_FLAGS[t], t in _SESSION_TYPES, *_PAYLOAD_BOUNDS[t]) for t in FrameType
}
_new_frame = object.__new__
# The slots' own setters, which a frozen dataclass's __setattr__ does not stand in front of.
_set_type = Frame.__dict__["type"].__set__
_set_flags = Frame.__dict__["flags"].__set__
_set_stream_id = Frame.__dict__["stream_id"].__set__
_set_payload = Frame.__dict__["payload"].__set__


def goaway_frame(code: GoAwayCode, reason: str) -> Frame:
    """A GOAWAY frame; the reason is cut to :data:`MAX_REASON_BYTES` of valid UTF-8."""
    return Frame(FrameType.GOAWAY, 0, 0, _U32.pack(code) + reason_bytes(reason))


def parse_goaway(payload: bytes) -> tuple[GoAwayCode, str]:
    """The code and reason of a GOAWAY payload; unknown codes read as INTERNAL_ERROR."""
    (raw,) = _U32.unpack_from(payload)
    try:
        code = GoAwayCode(raw)
    except ValueError:
        code = GoAwayCode.INTERNAL_ERROR
    return code, payload[4:].decode("utf-8", "replace")


def reason_bytes(reason: str) -> bytes:
    """A reason as UTF-8, cut to :data:`MAX_REASON_BYTES` without splitting a character."""
    raw = reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]
    return raw.decode("utf-8", "ignore").encode()


def encode_frame(frame: Frame) -> bytes:
    """Serialize one frame.

    Raises:
        LocalProtocolError: if the frame breaks a rule of the layout above.
    """
    if not 0 <= frame.stream_id <= MAX_STREAM_ID:
        raise LocalProtocolError(f"stream id {frame.stream_id} out of range")
    problem = check_frame(frame.type, frame.flags, frame.stream_id, len(frame.payload))
    if problem is not None:
        raise LocalProtocolError(problem)
    return HEADER.pack(frame.type, frame.flags, frame.stream_id, len(frame.payload)) + frame.payload


def decode_frames(message: bytes) -> list[Frame]:
    """Parse every frame of one transport message.

    Raises:
        RemoteProtocolError: if the message is empty, truncated, too large, or holds
            any frame that breaks a rule of the layout above. Nothing else is raised.
    """
    size = len(message)
    if size == 0:
        raise RemoteProtocolError("empty message")
    if size > MAX_MESSAGE_BYTES:
        raise RemoteProtocolError(f"message of {size} bytes exceeds {MAX_MESSAGE_BYTES}")
    if not isinstance(message, bytes):
        message = bytes(message)  # a slice of bytes is the payload's one copy
    frames: list[Frame] = []
    offset = 0
    header_size = HEADER.size
    unpack_from = HEADER.unpack_from
    rules = _RULES_BY_CODE
    while offset < size:
        if size - offset < header_size:
            raise RemoteProtocolError("truncated frame header")
        code, flags, stream_id, length = unpack_from(message, offset)
        rule = rules.get(code)
        if rule is None:
            raise RemoteProtocolError(f"unknown frame type 0x{code:02x}")
        type_, forbidden, on_session, low, high = rule
        # check_frame's rules, inline (this runs for every frame); it says what is wrong.
        if flags & forbidden or (stream_id == 0) != on_session or not low <= length <= high:
            raise RemoteProtocolError(check_frame(type_, flags, stream_id, length) or "")
        start = offset + header_size
        offset = start + length
        if offset > size:
            raise RemoteProtocolError(f"truncated {type_.name} payload")
        # Frame(...) without the frozen dataclass's __init__, which sets each field
        # through object.__setattr__: that cost more than the rest of this loop.
        frame = _new_frame(Frame)
        _set_type(frame, type_)
        _set_flags(frame, flags)
        _set_stream_id(frame, stream_id)
        _set_payload(frame, message[start:offset])
        frames.append(frame)
    return frames
