"""Hostile tunnel clients: hypothesis strategies for what they send, and what the relay must do.

A :class:`Script` is one hostile connection to ``/_tunnel``: either a first message sent
instead of a proper HELLO (``prehello``), or a valid HELLO, some visitors whose requests
open real streams on the session, and then a few *sequences* of transport messages built
from frames that break (or keep) the protocol's rules: unknown types, bad flags, wrong
lengths, truncation, ids never opened, DATA beyond credit, WINDOW overflow, a second
REPLY, floods of tiny frames, text messages, garbage.

What the relay must do is decided by :class:`Oracle`, the protocol's own sans-I/O
:class:`~tunnel_client.protocol.mux.Mux` in the relay role fed the same bytes. The relay
process does more than its mux between two of our messages (it flushes answers, grants
credit once a visitor took bytes, resets a stream it finished with), and all of that
only ever makes it *more* permissive, so two oracles bracket it: a strict one that does
none of it and a permissive one that does all of it at once. When both agree the
outcome is exact; when they disagree, the relay may end the session or keep it, but
keep it only if the permissive oracle does.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import TypeVar

from hypothesis import strategies as st

from relay_server.endpoint import TRANSPORT_MESSAGE_LIMIT
from tunnel_client.protocol.errors import GoAwayCode, RemoteProtocolError
from tunnel_client.protocol.events import DataReceived, ReplyReceived
from tunnel_client.protocol.frames import Flags, FrameType, decode_frames
from tunnel_client.protocol.handshake import PROTOCOL_VERSION, Hello
from tunnel_client.protocol.heads import RequestHead
from tunnel_client.protocol.mux import Mux, Role
from tunnel_client.protocol.window import MAX_WINDOW, MIN_WINDOW

from .rawclient import Alive, Closed, GoAway, Outcome, hello_message, raw_frame

__all__ = [
    "RELAY_WINDOW",
    "Oracle",
    "Script",
    "expected_handshake",
    "scripts",
]

RELAY_WINDOW = MIN_WINDOW
"""The test relay runs with ``--stream-window 16KiB``: credit is easy to overrun."""

TRANSPORT_LIMIT = TRANSPORT_MESSAGE_LIMIT
"""The relay's WebSocket refuses larger messages itself (close code 1009); messages
between the protocol's bound and this get GOAWAY PROTOCOL_ERROR from the decoder."""

VISITOR_HEAD = RequestHead("GET", "/")

_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")

Message = bytes | str


# -- payloads ---------------------------------------------------------------------------


def _hello_payload(**fields: object) -> bytes:
    obj: dict[str, object] = {
        "version": PROTOCOL_VERSION,
        "window": MIN_WINDOW,
        "max_streams": 8,
        "client_secret": "s" * 24,
    }
    obj.update(fields)
    return json.dumps({k: v for k, v in obj.items() if v is not None}).encode()


HELLO_PAYLOADS = [
    _hello_payload(),
    _hello_payload(extra="ignored", agent="x" * 200),  # unknown keys are fine
    _hello_payload(window=MAX_WINDOW, max_streams=65536, ttl_s=60),
    _hello_payload(version=2),
    _hello_payload(version="1"),
    _hello_payload(window=MIN_WINDOW - 1),
    _hello_payload(window=MAX_WINDOW + 1),
    _hello_payload(window=True),
    _hello_payload(max_streams=0),
    _hello_payload(client_secret="short"),
    _hello_payload(client_secret=None),
    _hello_payload(client_secret=12345678901234567890),
    _hello_payload(token="t" * 4097),
    _hello_payload(agent="a" * 201),
    _hello_payload(ttl_s=0),
    _hello_payload(lease="not-a-lease"),
    _hello_payload(lease="eyJzdWIiOiJ4In0.AAAA"),
    b"{",
    b"[]",
    b"null",
    b'"hello"',
    b"\xff\xfe{}",
    b"[" * 5000 + b"]" * 5000,
]

OPEN_PAYLOADS = [
    VISITOR_HEAD.encode(),
    b'{"method":"GET","target":"/x","websocket":true}',
    b"{}",
    b"[",
]


def _reply(status: object, headers: object = ()) -> bytes:
    return json.dumps({"status": status, "headers": headers}).encode()


