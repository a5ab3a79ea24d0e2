"""The stream multiplexer: the sans-I/O state machine of one tunnel session.

:class:`Mux` holds the streams of one session after the handshake. Bytes go in with
:meth:`Mux.receive_message`, typed events come out of :meth:`Mux.events_received`,
and the frames to send come out of :meth:`Mux.data_to_send`. It does no I/O and never
blocks; the asyncio driver (:mod:`.aio`) and the tests drive it.

Rule 1 (as in h11): every rule about which frame may arrive or leave when lives in this
file, in the ``_check_*`` helpers and the handlers next to them.

Streams
    Only the relay opens streams (one per public request), with even ids that strictly
    increase from 2. Each stream has two directions. The relay's direction carries the
    request body (DATA) or, once the stream is upgraded, WebSocket messages (MESSAGE,
    CLOSE); the client's direction starts with one REPLY and then carries the response
    body or WebSocket messages. A REPLY with status 101 upgrades the stream, and is
    only allowed when the OPEN asked for a WebSocket. FIN (or CLOSE) ends a direction;
    a stream is forgotten once both directions ended, or at once on RESET.

Closed streams
    Frames for a stream that is already forgotten are ignored (the peer may have sent
    them before it saw our RESET). Frames for an id the relay never opened are a
    protocol error.

Peer faults
    Any broken rule ends the session: the mux queues GOAWAY(PROTOCOL_ERROR) with a
    reason, reports :class:`~.events.SessionEnded`, and ignores everything after. It
    never raises for the peer's input.

Heads too large to send
    A head whose JSON exceeds :data:`~.frames.MAX_HEAD_PAYLOAD` is a protocol error
    for the peer, which would end the whole session. :meth:`Mux.open_stream` and
    :meth:`Mux.send_reply` refuse it with :class:`~.errors.HeadTooLarge` before they
    change anything, so only that one request fails.
"""

from __future__ import annotations

import enum
import logging
import struct
from collections.abc import Callable

from .errors import (
    GoAwayCode,
    HeadTooLarge,
    InvalidState,
    LocalProtocolError,
    RemoteProtocolError,
    ResetCode,
    SessionClosed,
)
from .events import (
    CloseReceived,
    DataReceived,
    Event,
    MessageReceived,
    PingAcknowledged,
    ReplyReceived,
    ResetReceived,
    SessionEnded,
    StreamOpened,
    WindowOpened,
)
from .frames import (
    HEADER,
    MAX_HEAD_PAYLOAD,
    MAX_PAYLOAD,
    Flags,
    Frame,
    FrameType,
    decode_frames,
    goaway_frame,
    parse_goaway,
    reason_bytes,
)
from .heads import RequestHead, ResponseHead
from .window import ReceiveWindow, SendCredit

__all__ = ["DEFAULT_MAX_FRAME", "DEFAULT_WINDOW", "Bytes", "Mux", "Role", "window_growth"]

Bytes = bytes | bytearray | memoryview

DEFAULT_WINDOW = 256 * 1024
"""Default receive window per stream: the bytes one stream may have in flight."""

DEFAULT_MAX_FRAME = 64 * 1024
"""Default largest DATA or MESSAGE payload this side sends."""

MESSAGE_TARGET_BYTES = 128 * 1024
"""Frames queued together are packed into transport messages of about this size.

Two full DATA frames: on loopback with uvloop (which reads 64 KiB at a time and so
queues many frames per loop turn), 256 KiB messages moved a 100 MiB download at
116-161 MB/s and 128 KiB ones at 171-215 MB/s, with a third less CPU on each side
(a message is copied whole several times on its way: smaller ones stay in cache and
let the peer start sooner); 32 KiB ones were slower again."""

GROWTH_FACTOR = 16
"""With window growth on, one stream's window may grow to this many times the base..."""
GROWTH_CAP = 4 * 1024 * 1024
"""...but not beyond 4 MiB (on loopback, ~500 MB/s for a download, twice the 256 KiB base)."""
GROWTH_BUDGET_FACTOR = 64
"""The windows of one session may grow by this many base windows in all..."""
GROWTH_BUDGET_CAP = 16 * 1024 * 1024
"""...and by 16 MiB at most: the memory bound of a session's streams stays the base
window per stream plus this, however many readers looked fast once and then stopped."""


