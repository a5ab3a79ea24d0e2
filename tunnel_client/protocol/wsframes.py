"""RFC 6455 framing, sans-I/O: whole messages in, WebSocket frames out, and back.

Both edges of a relayed WebSocket speak real WebSocket frames on a TCP connection (the
relay to the visitor, the client to the local app) and whole messages on the tunnel
(MESSAGE and CLOSE frames). This codec is the part between: it parses the peer's frames
(§5.2), unmasks them (§5.3), joins fragments (§5.4), answers PINGs (§5.5.2) and runs the
closing handshake (§5.5.1), and frames our messages for the peer. DESIGN.md keeps
third-party WebSocket libraries out of this package, and the framing is small.

Extensions are never negotiated (the edges strip ``Sec-WebSocket-Extensions`` before
the handshake), so any RSV bit is a protocol error.

Use::

    codec = WebSocketCodec(mask=True)      # the client side of the TCP connection masks
    codec.receive_data(data)               # bytes from the peer
    for event in codec.events_received():  # Message or Close, in order
        ...
    codec.send_message(b"hi", text=True)
    transport.write(codec.data_to_send())  # after every call that may queue bytes

A peer that breaks the rules gets a CLOSE with 1002 (1007 for bad UTF-8 in a text
message, 1009 for a message over ``max_message``), and the codec reports a
:class:`Close` with that code, as if the peer had closed.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["OP_BINARY", "Close", "Message", "WebSocketCodec", "apply_mask", "frame_head"]

_OP_CONT, _OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA
_DATA_OPS = (_OP_CONT, _OP_TEXT, OP_BINARY)
_CONTROL_OPS = (_OP_CLOSE, _OP_PING, _OP_PONG)
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
DEFAULT_MAX_MESSAGE = 16 << 20

# §7.4.1: codes a peer may not send in a CLOSE frame (reserved, or local-only).
_ILLEGAL_CLOSE = frozenset({1004, 1005, 1006, 1015})


@dataclass(frozen=True, slots=True)
class Message:
    """One whole message from the peer."""

    data: bytes
    text: bool


@dataclass(frozen=True, slots=True)
class Close:
    """The peer closed (or broke the rules: then :attr:`code` is ours, e.g. 1002)."""

    code: int
    reason: str


def _valid_close_code(code: int) -> bool:
    return (1000 <= code <= 1014 and code not in _ILLEGAL_CLOSE) or 3000 <= code <= 4999


_MASK_STEP = 4096
"""Bytes XORed per big-int operation: one operation over a whole 256 KiB message is
quadratic-ish (about 50 MB/s); 4 KiB pieces run at 300-450 MB/s."""


def frame_head(opcode: int, length: int, *, masked: bool = False) -> bytes:
    """The head of one whole frame with a payload of ``length`` (without its mask key)."""
    mask_bit = 0x80 if masked else 0
    if length < 126:
        return bytes((0x80 | opcode, mask_bit | length))
    if length < 1 << 16:
        return bytes((0x80 | opcode, mask_bit | 126)) + _U16.pack(length)
    return bytes((0x80 | opcode, mask_bit | 127)) + _U64.pack(length)


def apply_mask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated (§5.3), in pure Python.

    A C implementation runs at several GB/s: pass one as ``WebSocketCodec(xor=...)``
    where a library provides it (``websockets.speedups.apply_mask``, aiohttp's).
    """
    n = len(data)
    if n <= _MASK_STEP:
        if not n:
            return data
        repeated = (key * (n // 4 + 1))[:n]
        return (int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")).to_bytes(
            n, "little"
        )
    step = _MASK_STEP  # a multiple of 4: every piece starts on the key's first byte
    key_int = int.from_bytes(key * (step // 4), "little")
    view = memoryview(data)
    out = bytearray(n)
    whole = n - n % step
    for i in range(0, whole, step):
        out[i : i + step] = (int.from_bytes(view[i : i + step], "little") ^ key_int).to_bytes(
            step, "little"
        )
    if whole < n:
        out[whole:] = apply_mask(bytes(view[whole:]), key)
    return bytes(out)


class WebSocketCodec:
    """One side of a WebSocket connection's framing (after the opening handshake).

    Args:
        mask: True on the connection's client side (it must mask what it sends, §5.1),
            False on its server side (it must receive only masked frames).
        max_message: the largest message accepted from the peer, in bytes.
        xor: the masking function, ``(data, key) -> data``: :func:`apply_mask` unless a
            faster one is given (a C one is some 30 times faster).
    """

    def __init__(
        self,
        *,
        mask: bool,
        max_message: int = DEFAULT_MAX_MESSAGE,
        xor: Callable[[bytes, bytes], bytes] = apply_mask,
    ) -> None:
        self._xor = xor
        self._mask_out = mask
        self._max_message = max_message
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._events: list[Message | Close] = []
        self._fragments: list[bytes] = []
        self._fragments_size = 0
        self._fragment_text: bool | None = None
        self.close_sent = False
        self.close_received = False

    @property
    def closed(self) -> bool:
        """True once CLOSE went both ways (or the peer broke the rules)."""
        return self.close_sent and self.close_received

    # -- sending --------------------------------------------------------------------------

    def send_message(self, data: bytes, *, text: bool) -> None:
        """Queue one whole message (a single frame); ignored once we sent CLOSE."""
        if not self.close_sent:
            self._frame(_OP_TEXT if text else OP_BINARY, data)

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        """Start (or answer) the closing handshake; once only."""
        if self.close_sent:
            return
        self.close_sent = True
        if code in (1005, 1006) or not _valid_close_code(code):
            self._frame(_OP_CLOSE, b"")  # "no status" travels as an empty CLOSE
            return
        # §5.5: a control payload is at most 125 bytes; cut the reason at a character.
        cut = reason.encode("utf-8", "replace")[:123].decode("utf-8", "ignore").encode()
        self._frame(_OP_CLOSE, _U16.pack(code) + cut)

    def data_to_send(self) -> bytes:
        """The bytes queued for the peer (``b""`` if none)."""
        out, self._out = self._out, []
        return b"".join(out)

    def _frame(self, opcode: int, payload: bytes) -> None:
        head = frame_head(opcode, len(payload), masked=self._mask_out)
        if self._mask_out:
            key = os.urandom(4)
            self._out.append(head + key + self._xor(payload, key))
        else:
            self._out.append(head + payload)

    # -- receiving ------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; then read :meth:`events_received` and send what's queued."""
        if self.close_received:
            return  # §5.5.1: nothing after a CLOSE counts
        self._buffer += data
        while self._parse_one():  # False once more bytes are needed, or after a CLOSE
            pass

    def events_received(self) -> list[Message | Close]:
        """Messages and a close, in the order they arrived."""
        events, self._events = self._events, []
        return events

    def _fail(self, code: int, reason: str) -> bool:
        self._buffer.clear()
        self.close_received = True
        self._events.append(Close(code, reason))
        self.send_close(code, reason)
        return False

    def _parse_one(self) -> bool:
        """Take one frame off the buffer; False when more bytes are needed (or it failed)."""
        buf = self._buffer
        if len(buf) < 2:
            return False
        first, second = buf[0], buf[1]
        fin, opcode, masked, length = first & 0x80, first & 0x0F, second & 0x80, second & 0x7F
        offset = 2
        if first & 0x70:
            return self._fail(1002, "reserved bits set without an extension")
        if length == 126:
            if len(buf) < 4:
                return False
            (length,) = _U16.unpack_from(buf, 2)
            offset = 4
        elif length == 127:
            if len(buf) < 10:
                return False
            (length,) = _U64.unpack_from(buf, 2)
            offset = 10
        if bool(masked) == self._mask_out:
            return self._fail(1002, "frame masking is the wrong way round for this side")
        if opcode in _CONTROL_OPS and (length > 125 or not fin):
            return self._fail(1002, "control frames are short and never fragmented")
        if opcode not in _DATA_OPS and opcode not in _CONTROL_OPS:
            return self._fail(1002, f"unknown opcode {opcode:#x}")
        if opcode in _DATA_OPS and self._fragments_size + length > self._max_message:
            return self._fail(1009, f"message over {self._max_message} bytes")
        key_end = offset + (4 if masked else 0)
        end = key_end + length
        if len(buf) < end:
            return False
        payload = bytes(buf[key_end:end])
        if masked:
            payload = self._xor(payload, bytes(buf[offset:key_end]))
        del buf[:end]
        return self._on_frame(opcode, bool(fin), payload)

    def _on_frame(self, opcode: int, fin: bool, payload: bytes) -> bool:
        if opcode == _OP_PING:
            if not self.close_sent:
                self._frame(_OP_PONG, payload)
            return True
        if opcode == _OP_PONG:
            return True
        if opcode == _OP_CLOSE:
            return self._on_close(payload)
        if opcode == _OP_CONT:
            if self._fragment_text is None:
                return self._fail(1002, "continuation frame without a message to continue")
        elif self._fragment_text is not None:
            return self._fail(1002, "new message before the last one ended")
        else:
            self._fragment_text = opcode == _OP_TEXT
        self._fragments.append(payload)
        self._fragments_size += len(payload)
        if not fin:
            return True
        data = b"".join(self._fragments)
        text = self._fragment_text
        self._fragments, self._fragments_size, self._fragment_text = [], 0, None
        if text:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                return self._fail(1007, "text message is not valid UTF-8")
        self._events.append(Message(data, text))
        return True

    def _on_close(self, payload: bytes) -> bool:
        if len(payload) == 1:
            return self._fail(1002, "CLOSE payload of one byte")
        code, reason = 1005, ""
        if payload:
            (code,) = _U16.unpack_from(payload)
            if not _valid_close_code(code):
                return self._fail(1002, f"invalid close code {code}")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                return self._fail(1007, "close reason is not valid UTF-8")
        self.close_received = True
        self._buffer.clear()
        self._events.append(Close(code, reason))
        return False