REPLY_PAYLOADS = [
    # Well-formed heads the relay can pass on as they are.
    _reply(200),
    _reply(200, [["Content-Type", "text/plain"], ["X-A", "1"], ["X-A", "2"]]),
    _reply(201),
    _reply(204),
    _reply(302, [["Location", "/elsewhere"]]),
    _reply(304),
    _reply(404),
    _reply(500),
    _reply(599),
    # Heads the relay must refuse.
    _reply(101, [["Upgrade", "websocket"]]),  # no visitor asked for a WebSocket
    _reply(100),
    _reply(199),
    _reply(600),
    _reply(99),
    _reply("200"),
    _reply(True),
    _reply(None),
    _reply(200, [["bad name", "v"]]),
    _reply(200, [["X-Bad", "a\r\nInjected: 1"]]),
    _reply(200, [["X-Nul", "a\x00b"]]),
    _reply(200, [["X-Only-Name"]]),
    _reply(200, {"X": "y"}),
    _reply(200, [["X", "v"]] * 513),
    b"{",
    b"[]",
    b"\x00\x01",
    b'{"headers": []}',
]

STREAM_FRAME_TYPES = [
    FrameType.OPEN,
    FrameType.REPLY,
    FrameType.DATA,
    FrameType.WINDOW,
    FrameType.RESET,
    FrameType.MESSAGE,
    FrameType.CLOSE,
]

LEGAL_FLAGS: dict[int, list[int]] = {
    FrameType.OPEN: [0, Flags.FIN],
    FrameType.REPLY: [0, Flags.FIN],
    FrameType.DATA: [0, Flags.FIN],
    FrameType.PING: [0, Flags.ACK],
    FrameType.MESSAGE: [0, Flags.TEXT, Flags.MORE, Flags.TEXT | Flags.MORE],
}

UNKNOWN_TYPES = [0x00, 0x0C, 0x0D, 0x7F, 0x80, 0xFF]

DATA_SIZES = [
    0,
    1,
    2,
    100,
    4096,
    RELAY_WINDOW // 2,
    RELAY_WINDOW - 1,
    RELAY_WINDOW,
    RELAY_WINDOW + 1,
]
BIG_DATA_SIZES = [65536, 1 << 20, (1 << 20) + 1]  # the last is over any frame's limit

WINDOW_INCREMENTS = [0, 1, 2, 1000, 65536, MAX_WINDOW - MIN_WINDOW, MAX_WINDOW, 2**31, 2**32 - 1]


# -- strategies -------------------------------------------------------------------------
#
# Only ``scripts()`` is a hypothesis strategy; the helpers below draw from a handful of
# cached primitive strategies through it. Building strategies on every draw (nested
# composites, sampled_from over fresh lists) made generation slower than the relay.

T = TypeVar("T")
_INTS: dict[tuple[int, int], st.SearchStrategy[int]] = {}
_PING_PAYLOAD = st.binary(min_size=8, max_size=8)
_SMALL_BINARY = st.binary(max_size=16)
_GARBAGE = st.binary(min_size=1, max_size=40)
_U32_ANY = (0, 2**32 - 1)


def _int(draw: st.DrawFn, low: int, high: int) -> int:
    strategy = _INTS.get((low, high))
    if strategy is None:
        strategy = _INTS[(low, high)] = st.integers(low, high)
    return draw(strategy)


def _pick(draw: st.DrawFn, options: Sequence[T]) -> T:
    return options[_int(draw, 0, len(options) - 1)]


def _chance(draw: st.DrawFn, one_in: int) -> bool:
    return _int(draw, 0, one_in - 1) == 0


def _stream_id(draw: st.DrawFn, live: list[int]) -> int:
    """Mostly ids of live streams; else ids never opened here (some of them live in
    other sessions, like the bystander's), odd ids, 0 and the extremes."""
    kind = _int(draw, 0, 3)
    if kind <= 1 and live:
        return _pick(draw, live)
    if kind <= 2:
        never = 2 * len(live) + 2
        return _pick(draw, [0, 1, 3, never, never + 2, 998, 4000, 2**31, 2**32 - 2, 2**32 - 1])
    return _int(draw, *_U32_ANY)


REASONS = [b"", b"why", b"\xff\xfe not utf-8", "é".encode() * 300, b"r" * 1025]
CLOSE_CODES = [1000, 1001, 1011, 0, 999, 5000, 65535]