def window_growth(window: int) -> tuple[int, int]:
    """``(max_window, budget)`` for :class:`Mux` with window growth, from the base window."""
    max_window = max(window, min(window * GROWTH_FACTOR, GROWTH_CAP))
    return max_window, min(window * GROWTH_BUDGET_FACTOR, GROWTH_BUDGET_CAP)


MAX_CONTROL_BACKLOG = 4096
"""Control frames the peer may make us queue (PING answers, refusals) before we flush."""

_U32 = struct.Struct("!I")
# Flags as plain ints: `int & IntFlag` goes through the enum machinery, per frame.
_FIN = int(Flags.FIN)
_ACK = int(Flags.ACK)
_TEXT = int(Flags.TEXT)
_MORE = int(Flags.MORE)
_U16 = struct.Struct("!H")


class Role(enum.Enum):
    """Which end of the tunnel a :class:`Mux` plays."""

    RELAY = "relay"
    CLIENT = "client"


class _Stream:
    """What the mux remembers about one live stream."""

    __slots__ = (
        "credit",
        "grown",
        "id",
        "local_open",
        "receive",
        "recv_fragmented",
        "recv_text",
        "remote_open",
        "replied",
        "send_fragmented",
        "upgraded",
        "wants_websocket",
    )

    def __init__(self, stream_id: int, window: int, credit: int, wants_websocket: bool) -> None:
        self.id = stream_id
        self.local_open = True
        self.remote_open = True
        self.replied = False
        self.wants_websocket = wants_websocket
        self.upgraded = False
        self.receive = ReceiveWindow(window)
        self.grown = 0
        """Bytes this stream's window grew by: returned to the session's budget at its end."""
        self.credit = SendCredit(credit)
        self.send_fragmented = False
        self.recv_fragmented = False
        self.recv_text = False


def _frozen(data: Bytes, n: int) -> Bytes:
    """The first ``n`` bytes of ``data`` to queue: a view (no copy) when they cannot change.

    A slice of immutable ``bytes`` is safe to hold until it is sent; anything mutable is
    copied, as the caller may reuse its buffer once the call returns.
    """
    if isinstance(data, bytes):
        return data if n == len(data) else memoryview(data)[:n]
    if isinstance(data, memoryview) and isinstance(data.obj, bytes) and data.itemsize == 1:
        return data[:n]
    return bytes(data[:n])


def _encoded_head(what: str, head: RequestHead | ResponseHead) -> bytes:
    """A head's frame payload; refuses one the peer would have to reject (a session killer)."""
    payload = head.encode()
    if len(payload) > MAX_HEAD_PAYLOAD:
        raise HeadTooLarge(what, len(payload), MAX_HEAD_PAYLOAD)
    return payload