def _payload(draw: st.DrawFn, type_: int) -> bytes:
    """A payload for a frame type: right-sized or not, valid or not."""
    if _chance(draw, 16):
        return draw(_SMALL_BINARY)  # anything at all
    match type_:
        case FrameType.HELLO | FrameType.WELCOME:
            return _pick(draw, HELLO_PAYLOADS)
        case FrameType.OPEN:
            return _pick(draw, OPEN_PAYLOADS)
        case FrameType.REPLY:
            return _pick(draw, REPLY_PAYLOADS)
        case FrameType.DATA | FrameType.MESSAGE:
            big = _chance(draw, 30)  # rare: they cost time to send
            return b"d" * _pick(draw, BIG_DATA_SIZES if big else DATA_SIZES)
        case FrameType.WINDOW:
            if _int(draw, 0, 1):
                return _U32.pack(_pick(draw, WINDOW_INCREMENTS))
            return _U32.pack(_int(draw, *_U32_ANY))
        case FrameType.RESET | FrameType.GOAWAY:
            code = _int(draw, 0, 12) if _int(draw, 0, 1) else _int(draw, *_U32_ANY)
            return _U32.pack(code) + _pick(draw, REASONS)
        case FrameType.PING:
            return draw(_PING_PAYLOAD)
        case FrameType.CLOSE:
            return _U16.pack(_pick(draw, CLOSE_CODES)) + _pick(draw, REASONS)
        case _:
            return draw(_SMALL_BINARY)


ALL_TYPES: list[int] = list(FrameType)
SESSION_TYPES = [FrameType.PING, FrameType.GOAWAY, FrameType.HELLO]
ODD_TYPES = [FrameType.WELCOME, *UNKNOWN_TYPES]


def _frame(draw: st.DrawFn, live: list[int]) -> bytes:
    """One frame, legal or not, as raw bytes."""
    kind = _int(draw, 0, 9)
    if kind <= 5:
        type_: int = _pick(draw, STREAM_FRAME_TYPES)
        stream_id = _stream_id(draw, live)
    elif kind <= 7:
        type_ = _pick(draw, SESSION_TYPES)
        stream_id = 0 if _int(draw, 0, 7) else _stream_id(draw, live)
    elif kind == 8:
        type_ = _pick(draw, ODD_TYPES)
        stream_id = _stream_id(draw, live)
    else:
        type_ = _pick(draw, ALL_TYPES)
        stream_id = _stream_id(draw, live)
    flags = _pick(draw, LEGAL_FLAGS.get(type_, [0])) if _int(draw, 0, 7) else _int(draw, 0, 255)
    return raw_frame(type_, flags, stream_id, _payload(draw, type_))


def _legal_step(draw: st.DrawFn, live: list[int]) -> bytes:
    """A step a well-behaved client might take on a live stream (legal or not depends on
    what came before: DATA before REPLY is not)."""
    if not live:
        return raw_frame(FrameType.PING, _pick(draw, [0, Flags.ACK]), 0, b"12345678")
    sid = _pick(draw, live)
    fin = _pick(draw, [0, Flags.FIN])
    match _int(draw, 0, 4):
        case 0:
            return raw_frame(FrameType.REPLY, fin, sid, _pick(draw, REPLY_PAYLOADS[:9]))
        case 1:
            return raw_frame(FrameType.DATA, fin, sid, b"b" * _pick(draw, [1, 100, 4096]))
        case 2:
            return raw_frame(FrameType.WINDOW, 0, sid, _U32.pack(_int(draw, 1, 1 << 20)))
        case 3:
            return raw_frame(FrameType.RESET, 0, sid, _U32.pack(0) + b"changed my mind")
        case _:
            return raw_frame(FrameType.PING, 0, 0, draw(_PING_PAYLOAD))


def _flood(draw: st.DrawFn, live: list[int]) -> bytes:
    """Many tiny frames in one message."""
    count = _pick(draw, [10, 500, 4096, 4097, 9000])
    sid = _pick(draw, live) if live else 2
    match _int(draw, 0, 3):
        case 0:
            return raw_frame(FrameType.PING, 0, 0, b"flooding") * count
        case 1:
            return raw_frame(FrameType.WINDOW, 0, sid, _U32.pack(1)) * count
        case 2:
            # A response whose body comes one byte per frame: beyond credit past 16 KiB.
            reply = raw_frame(FrameType.REPLY, 0, sid, REPLY_PAYLOADS[0])
            return reply + raw_frame(FrameType.DATA, 0, sid, b"x") * min(count * 4, 20000)
        case _:
            return raw_frame(FrameType.PING, Flags.ACK, 0, b"unasked!") * count


BODY_TOTALS = [100, RELAY_WINDOW - 1, RELAY_WINDOW, RELAY_WINDOW + 1, RELAY_WINDOW + 4096]
BODY_CHUNKS = [1000, 4096, 16384]


def _response_body(draw: st.DrawFn, live: list[int]) -> bytes:
    """A response head and body on a live stream, its total around the relay's window:
    legal up to the window, DATA beyond credit past it (no WINDOW came in between)."""
    sid = _pick(draw, live) if live else 2
    total = _pick(draw, BODY_TOTALS)
    chunk = _pick(draw, BODY_CHUNKS)
    frames = [raw_frame(FrameType.REPLY, 0, sid, REPLY_PAYLOADS[0])] if _int(draw, 0, 3) else []
    for offset in range(0, total, chunk):
        last = offset + chunk >= total
        fin = Flags.FIN if last and _int(draw, 0, 1) else 0
        frames.append(raw_frame(FrameType.DATA, fin, sid, b"r" * min(chunk, total - offset)))
    return b"".join(frames)


TEXT_MESSAGES = ["hello", "", '{"version":1}']
OVERSIZE_TAILS = [b"\x05", b"z" * 2000]


def _message(draw: st.DrawFn, live: list[int]) -> Message:
    """One transport message: frames back to back, perhaps mangled, or not frames at all."""
    kind = _int(draw, 0, 39)
    if kind == 0:
        return _pick(draw, TEXT_MESSAGES)  # text: never allowed
    if kind == 1:
        return b""
    if kind == 2:
        return draw(_GARBAGE)
    if kind == 3:
        return _flood(draw, live)
    if kind in (5, 6):
        return _response_body(draw, live)
    if kind == 4 and _chance(draw, 10):
        # Over the protocol's message limit, or even the WebSocket's.
        big = raw_frame(FrameType.DATA, 0, 2, b"z" * (1 << 20)) * 4
        return big + _pick(draw, OVERSIZE_TAILS)
    count = _int(draw, 1, 4)
    data = b"".join(
        _legal_step(draw, live) if _int(draw, 0, 2) == 0 else _frame(draw, live)
        for _ in range(count)
    )
    match _int(draw, 0, 9):
        case 0:
            return data[: -_int(draw, 1, min(12, len(data)))]  # truncated
        case 1:
            return data + draw(_SMALL_BINARY) + b"\x00"  # trailing junk
        case _:
            return data


class Script:
    """One hostile connection (not a dataclass: hypothesis prints it with our short repr)."""

    def __init__(
        self,
        *,
        prehello: Message | None = None,
        window: int = MIN_WINDOW,
        visitors: int = 0,
        sequences: list[list[Message]] | None = None,
    ) -> None:
        self.prehello = prehello
        """Sent instead of a HELLO; None: a valid HELLO is sent."""
        self.window = window
        """The receive window the HELLO announces (the relay's send credit per stream)."""
        self.visitors = visitors
        """GET requests made to the link before the sequences: streams that really exist."""
        self.sequences = sequences or []

    def __repr__(self) -> str:
        def short(m: Message) -> str:
            return repr(m[:60]) + (f"...({len(m)} bytes)" if len(m) > 60 else "")

        if self.prehello is not None:
            return f"Script(prehello={short(self.prehello)})"
        seqs = ", ".join("[" + ", ".join(map(short, seq)) + "]" for seq in self.sequences)
        return f"Script(window={self.window}, visitors={self.visitors}, sequences=[{seqs}])"


def _prehello(draw: st.DrawFn) -> Message:
    match _int(draw, 0, 5):
        case 0 | 1:
            payload = _pick(draw, HELLO_PAYLOADS)
            flags = 0 if _int(draw, 0, 5) else _int(draw, 1, 255)
            stream_id = 0 if _int(draw, 0, 5) else _int(draw, 1, 2**32 - 1)
            return raw_frame(FrameType.HELLO, flags, stream_id, payload)
        case 2:
            # A valid HELLO with more frames after it in the same message.
            return hello_message() + _frame(draw, [])
        case 3:
            return _frame(draw, [])  # anything but a HELLO first
        case 4:
            return hello_message()[: -_int(draw, 1, 20)]  # truncated
        case _:
            return _message(draw, [])