def _reason_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class Mux:
    """Sans-I/O multiplexer for one tunnel session, after the handshake.

    Args:
        role: which end this is.
        window: our receive window per stream (announced to the peer in the handshake).
        peer_window: the receive window the peer announced: our initial send credit.
        max_streams: (client) the most streams the relay may hold open at once;
            OPENs beyond it are refused with RESET(REFUSED).
        max_frame: the largest DATA or MESSAGE payload we send.
        growth: ``(max_window, budget)`` (see :func:`window_growth`) to let a starved
            stream's receive window grow; None keeps every window at ``window``.

    After calling any ``receive_*``, ``send_*``, ``open_stream``, ``reset_stream``,
    ``acknowledge``, ``ping`` or ``close`` method:

    - call :meth:`data_to_send` and send each item as one binary transport message;
    - after ``receive_message``, handle every event of :meth:`events_received`.
    """

    def __init__(
        self,
        role: Role,
        *,
        window: int = DEFAULT_WINDOW,
        peer_window: int = DEFAULT_WINDOW,
        max_streams: int = 1024,
        max_frame: int = DEFAULT_MAX_FRAME,
        growth: tuple[int, int] | None = None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        if not 1 <= max_frame <= MAX_PAYLOAD:
            raise LocalProtocolError(f"max_frame {max_frame} out of range")
        ReceiveWindow(window)  # validates the size
        self.role = role
        self.window = window
        self.peer_window = peer_window
        self.max_streams = max_streams
        self.max_frame = max_frame
        self._max_window, self._growth_left = growth or (window, 0)
        self.logger = logger or logging.getLogger(__name__)
        self.debug = self.logger.isEnabledFor(logging.DEBUG)
        self._streams: dict[int, _Stream] = {}
        self._last_id = 0
        self._events: list[Event] = []
        # Frames as (header, payload): joined into messages once, in data_to_send.
        self._out: list[tuple[bytes, Bytes]] = []
        self._out_bytes = 0
        self._control_backlog = 0
        self.ended: SessionEnded | None = None
        self._handlers: dict[FrameType, Callable[[Frame], None]] = {
            FrameType.OPEN: self._on_open,
            FrameType.REPLY: self._on_reply,
            FrameType.DATA: self._on_data,
            FrameType.WINDOW: self._on_window,
            FrameType.RESET: self._on_reset,
            FrameType.PING: self._on_ping,
            FrameType.GOAWAY: self._on_goaway,
            FrameType.MESSAGE: self._on_message,
            FrameType.CLOSE: self._on_close,
        }

    # -- introspection ------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        """How many streams are live."""
        return len(self._streams)

    @property
    def pending_bytes(self) -> int:
        """Bytes queued for :meth:`data_to_send`."""
        return self._out_bytes

    def is_live(self, stream_id: int) -> bool:
        """True while the stream has not ended in both directions nor been reset."""
        return stream_id in self._streams

    def can_send(self, stream_id: int) -> bool:
        """True while our direction of a live stream has not ended."""
        stream = self._streams.get(stream_id)
        return stream is not None and stream.local_open

    def credit(self, stream_id: int) -> int:
        """Our send credit on a live stream (0 for a stream that is gone)."""
        stream = self._streams.get(stream_id)
        return stream.credit.available if stream else 0

    # -- output -------------------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """Take the queued frames, packed into transport messages.

        Send each item as one binary message, in order.
        """
        if not self._out:
            return []
        messages: list[bytes] = []
        batch: list[Bytes] = []
        size = 0
        for header, payload in self._out:
            length = len(header) + len(payload)
            if size and size + length > MESSAGE_TARGET_BYTES:
                messages.append(b"".join(batch))
                batch, size = [], 0
            batch.append(header)
            batch.append(payload)
            size += length
        messages.append(b"".join(batch))
        self._out.clear()
        self._out_bytes = 0
        self._control_backlog = 0
        return messages

    def events_received(self) -> list[Event]:
        """Take the events produced since the last call."""
        events, self._events = self._events, []
        return events

    def _emit(self, type_: FrameType, flags: int, stream_id: int, payload: Bytes = b"") -> None:
        self._out.append((HEADER.pack(type_, flags, stream_id, len(payload)), payload))
        self._out_bytes += HEADER.size + len(payload)
        if self.debug:
            self.logger.debug(
                "> %s flags=%d stream=%d len=%d", type_.name, flags, stream_id, len(payload)
            )

    def _emit_control(self, type_: FrameType, flags: int, stream_id: int, payload: bytes) -> None:
        """Queue a frame the peer made us send; refuse to queue without bound."""
        self._control_backlog += 1
        if self._control_backlog > MAX_CONTROL_BACKLOG:
            raise RemoteProtocolError("peer floods frames that need answers without reading")
        self._emit(type_, flags, stream_id, payload)

    # -- input --------------------------------------------------------------------------

    def receive_message(self, message: bytes) -> None:
        """Feed one transport message from the peer.

        Never raises for the peer's input: a broken rule ends the session with GOAWAY
        and a :class:`~.events.SessionEnded` event. After a session has ended, input is
        ignored.
        """
        if self.ended is not None:
            return
        try:
            for frame in decode_frames(message):
                if self.debug:
                    self.logger.debug(
                        "< %s flags=%d stream=%d len=%d",
                        frame.type.name,
                        frame.flags,
                        frame.stream_id,
                        len(frame.payload),
                    )
                handler = self._handlers.get(frame.type)
                if handler is None:
                    raise RemoteProtocolError(f"unexpected {frame.type.name} after the handshake")
                handler(frame)
                if self.ended is not None:
                    return
        except RemoteProtocolError as exc:
            self._fail(exc.code, str(exc))

    def _fail(self, code: GoAwayCode, reason: str) -> None:
        self.logger.info("! closing session: %s", reason)
        self._emit(FrameType.GOAWAY, 0, 0, goaway_frame(code, reason).payload)
        self._end(SessionEnded(code, reason, by_peer=False))

    def _end(self, event: SessionEnded) -> None:
        self.ended = event
        self._streams.clear()
        self._growth_left = 0
        self._events.append(event)

    def _stream_for(self, frame: Frame) -> _Stream | None:
        """The live stream a frame names; None if it ended. Raises if it never existed."""
        stream = self._streams.get(frame.stream_id)
        if stream is None and (frame.stream_id > self._last_id or frame.stream_id % 2):
            raise RemoteProtocolError(
                f"{frame.type.name} for stream {frame.stream_id}, which was never opened"
            )
        return stream

    def _forget_if_done(self, stream: _Stream) -> None:
        if not stream.remote_open:
            self._give_back_growth(stream)  # nothing more can arrive on it
        if not stream.local_open and not stream.remote_open:
            del self._streams[stream.id]

    def _give_back_growth(self, stream: _Stream) -> None:
        self._growth_left += stream.grown
        stream.grown = 0

    def _consume(self, stream: _Stream, frame: Frame) -> None:
        if not stream.remote_open:
            raise RemoteProtocolError(f"{frame.type.name} on stream {stream.id} after its end")
        stream.receive.consume(len(frame.payload))

    def _on_open(self, frame: Frame) -> None:
        if self.role is not Role.CLIENT:
            raise RemoteProtocolError("only the relay may open streams")
        if frame.stream_id <= self._last_id or frame.stream_id % 2:
            raise RemoteProtocolError(
                f"OPEN with stream id {frame.stream_id} after {self._last_id}: "
                "ids must be even and increase"
            )
        self._last_id = frame.stream_id
        head = RequestHead.decode(frame.payload)
        if len(self._streams) >= self.max_streams:
            self._emit_control(
                FrameType.RESET,
                0,
                frame.stream_id,
                _U32.pack(ResetCode.REFUSED) + b"too many concurrent streams",
            )
            return
        stream = _Stream(frame.stream_id, self.window, self.peer_window, head.websocket)
        stream.remote_open = not frame.fin
        self._streams[frame.stream_id] = stream
        self._events.append(StreamOpened(frame.stream_id, head, frame.fin))

    def _on_reply(self, frame: Frame) -> None:
        if self.role is not Role.RELAY:
            raise RemoteProtocolError("only the client may send REPLY")
        stream = self._stream_for(frame)
        if stream is None:
            return
        if stream.replied:
            raise RemoteProtocolError(f"second REPLY on stream {stream.id}")
        head = ResponseHead.decode(frame.payload)
        if head.status == 101:
            if not stream.wants_websocket or frame.fin:
                raise RemoteProtocolError("status 101 needs a WebSocket request and an open stream")
            stream.upgraded = True
        elif head.status < 200:
            raise RemoteProtocolError(f"informational status {head.status} in REPLY")
        stream.replied = True
        if frame.fin:
            stream.remote_open = False
        self._events.append(ReplyReceived(stream.id, head, frame.fin))
        self._forget_if_done(stream)

    def _on_data(self, frame: Frame) -> None:
        stream = self._stream_for(frame)
        if stream is None:
            return
        if stream.upgraded:
            raise RemoteProtocolError(f"DATA on upgraded stream {stream.id}")
        if self.role is Role.RELAY and not stream.replied:
            raise RemoteProtocolError(f"DATA before REPLY on stream {stream.id}")
        if not frame.payload and not frame.fin:
            raise RemoteProtocolError("empty DATA frame without FIN")
        self._consume(stream, frame)
        if frame.fin:
            stream.remote_open = False
        self._events.append(DataReceived(stream.id, frame.payload, frame.fin))
        self._forget_if_done(stream)

    def _on_message(self, frame: Frame) -> None:
        stream = self._stream_for(frame)
        if stream is None:
            return
        if not stream.upgraded:
            raise RemoteProtocolError(f"MESSAGE on stream {stream.id}, which is not upgraded")
        self._consume(stream, frame)
        text = bool(frame.flags & _TEXT)
        if stream.recv_fragmented:
            if text:
                raise RemoteProtocolError("TEXT flag on a continuation fragment")
            text = stream.recv_text
        final = not frame.flags & _MORE
        stream.recv_fragmented = not final
        stream.recv_text = text
        self._events.append(MessageReceived(stream.id, frame.payload, text, final))

    def _on_close(self, frame: Frame) -> None:
        stream = self._stream_for(frame)
        if stream is None:
            return
        if not stream.upgraded:
            raise RemoteProtocolError(f"CLOSE on stream {stream.id}, which is not upgraded")
        if not stream.remote_open:
            raise RemoteProtocolError(f"CLOSE on stream {stream.id} after its end")
        if stream.recv_fragmented:
            raise RemoteProtocolError("CLOSE in the middle of a fragmented message")
        (code,) = _U16.unpack_from(frame.payload)
        stream.remote_open = False
        self._events.append(CloseReceived(stream.id, code, _reason_text(frame.payload[2:])))
        self._forget_if_done(stream)

    def _on_window(self, frame: Frame) -> None:
        stream = self._stream_for(frame)
        if stream is None:
            return
        (increment,) = _U32.unpack(frame.payload)
        stream.credit.grant(increment)
        self._events.append(WindowOpened(stream.id, increment))

    def _on_reset(self, frame: Frame) -> None:
        stream = self._stream_for(frame)
        if stream is None:
            return
        (raw_code,) = _U32.unpack_from(frame.payload)
        try:
            code = ResetCode(raw_code)
        except ValueError:
            code = ResetCode.INTERNAL_ERROR
        del self._streams[stream.id]
        self._give_back_growth(stream)
        self._events.append(ResetReceived(stream.id, code, _reason_text(frame.payload[4:])))

    def _on_ping(self, frame: Frame) -> None:
        if frame.flags & _ACK:
            self._events.append(PingAcknowledged(frame.payload))
        else:
            self._emit_control(FrameType.PING, Flags.ACK, 0, frame.payload)

    def _on_goaway(self, frame: Frame) -> None:
        code, reason = parse_goaway(frame.payload)
        self._end(SessionEnded(code, reason, by_peer=True))

    # -- sending ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.ended is not None:
            raise SessionClosed(self.ended.code, self.ended.reason)

    def _sendable(self, stream_id: int) -> _Stream:
        self._check_open()
        stream = self._streams.get(stream_id)
        if stream is None or not stream.local_open:
            raise InvalidState(f"stream {stream_id} cannot send: it has ended")
        return stream

    def open_stream(self, head: RequestHead, *, end_stream: bool = False) -> int:
        """(relay) Open a stream for one public request; return its id.

        Raises:
            HeadTooLarge: if the encoded head exceeds :data:`~.frames.MAX_HEAD_PAYLOAD`.
                Nothing changed: no id was used, nothing was queued.
        """
        self._check_open()
        if self.role is not Role.RELAY:
            raise InvalidState("only the relay opens streams")
        payload = _encoded_head("OPEN", head)
        stream_id = self._last_id + 2
        self._last_id = stream_id
        stream = _Stream(stream_id, self.window, self.peer_window, head.websocket)
        stream.local_open = not end_stream
        self._streams[stream_id] = stream
        self._emit(FrameType.OPEN, Flags.FIN if end_stream else 0, stream_id, payload)
        return stream_id

    def send_reply(self, stream_id: int, head: ResponseHead, *, end_stream: bool = False) -> None:
        """(client) Answer a stream with the local server's response head.

        Raises:
            HeadTooLarge: if the encoded head exceeds :data:`~.frames.MAX_HEAD_PAYLOAD`.
                Nothing changed: the stream still awaits a reply (or a reset).
        """
        if self.role is not Role.CLIENT:
            raise InvalidState("only the client sends replies")
        stream = self._sendable(stream_id)
        if stream.replied:
            raise InvalidState(f"stream {stream_id} already has a reply")
        if head.status == 101:
            if not stream.wants_websocket or end_stream:
                raise InvalidState("status 101 needs a WebSocket request and an open stream")
        elif head.status < 200:
            raise InvalidState("informational statuses are not relayed")
        payload = _encoded_head("REPLY", head)
        stream.upgraded = head.status == 101
        stream.replied = True
        if end_stream:
            stream.local_open = False
        self._emit(FrameType.REPLY, Flags.FIN if end_stream else 0, stream_id, payload)
        self._forget_if_done(stream)

    def _take_credit(self, stream: _Stream, size: int) -> int:
        return stream.credit.take(min(size, self.max_frame))

    def send_data(self, stream_id: int, data: Bytes, *, end_stream: bool = False) -> int:
        """Send body bytes, as many as the stream's credit allows, in one frame.

        Returns:
            How many bytes of ``data`` were taken. When fewer than ``len(data)``, wait
            for a :class:`~.events.WindowOpened` and send the rest; ``end_stream`` only
            takes effect once every byte was taken.
        """
        stream = self._sendable(stream_id)
        if stream.upgraded:
            raise InvalidState(f"stream {stream_id} is upgraded: send messages, not DATA")
        if self.role is Role.CLIENT and not stream.replied:
            raise InvalidState("send a reply before the response body")
        n = self._take_credit(stream, len(data))
        fin = end_stream and n == len(data)
        if n:
            self._emit(FrameType.DATA, _FIN if fin else 0, stream_id, _frozen(data, n))
        elif fin and not self._end_queued_data(stream_id):
            self._emit(FrameType.DATA, _FIN, stream_id)
        if fin:
            stream.local_open = False
            self._forget_if_done(stream)
        return n

    def _end_queued_data(self, stream_id: int) -> bool:
        """Set FIN on the last queued frame if it is this stream's DATA; True if it was.

        A body usually ends right after its last bytes were sent (a reader learns the
        end only once it passed them on): without this, every response would cost an
        empty DATA frame more, to encode, send, decode and dispatch on both sides.
        """
        if not self._out:
            return False
        header, payload = self._out[-1]
        type_, flags, last_id, length = HEADER.unpack(header)
        if type_ != FrameType.DATA or last_id != stream_id or flags & _FIN:
            return False
        self._out[-1] = (HEADER.pack(type_, flags | _FIN, stream_id, length), payload)
        if self.debug:
            self.logger.debug("> (FIN set on the DATA above) stream=%d", stream_id)
        return True

    def send_message_part(self, stream_id: int, data: Bytes, *, text: bool, final: bool) -> int:
        """Send (part of) a WebSocket message on an upgraded stream.

        Returns:
            How many bytes were taken; when fewer than ``len(data)`` the frame went out
            with MORE, and the rest must follow (as the same message) once credit allows.
        """
        stream = self._sendable(stream_id)
        if not stream.upgraded:
            raise InvalidState(f"stream {stream_id} is not upgraded")
        n = self._take_credit(stream, len(data))
        if n == 0 and data:
            return 0
        flags = Flags.TEXT if text and not stream.send_fragmented else 0
        last = final and n == len(data)
        if not last:
            flags |= Flags.MORE
        stream.send_fragmented = not last
        self._emit(FrameType.MESSAGE, flags, stream_id, _frozen(data, n))
        return n

    def send_close(self, stream_id: int, code: int = 1000, reason: str = "") -> None:
        """End our direction of an upgraded stream with a WebSocket close code."""
        stream = self._sendable(stream_id)
        if not stream.upgraded or stream.send_fragmented:
            raise InvalidState("CLOSE needs an upgraded stream between messages")
        if not 1000 <= code <= 4999:
            code = 1011
        stream.local_open = False
        self._emit(FrameType.CLOSE, 0, stream_id, _U16.pack(code) + reason_bytes(reason))
        self._forget_if_done(stream)

    def reset_stream(self, stream_id: int, code: ResetCode, reason: str = "") -> None:
        """Abort a stream in both directions. Does nothing if it already ended."""
        if self.ended is not None or (stream := self._streams.pop(stream_id, None)) is None:
            return
        self._give_back_growth(stream)
        self._emit(FrameType.RESET, 0, stream_id, _U32.pack(code) + reason_bytes(reason))

    def acknowledge(self, stream_id: int, n: int, now: float | None = None) -> None:
        """Say the application took ``n`` received bytes of a stream; may grant credit.

        ``now`` (seconds, any clock) lets a starved stream's window grow (see ``growth``)."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.remote_open or self.ended is not None:
            return
        window = stream.receive
        increment = window.acknowledge(n, now)
        if increment:
            if window.starved and self._growth_left and window.size < self._max_window:
                # The window held the peer back while the reader kept up: double it (in
                # the budget), granting the extra bytes with this WINDOW.
                extra = min(window.size, self._max_window - window.size, self._growth_left)
                window.grow(extra)
                stream.grown += extra
                self._growth_left -= extra
                increment += extra
            self._emit(FrameType.WINDOW, 0, stream_id, _U32.pack(increment))

    def ping(self, payload: bytes) -> None:
        """Send a PING; the peer's answer arrives as :class:`~.events.PingAcknowledged`."""
        self._check_open()
        if len(payload) != 8:
            raise LocalProtocolError("PING payload must be 8 bytes")
        self._emit(FrameType.PING, 0, 0, payload)

    def close(self, code: GoAwayCode = GoAwayCode.NORMAL, reason: str = "") -> None:
        """End the session with GOAWAY. Does nothing if it already ended."""
        if self.ended is not None:
            return
        self._emit(FrameType.GOAWAY, 0, 0, goaway_frame(code, reason).payload)
        self.ended = SessionEnded(code, reason, by_peer=False)
        self._streams.clear()