WINDOWS = [MIN_WINDOW, 65536, MAX_WINDOW - 1, MAX_WINDOW]
VISITORS = [0, 0, 1, 2, 3]


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    """A hostile connection: a broken handshake, or a session and sequences."""
    if _chance(draw, 5):
        return Script(prehello=_prehello(draw))
    window = _pick(draw, WINDOWS)
    visitors = _pick(draw, VISITORS)
    live = [2 * (i + 1) for i in range(visitors)]
    sequences = [
        [_message(draw, live) for _ in range(_int(draw, 1, 3))] for _ in range(_int(draw, 1, 3))
    ]
    return Script(window=window, visitors=visitors, sequences=sequences)


# -- expected outcomes ------------------------------------------------------------------


def expected_handshake(message: Message) -> GoAwayCode | None:
    """How the relay answers a first message: the GOAWAY code, or None for a WELCOME."""
    if isinstance(message, str):
        return GoAwayCode.PROTOCOL_ERROR
    try:
        frames = decode_frames(message)
        if len(frames) != 1 or frames[0].type is not FrameType.HELLO:
            return GoAwayCode.PROTOCOL_ERROR
        hello = Hello.decode(frames[0].payload)
    except RemoteProtocolError:
        return GoAwayCode.PROTOCOL_ERROR
    if hello.version != PROTOCOL_VERSION:
        return GoAwayCode.VERSION_MISMATCH
    if hello.lease is not None:
        return GoAwayCode.AUTH_FAILED  # nobody can forge a lease
    return None


def handshake_outcome_ok(message: Message, outcome: Outcome) -> bool:
    if not isinstance(message, str) and len(message) > TRANSPORT_LIMIT:
        return isinstance(outcome, Closed)
    code = expected_handshake(message)
    if code is None:
        return isinstance(outcome, Alive)
    return isinstance(outcome, GoAway) and outcome.code is code and bool(outcome.reason)


class Oracle:
    """The relay's mux for one hostile session, fed what the hostile client sends."""

    def __init__(self, *, permissive: bool, window: int, visitors: int) -> None:
        self.permissive = permissive
        self.mux = Mux(Role.RELAY, window=RELAY_WINDOW, peer_window=window)
        for _ in range(visitors):
            self.mux.open_stream(VISITOR_HEAD, end_stream=True)
        self.mux.data_to_send()
        self.transport_closed = False

    def feed(self, message: Message) -> None:
        if self.mux.ended is not None or self.transport_closed:
            return
        if isinstance(message, str):
            # The protocol is binary only: a text message ends the session.
            self.mux.close(GoAwayCode.PROTOCOL_ERROR, "text message")
            return
        if len(message) > TRANSPORT_LIMIT:
            self.transport_closed = True
            return
        self.mux.receive_message(message)
        events = self.mux.events_received()
        if not self.permissive:
            return
        for event in events:
            if isinstance(event, DataReceived) and event.data:
                self.mux.acknowledge(event.stream_id, len(event.data))
            elif (
                isinstance(event, ReplyReceived)
                and event.head.status in (204, 304)
                and not event.end_stream
            ):
                # The relay answers the visitor at once and drops the rest.
                self.mux.reset_stream(event.stream_id, 0)
        self.mux.data_to_send()  # the relay's write loop ran: answers are out

    def probe(self) -> None:
        """Feed the probe PING that follows every sequence (it needs an answer too)."""
        self.feed(raw_frame(FrameType.PING, 0, 0, b"PRBxxxxx"))

    def probe_answered(self) -> None:
        """The probe was answered: the relay flushed everything queued before it."""
        self.mux.data_to_send()

    @property
    def state(self) -> Outcome:
        ended = self.mux.ended
        if self.transport_closed:
            return Closed(1009)
        if ended is None:
            return Alive()
        if ended.by_peer:
            return Closed(None)
        return GoAway(ended.code, ended.reason)


def same_kind(a: Outcome, b: Outcome) -> bool:
    """Outcomes that agree on what happened (reasons and close codes aside)."""
    if isinstance(a, GoAway) and isinstance(b, GoAway):
        return a.code is b.code
    return type(a) is type(b)


def session_outcome_ok(strict: Outcome, permissive: Outcome, actual: Outcome) -> bool:
    """Whether the relay's reaction fits between the strict and the permissive oracle."""
    if isinstance(actual, GoAway) and not actual.reason:
        return False
    if same_kind(strict, permissive):
        return same_kind(strict, actual)
    if isinstance(actual, Alive):
        return isinstance(permissive, Alive)
    return isinstance(actual, Closed) or actual.code is GoAwayCode.PROTOCOL_ERROR
