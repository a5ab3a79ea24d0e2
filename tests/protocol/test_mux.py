"""The stream multiplexer (tunnel_client/protocol/mux.py), driven through a MuxPair."""

from __future__ import annotations

import logging
import struct

import pytest

from tests.protocol.helpers import (
    GET,
    OK,
    POST,
    SWITCH,
    WS,
    MuxPair,
    frames_of,
    message,
    open_frame,
)
from tunnel_client.protocol.errors import (
    GoAwayCode,
    HeadTooLarge,
    InvalidState,
    LocalProtocolError,
    ResetCode,
    SessionClosed,
)
from tunnel_client.protocol.events import (
    CloseReceived,
    DataReceived,
    MessageReceived,
    PingAcknowledged,
    ReplyReceived,
    ResetReceived,
    SessionEnded,
    StreamOpened,
    WindowOpened,
)
from tunnel_client.protocol.frames import (
    HEADER,
    MAX_HEAD_PAYLOAD,
    MAX_PAYLOAD,
    MAX_REASON_BYTES,
    Flags,
    Frame,
    FrameType,
    decode_frames,
)
from tunnel_client.protocol.heads import RequestHead, ResponseHead
from tunnel_client.protocol.mux import MAX_CONTROL_BACKLOG, MESSAGE_TARGET_BYTES, Mux, Role
from tunnel_client.protocol.window import MAX_WINDOW, MIN_WINDOW

U32 = struct.Struct("!I")


def window_frame(stream_id: int, increment: int) -> Frame:
    return Frame(FrameType.WINDOW, 0, stream_id, U32.pack(increment))


def reset_frame(stream_id: int, code: int = ResetCode.CANCEL, reason: bytes = b"") -> Frame:
    return Frame(FrameType.RESET, 0, stream_id, U32.pack(code) + reason)


def data_frame(stream_id: int, data: bytes, *, fin: bool = False) -> Frame:
    return Frame(FrameType.DATA, Flags.FIN if fin else 0, stream_id, data)


def assert_protocol_error(
    mux: Mux, match: str, code: GoAwayCode = GoAwayCode.PROTOCOL_ERROR
) -> None:
    """The mux ended the session for the peer's fault: one SessionEnded, one GOAWAY."""
    events = mux.events_received()
    assert events, "expected a SessionEnded event"
    ended = events[-1]
    assert isinstance(ended, SessionEnded)
    assert not ended.by_peer
    assert ended.code is code
    assert match in ended.reason
    assert mux.ended == ended
    assert mux.open_streams == 0
    goaway = frames_of(mux.data_to_send())[-1]
    assert goaway.type is FrameType.GOAWAY
    assert U32.unpack_from(goaway.payload)[0] == code
    assert match in goaway.payload[4:].decode()
    # Nothing the peer sends afterwards is processed or answered.
    mux.receive_message(message(Frame(FrameType.PING, 0, 0, b"12345678")))
    assert mux.events_received() == []
    assert mux.data_to_send() == []


# -- construction and introspection ------------------------------------------------------


def test_constructor_validates_sizes() -> None:
    with pytest.raises(LocalProtocolError, match="max_frame"):
        Mux(Role.RELAY, max_frame=0)
    with pytest.raises(LocalProtocolError, match="max_frame"):
        Mux(Role.RELAY, max_frame=MAX_PAYLOAD + 1)
    with pytest.raises(LocalProtocolError, match="window size"):
        Mux(Role.RELAY, window=MIN_WINDOW - 1)


def test_nothing_to_send_or_report_at_first() -> None:
    pair = MuxPair()
    assert pair.relay.data_to_send() == []
    assert pair.relay.events_received() == []
    assert pair.relay.pending_bytes == 0
    assert pair.relay.open_streams == 0
    assert not pair.relay.is_live(2)
    assert not pair.relay.can_send(2)
    assert pair.relay.credit(2) == 0


# -- stream lifecycle --------------------------------------------------------------------


def test_request_without_body_and_response_with_body() -> None:
    pair = MuxPair()
    sid = pair.relay.open_stream(GET, end_stream=True)
    assert sid == 2
    assert pair.relay.is_live(sid) and not pair.relay.can_send(sid)
    assert pair.pump().client == [StreamOpened(sid, GET, True)]
    assert pair.client.is_live(sid) and pair.client.can_send(sid)

    pair.client.send_reply(sid, OK)
    assert pair.client.send_data(sid, b"hello ") == 6
    assert pair.client.send_data(sid, b"world", end_stream=True) == 5
    assert not pair.client.is_live(sid)  # both directions ended: forgotten
    assert pair.pump().relay == [
        ReplyReceived(sid, OK, False),
        DataReceived(sid, b"hello ", False),
        DataReceived(sid, b"world", True),
    ]
    assert pair.relay.open_streams == pair.client.open_streams == 0


def test_request_with_body_and_reply_without() -> None:
    pair = MuxPair()
    sid = pair.open(POST, end_stream=False)
    assert pair.relay.send_data(sid, bytearray(b"abc")) == 3
    assert pair.relay.send_data(sid, memoryview(b"def"), end_stream=True) == 3
    assert pair.pump().client == [
        DataReceived(sid, b"abc", False),
        DataReceived(sid, b"def", True),
    ]
    pair.client.send_reply(sid, ResponseHead(204), end_stream=True)
    assert pair.pump().relay == [ReplyReceived(sid, ResponseHead(204), True)]
    assert pair.relay.open_streams == pair.client.open_streams == 0


def test_fin_alone_in_an_empty_data_frame() -> None:
    pair = MuxPair()
    sid = pair.open(POST, end_stream=False)
    assert pair.relay.send_data(sid, b"", end_stream=True) == 0
    (frame,) = frames_of(pair.relay.data_to_send())
    assert frame == data_frame(sid, b"", fin=True)
    pair.client.receive_message(message(frame))
    assert pair.client.events_received() == [DataReceived(sid, b"", True)]


def test_an_end_right_after_the_last_bytes_rides_on_their_frame() -> None:
    pair = MuxPair()
    sid = pair.open(GET)
    pair.client.send_reply(sid, OK)
    assert pair.client.send_data(sid, b"body") == 4
    assert pair.client.send_data(sid, b"", end_stream=True) == 0
    assert not pair.client.is_live(sid)
    reply, data = frames_of(pair.client.data_to_send())
    assert reply.type is FrameType.REPLY and not reply.fin
    assert data == data_frame(sid, b"body", fin=True)
    pair.relay.receive_message(message(reply, data))
    assert pair.relay.events_received() == [
        ReplyReceived(sid, OK, False),
        DataReceived(sid, b"body", True),
    ]


def test_an_end_after_another_frame_or_a_flush_is_a_frame_of_its_own() -> None:
    pair = MuxPair()
    first, second = pair.open(GET), pair.open(GET)
    for sid in (first, second):
        pair.client.send_reply(sid, OK)
        pair.client.send_data(sid, b"x")
    pair.client.send_data(first, b"", end_stream=True)  # the last frame is second's
    *_, last = frames_of(pair.client.data_to_send())
    assert last == data_frame(first, b"", fin=True)
    pair.client.send_data(second, b"", end_stream=True)  # its DATA already went out
    assert frames_of(pair.client.data_to_send()) == [data_frame(second, b"", fin=True)]


def test_stream_ids_are_even_and_increase() -> None:
    pair = MuxPair()
    ids = [pair.relay.open_stream(GET, end_stream=True) for _ in range(3)]
    assert ids == [2, 4, 6]
    events = pair.pump().client
    assert [e.stream_id for e in events if isinstance(e, StreamOpened)] == ids


def test_response_can_finish_before_the_request_body() -> None:
    pair = MuxPair()
    sid = pair.open(POST, end_stream=False)
    pair.client.send_reply(sid, ResponseHead(413), end_stream=True)
    assert pair.client.is_live(sid) and not pair.client.can_send(sid)
    pair.pump()
    assert pair.relay.send_data(sid, b"late", end_stream=True) == 4
    assert not pair.relay.is_live(sid)
    assert pair.pump().client == [DataReceived(sid, b"late", True)]
    assert not pair.client.is_live(sid)


def test_local_misuse_raises_invalid_state() -> None:
    pair = MuxPair()
    with pytest.raises(InvalidState, match="only the relay"):
        pair.client.open_stream(GET)
    sid = pair.open(POST, end_stream=False)
    with pytest.raises(InvalidState, match="only the client"):
        pair.relay.send_reply(sid, OK)
    with pytest.raises(InvalidState, match="reply before"):
        pair.client.send_data(sid, b"x")
    with pytest.raises(InvalidState, match="informational"):
        pair.client.send_reply(sid, ResponseHead(103))
    with pytest.raises(InvalidState, match="101"):
        pair.client.send_reply(sid, SWITCH)  # the request asked for no WebSocket
    with pytest.raises(InvalidState, match="not upgraded"):
        pair.client.send_message_part(sid, b"x", text=True, final=True)
    with pytest.raises(InvalidState, match="upgraded stream"):
        pair.client.send_close(sid)
    pair.client.send_reply(sid, OK)
    with pytest.raises(InvalidState, match="already has a reply"):
        pair.client.send_reply(sid, OK)
    pair.client.send_data(sid, b"", end_stream=True)
    with pytest.raises(InvalidState, match="has ended"):
        pair.client.send_data(sid, b"more")
    with pytest.raises(InvalidState, match="has ended"):
        pair.client.send_reply(99, OK)
    pair.relay.send_data(sid, b"", end_stream=True)
    with pytest.raises(InvalidState, match="has ended"):
        pair.relay.send_data(sid, b"x")


# -- reset -------------------------------------------------------------------------------


def test_relay_resets_a_stream() -> None:
    pair = MuxPair()
    sid = pair.open(POST, end_stream=False)
    pair.client.send_reply(sid, OK)
    pair.client.send_data(sid, b"queued before the reset arrived")
    pair.relay.reset_stream(sid, ResetCode.CANCEL, "visitor left")
    assert not pair.relay.is_live(sid)
    # The client's DATA crosses the RESET: the relay ignores it without complaint.
    pumped = pair.pump()
    assert pumped.relay == []
    assert pumped.client == [ResetReceived(sid, ResetCode.CANCEL, "visitor left")]
    assert pair.relay.ended is None and pair.client.ended is None
    assert not pair.client.is_live(sid)
    with pytest.raises(InvalidState):
        pair.client.send_data(sid, b"x")


def test_client_resets_a_stream_and_late_frames_are_ignored() -> None:
    pair = MuxPair()
    sid = pair.open(WS, end_stream=False)
    pair.relay.send_data(sid, b"body in flight")
    pair.client.reset_stream(sid, ResetCode.UPSTREAM_UNAVAILABLE, "nothing on port 7860")
    pumped = pair.pump()
    assert pumped.client == []
    assert pumped.relay == [
        ResetReceived(sid, ResetCode.UPSTREAM_UNAVAILABLE, "nothing on port 7860")
    ]
    # Every kind of stream frame for a forgotten stream is ignored.
    for frame in [
        data_frame(sid, b"x", fin=True),
        window_frame(sid, 10),
        reset_frame(sid),
        Frame(FrameType.MESSAGE, 0, sid, b"m"),
        Frame(FrameType.CLOSE, 0, sid, b"\x03\xe8"),
    ]:
        pair.client.receive_message(message(frame))
    pair.relay.receive_message(message(Frame(FrameType.REPLY, 0, sid, OK.encode())))
    assert pair.client.events_received() == pair.relay.events_received() == []
    assert pair.client.data_to_send() == pair.relay.data_to_send() == []
    assert pair.client.ended is None and pair.relay.ended is None


def test_reset_of_an_ended_stream_sends_nothing() -> None:
    pair = MuxPair()
    pair.relay.reset_stream(2, ResetCode.CANCEL)
    sid = pair.open(GET)
    pair.client.send_reply(sid, OK, end_stream=True)
    pair.client.reset_stream(sid, ResetCode.CANCEL)
    pair.pump()
    pair.client.reset_stream(sid, ResetCode.CANCEL)
    assert pair.client.data_to_send() == []


def test_reset_reasons_are_bounded_and_unknown_codes_mapped() -> None:
    pair = MuxPair()
    sid = pair.open(GET)
    pair.client.reset_stream(sid, ResetCode.INTERNAL_ERROR, "\u00e9" * MAX_REASON_BYTES)
    (frame,) = frames_of(pair.client.data_to_send())
    assert len(frame.payload) <= 4 + MAX_REASON_BYTES
    frame.payload[4:].decode()  # cut on a character boundary
    sid = pair.open(GET)
    pair.client.receive_message(message(reset_frame(sid, 999, b"\xff bad utf-8")))
    assert pair.client.events_received() == [
        ResetReceived(sid, ResetCode.INTERNAL_ERROR, "\ufffd bad utf-8")
    ]


# -- heads too large to send: refused locally, nothing changes -----------------------------


def padded_request(encoded_size: int, *, websocket: bool = False) -> RequestHead:
    """A request head whose OPEN payload is exactly ``encoded_size`` bytes."""
    base = RequestHead("GET", "/", (("X-Pad", ""),), websocket=websocket)
    return RequestHead(
        "GET", "/", (("X-Pad", "x" * (encoded_size - len(base.encode()))),), websocket=websocket
    )


def padded_reply(encoded_size: int, status: int = 200) -> ResponseHead:
    """A response head whose REPLY payload is exactly ``encoded_size`` bytes."""
    base = ResponseHead(status, (("Set-Cookie", ""),))
    return ResponseHead(status, (("Set-Cookie", "x" * (encoded_size - len(base.encode()))),))


# A visitor's control characters escape 6 times over in JSON: 50 000 of them are a head
# well under most byte limits, and over MAX_HEAD_PAYLOAD once encoded.
ESCAPED = RequestHead("GET", "/", (("Host", "x.example"), ("X-Junk", "\x01" * 50_000)))
# 40 cookies of 8000 bytes: what made a client send a REPLY the relay had to refuse.
COOKIES = ResponseHead(200, tuple(("Set-Cookie", f"c{i}=" + "v" * 7996) for i in range(40)))


def test_open_stream_refuses_a_head_too_large_to_send_and_changes_nothing() -> None:
    pair = MuxPair()
    first = pair.open(POST, end_stream=False)
    with pytest.raises(HeadTooLarge) as info:
        pair.relay.open_stream(ESCAPED)
    assert isinstance(info.value, LocalProtocolError)
    assert info.value.size == len(ESCAPED.encode()) > MAX_HEAD_PAYLOAD
    assert info.value.limit == MAX_HEAD_PAYLOAD
    assert f"OPEN head of {info.value.size} bytes" in str(info.value)
    # No id used, nothing queued, the session and the stream before it carry on.
    assert pair.relay.pending_bytes == 0
    assert pair.relay.open_streams == 1 and pair.relay.ended is None
    assert pair.relay.open_stream(GET, end_stream=True) == first + 2
    pumped = pair.pump()
    assert pumped.client == [StreamOpened(first + 2, GET, True)]
    pair.relay.send_data(first, b"still here", end_stream=True)
    pumped = pair.pump()
    assert pumped.client == [DataReceived(first, b"still here", True)]


def test_send_reply_refuses_a_head_too_large_and_the_stream_still_awaits_one() -> None:
    pair = MuxPair()
    sid = pair.open(GET)
    other = pair.open(GET)
    with pytest.raises(HeadTooLarge, match=r"REPLY head of \d+ bytes exceeds") as info:
        pair.client.send_reply(sid, COOKIES)
    assert info.value.size == len(COOKIES.encode())
    assert pair.client.pending_bytes == 0
    assert pair.client.can_send(sid)
    # Still unreplied: a body may not go first, and a (small) reply may.
    with pytest.raises(InvalidState, match="reply before the response body"):
        pair.client.send_data(sid, b"x")
    pair.client.reset_stream(sid, ResetCode.UPSTREAM_HEAD_TOO_LARGE, "head too large")
    pair.client.send_reply(other, OK, end_stream=True)
    pumped = pair.pump()
    assert pumped.relay == [
        ResetReceived(sid, ResetCode.UPSTREAM_HEAD_TOO_LARGE, "head too large"),
        ReplyReceived(other, OK, True),
    ]
    assert pair.relay.ended is None and pair.client.ended is None


def test_a_refused_upgrade_leaves_the_stream_not_upgraded() -> None:
    pair = MuxPair()
    sid = pair.open(WS, end_stream=False)
    with pytest.raises(HeadTooLarge):
        pair.client.send_reply(sid, padded_reply(MAX_HEAD_PAYLOAD + 1, status=101))
    pair.client.send_reply(sid, SWITCH)
    pumped = pair.pump()
    assert pumped.relay == [ReplyReceived(sid, SWITCH, False)]


def test_heads_of_exactly_the_limit_are_sent_and_accepted() -> None:
    pair = MuxPair()
    request = padded_request(MAX_HEAD_PAYLOAD)
    assert len(request.encode()) == MAX_HEAD_PAYLOAD
    sid = pair.relay.open_stream(request, end_stream=True)
    pumped = pair.pump()
    assert pumped.client == [StreamOpened(sid, request, True)]
    reply = padded_reply(MAX_HEAD_PAYLOAD)
    pair.client.send_reply(sid, reply, end_stream=True)
    pumped = pair.pump()
    assert pumped.relay == [ReplyReceived(sid, reply, True)]
    with pytest.raises(HeadTooLarge):
        pair.relay.open_stream(padded_request(MAX_HEAD_PAYLOAD + 1))


# -- peer faults: GOAWAY(PROTOCOL_ERROR), and nothing processed afterwards ----------------


def test_frame_for_a_never_opened_stream_ends_the_session() -> None:
    pair = MuxPair()
    pair.open(GET)
    # The bad frame comes first; the PING after it, in the same message, is not answered.
    pair.client.receive_message(
        message(data_frame(4, b"x"), Frame(FrameType.PING, 0, 0, b"abcdefgh"))
    )
    assert_protocol_error(pair.client, "stream 4, which was never opened")


@pytest.mark.parametrize("stream_id", [1, 3, 2**32 - 1])
def test_frame_for_an_odd_stream_ends_the_session(stream_id: int) -> None:
    pair = MuxPair()
    for _ in range(3):
        pair.open(GET)
    pair.relay.receive_message(message(window_frame(stream_id, 1)))
    assert_protocol_error(pair.relay, "never opened")


def test_frames_after_a_fatal_one_in_later_messages_are_ignored() -> None:
    pair = MuxPair()
    pair.client.receive_message(b"\x00" * HEADER.size)
    assert_protocol_error(pair.client, "unknown frame type")
    pair.client.receive_message(message(open_frame(2)))
    assert pair.client.events_received() == []
    assert pair.client.open_streams == 0


PEER_FAULTS_AT_CLIENT = {
    "HELLO after the handshake": (Frame(FrameType.HELLO, 0, 0, b"{}"), "unexpected HELLO"),
    "WELCOME after the handshake": (Frame(FrameType.WELCOME, 0, 0, b"{}"), "unexpected"),
    "REPLY sent to the client": (Frame(FrameType.REPLY, 0, 2, OK.encode()), "only the client"),
    "OPEN with an odd id": (open_frame(3), "ids must be even"),
    "OPEN reusing an id": (open_frame(2), "ids must be even"),
    "OPEN with a bad head": (
        Frame(FrameType.OPEN, 0, 4, b'{"method":"GET","target":"no slash"}'),
        "invalid request target",
    ),
    "OPEN with a bad JSON head": (Frame(FrameType.OPEN, 0, 4, b"[]"), "JSON object"),
    "DATA after FIN": (data_frame(2, b"x"), "after its end"),
    "DATA that is empty without FIN": (data_frame(2, b""), "empty DATA"),
    "MESSAGE on a plain stream": (Frame(FrameType.MESSAGE, 0, 2, b"m"), "not upgraded"),
    "CLOSE on a plain stream": (Frame(FrameType.CLOSE, 0, 2, b"\x03\xe8"), "not upgraded"),
    "WINDOW of zero": (window_frame(2, 0), "must be positive"),
    "WINDOW overflowing": (window_frame(2, MAX_WINDOW), "overflows"),
    "undecodable message": (None, "truncated"),
}


@pytest.mark.parametrize(
    ("frame", "match"), PEER_FAULTS_AT_CLIENT.values(), ids=PEER_FAULTS_AT_CLIENT.keys()
)
def test_peer_faults_at_the_client(frame: Frame | None, match: str) -> None:
    pair = MuxPair()
    pair.open(GET, end_stream=True)  # stream 2: request ended, response not yet sent
    pair.client.receive_message(b"\x05\x00" if frame is None else message(frame))
    assert_protocol_error(pair.client, match)


PEER_FAULTS_AT_RELAY = {
    "OPEN sent to the relay": (open_frame(3), "only the relay may open"),
    "DATA before REPLY": (data_frame(2, b"x"), "DATA before REPLY"),
    "informational REPLY": (
        Frame(FrameType.REPLY, 0, 2, ResponseHead(103).encode()),
        "informational status 103",
    ),
    "101 for a plain request": (
        Frame(FrameType.REPLY, 0, 2, SWITCH.encode()),
        "status 101 needs a WebSocket request",
    ),
    "REPLY with a bad head": (Frame(FrameType.REPLY, 0, 2, b'{"status":"200"}'), "invalid status"),
    "WINDOW for a stream not yet opened": (window_frame(4, 1), "never opened"),
}


@pytest.mark.parametrize(
    ("frame", "match"), PEER_FAULTS_AT_RELAY.values(), ids=PEER_FAULTS_AT_RELAY.keys()
)
def test_peer_faults_at_the_relay(frame: Frame, match: str) -> None:
    pair = MuxPair()
    pair.open(GET, end_stream=True)
    pair.relay.receive_message(message(frame))
    assert_protocol_error(pair.relay, match)


def test_second_reply_is_a_protocol_error() -> None:
    pair = MuxPair()
    sid = pair.open(GET)
    pair.client.send_reply(sid, OK)
    pair.pump()
    pair.relay.receive_message(message(Frame(FrameType.REPLY, 0, sid, OK.encode())))
    assert_protocol_error(pair.relay, "second REPLY")


def test_fatal_error_ends_streams_and_local_calls_then_raise() -> None:
    pair = MuxPair()
    sid = pair.open(POST, end_stream=False)
    pair.client.receive_message(message(window_frame(sid, 0)))
    assert_protocol_error(pair.client, "positive")
    with pytest.raises(SessionClosed) as info:
        pair.client.send_reply(sid, OK)
    assert info.value.code is GoAwayCode.PROTOCOL_ERROR
    with pytest.raises(SessionClosed):
        pair.client.ping(b"12345678")
    pair.client.acknowledge(sid, 1)
    pair.client.reset_stream(sid, ResetCode.CANCEL)
    pair.client.close()
    assert pair.client.data_to_send() == []
    # The relay learns why.
    pair.relay.receive_message(
        message(Frame(FrameType.GOAWAY, 0, 0, U32.pack(1) + b"WINDOW increment must be positive"))
    )
    assert pair.relay.events_received() == [
        SessionEnded(GoAwayCode.PROTOCOL_ERROR, "WINDOW increment must be positive", True)
    ]


# -- WebSocket upgrade -------------------------------------------------------------------


def test_upgrade_and_messages_both_ways() -> None:
    pair = MuxPair()
    sid = pair.open(WS, end_stream=False)
    pair.client.send_reply(sid, SWITCH)
    assert pair.pump().relay == [ReplyReceived(sid, SWITCH, False)]
    assert pair.relay.send_message_part(sid, b"hi", text=True, final=True) == 2
    assert pair.relay.send_message_part(sid, b"\x00\x01", text=False, final=True) == 2
    assert pair.relay.send_message_part(sid, b"", text=True, final=True) == 0
    assert pair.pump().client == [
        MessageReceived(sid, b"hi", True, True),
        MessageReceived(sid, b"\x00\x01", False, True),
        MessageReceived(sid, b"", True, True),
    ]
    pair.client.send_message_part(sid, b"back", text=True, final=True)
    assert pair.pump().relay == [MessageReceived(sid, b"back", True, True)]
    with pytest.raises(InvalidState, match="send messages, not DATA"):
        pair.relay.send_data(sid, b"x")


def test_websocket_close_both_ways_forgets_the_stream() -> None:
    pair = MuxPair()
    sid = pair.open_websocket()
    pair.relay.send_close(sid, 4001, "bye")
    assert not pair.relay.can_send(sid)
    with pytest.raises(InvalidState):
        pair.relay.send_message_part(sid, b"x", text=True, final=True)
    assert pair.pump().client == [CloseReceived(sid, 4001, "bye")]
    pair.client.send_close(sid, 999, "out of range code")  # becomes 1011
    assert not pair.client.is_live(sid)
    assert pair.pump().relay == [CloseReceived(sid, 1011, "out of range code")]
    assert pair.relay.open_streams == 0


def test_messages_larger_than_the_frame_are_fragmented_text_flag_first_only() -> None:
    pair = MuxPair(max_frame=4)
    sid = pair.open_websocket()
    data = b"0123456789"
    sent = 0
    while sent < len(data):
        sent += pair.relay.send_message_part(sid, data[sent:], text=True, final=True)
    frames = frames_of(pair.relay.data_to_send())
    assert [f.flags for f in frames] == [Flags.TEXT | Flags.MORE, Flags.MORE, 0]
    assert b"".join(f.payload for f in frames) == data
    pair.client.receive_message(message(*frames))
    assert pair.client.events_received() == [
        MessageReceived(sid, b"0123", True, False),
        MessageReceived(sid, b"4567", True, False),  # text is carried to continuations
        MessageReceived(sid, b"89", True, True),
    ]


def test_application_fragments_with_final_false() -> None:
    pair = MuxPair()
    sid = pair.open_websocket()
    pair.client.send_message_part(sid, b"ab", text=False, final=False)
    with pytest.raises(InvalidState, match="between messages"):
        pair.client.send_close(sid)
    pair.client.send_message_part(sid, b"cd", text=False, final=True)
    frames = frames_of(pair.client.data_to_send())
    assert [f.flags for f in frames] == [Flags.MORE, 0]
    pair.relay.receive_message(message(*frames))
    assert pair.relay.events_received() == [
        MessageReceived(sid, b"ab", False, False),
        MessageReceived(sid, b"cd", False, True),
    ]


def test_message_waits_for_credit() -> None:
    pair = MuxPair(max_frame=MIN_WINDOW)
    sid = pair.open_websocket()
    assert pair.relay.send_message_part(sid, b"x" * MIN_WINDOW, text=False, final=True) == (
        MIN_WINDOW
    )
    assert pair.relay.credit(sid) == 0
    assert pair.relay.send_message_part(sid, b"more", text=False, final=True) == 0
    assert pair.relay.send_message_part(sid, b"", text=False, final=True) == 0  # empty is free
    frames = frames_of(pair.relay.data_to_send())
    assert [len(f.payload) for f in frames] == [MIN_WINDOW, 0]


WS_FAULTS = {
    "TEXT on a continuation": (
        [
            Frame(FrameType.MESSAGE, Flags.MORE, 2, b"a"),
            Frame(FrameType.MESSAGE, Flags.TEXT, 2, b"b"),
        ],
        "TEXT flag on a continuation",
    ),
    "CLOSE inside a fragmented message": (
        [Frame(FrameType.MESSAGE, Flags.MORE, 2, b"a"), Frame(FrameType.CLOSE, 0, 2, b"\x03\xe8")],
        "middle of a fragmented message",
    ),
    "CLOSE twice": (
        [Frame(FrameType.CLOSE, 0, 2, b"\x03\xe8"), Frame(FrameType.CLOSE, 0, 2, b"\x03\xe8")],
        "CLOSE on stream 2 after its end",
    ),
    "MESSAGE after CLOSE": (
        [Frame(FrameType.CLOSE, 0, 2, b"\x03\xe8"), Frame(FrameType.MESSAGE, 0, 2, b"a")],
        "MESSAGE on stream 2 after its end",
    ),
    "DATA on an upgraded stream": ([data_frame(2, b"a")], "DATA on upgraded stream"),
    "MESSAGE beyond the window": (
        [Frame(FrameType.MESSAGE, 0, 2, b"x" * (MIN_WINDOW + 1))],
        "with only 16384 of credit",
    ),
}


@pytest.mark.parametrize(("frames", "match"), WS_FAULTS.values(), ids=WS_FAULTS.keys())
def test_websocket_faults(frames: list[Frame], match: str) -> None:
    pair = MuxPair()
    sid = pair.open_websocket()
    assert sid == 2
    pair.client.receive_message(message(*frames))
    assert_protocol_error(pair.client, match)


def test_reply_101_with_fin_is_a_protocol_error() -> None:
    pair = MuxPair()
    sid = pair.open(WS, end_stream=False)
    with pytest.raises(InvalidState, match="101"):
        pair.client.send_reply(sid, SWITCH, end_stream=True)
    pair.relay.receive_message(message(Frame(FrameType.REPLY, Flags.FIN, sid, SWITCH.encode())))
    assert_protocol_error(pair.relay, "status 101 needs")


def test_websocket_request_may_get_a_plain_answer() -> None:
    pair = MuxPair()
    sid = pair.open(WS, end_stream=False)
    refused = ResponseHead(403)
    pair.client.send_reply(sid, refused, end_stream=True)
    assert pair.pump().relay == [ReplyReceived(sid, refused, True)]


# -- flow control ------------------------------------------------------------------------


def test_send_data_takes_only_what_credit_and_max_frame_allow() -> None:
    pair = MuxPair(max_frame=10_000)
    sid = pair.open(POST, end_stream=False)
    assert pair.relay.credit(sid) == MIN_WINDOW
    assert pair.relay.send_data(sid, b"a" * 20_000) == 10_000  # max_frame
    assert pair.relay.send_data(sid, b"b" * 20_000, end_stream=True) == MIN_WINDOW - 10_000
    assert pair.relay.credit(sid) == 0
    assert pair.relay.can_send(sid)  # FIN waits until every byte was taken
    assert pair.relay.send_data(sid, b"c", end_stream=True) == 0
    frames = frames_of(pair.relay.data_to_send())
    assert [(len(f.payload), f.fin) for f in frames] == [
        (10_000, False),
        (MIN_WINDOW - 10_000, False),
    ]


def test_acknowledged_bytes_come_back_as_credit_in_batches() -> None:
    pair = MuxPair(max_frame=MIN_WINDOW)
    sid = pair.open(POST, end_stream=False)
    half = MIN_WINDOW // 2
    pair.relay.send_data(sid, b"x" * (MIN_WINDOW - 100))
    pair.pump()
    pair.client.acknowledge(sid, half - 1)
    assert pair.client.data_to_send() == []  # not yet worth a WINDOW frame
    pair.client.acknowledge(sid, 1)
    assert pair.pump().relay == [WindowOpened(sid, half)]
    assert pair.relay.credit(sid) == half + 100
    # An empty window is different: the peer is stalled, so any acknowledgement counts.
    pair.relay.send_data(sid, b"y" * (half + 100))
    pair.pump()
    pair.client.acknowledge(sid, 10)
    assert pair.pump().relay == [WindowOpened(sid, 10)]


def test_acknowledge_of_ended_or_unknown_streams_does_nothing() -> None:
    pair = MuxPair()
    pair.client.acknowledge(2, 10)
    sid = pair.open(POST, end_stream=False)
    pair.relay.send_data(sid, b"x" * 100, end_stream=True)
    pair.pump()
    pair.client.acknowledge(sid, 100)  # the relay sends no more: no credit needed
    assert pair.client.data_to_send() == []


def test_acknowledging_more_than_received_is_a_local_error() -> None:
    pair = MuxPair()
    sid = pair.open(POST, end_stream=False)
    with pytest.raises(LocalProtocolError):
        pair.client.acknowledge(sid, 1)


def test_peer_sending_beyond_its_credit_ends_the_session() -> None:
    pair = MuxPair()
    sid = pair.open(POST, end_stream=False)
    pair.client.receive_message(message(data_frame(sid, b"x" * MIN_WINDOW)))
    assert pair.client.events_received() == [DataReceived(sid, b"x" * MIN_WINDOW, False)]
    pair.client.receive_message(message(data_frame(sid, b"y")))
    assert_protocol_error(pair.client, "peer sent 1 bytes with only 0 of credit")


def test_window_overflow_ends_the_session() -> None:
    pair = MuxPair()
    sid = pair.open(GET)
    pair.client.send_reply(sid, OK)
    pair.pump()
    pair.client.receive_message(message(window_frame(sid, MAX_WINDOW - MIN_WINDOW)))
    assert pair.client.events_received() == [WindowOpened(sid, MAX_WINDOW - MIN_WINDOW)]
    assert pair.client.credit(sid) == MAX_WINDOW
    pair.client.receive_message(message(window_frame(sid, 1)))
    assert_protocol_error(pair.client, "overflows the maximum window")


def test_window_for_a_stream_whose_sending_ended_is_accepted() -> None:
    pair = MuxPair()
    sid = pair.open(POST, end_stream=True)
    pair.relay.receive_message(message(window_frame(sid, 5)))
    assert pair.relay.events_received() == [WindowOpened(sid, 5)]


# -- session frames ----------------------------------------------------------------------


def test_ping_is_answered_and_acknowledged() -> None:
    pair = MuxPair()
    pair.relay.ping(b"\x01" * 8)
    (frame,) = frames_of(pair.relay.data_to_send())
    pair.client.receive_message(message(frame))
    assert pair.client.events_received() == []
    (answer,) = frames_of(pair.client.data_to_send())
    assert answer == Frame(FrameType.PING, Flags.ACK, 0, b"\x01" * 8)
    pair.relay.receive_message(message(answer))
    assert pair.relay.events_received() == [PingAcknowledged(b"\x01" * 8)]
    with pytest.raises(LocalProtocolError, match="8 bytes"):
        pair.relay.ping(b"short")


def test_control_frame_flood_is_bounded() -> None:
    pair = MuxPair()
    ping = Frame(FrameType.PING, 0, 0, b"p" * 8)
    pair.client.receive_message(message(*[ping] * MAX_CONTROL_BACKLOG))
    assert pair.client.ended is None
    assert len(frames_of(pair.client.data_to_send())) == MAX_CONTROL_BACKLOG
    # Sending resets the budget: a peer that reads its answers may ping on.
    pair.client.receive_message(message(*[ping] * MAX_CONTROL_BACKLOG))
    assert pair.client.ended is None
    pair.client.receive_message(message(ping))  # now one more than the backlog allows
    assert_protocol_error(pair.client, "floods")


def test_refused_open_floods_count_too() -> None:
    pair = MuxPair(max_streams=1)
    pair.client.receive_message(message(open_frame(2, POST, fin=False)))
    opens = [open_frame(2 * i) for i in range(2, MAX_CONTROL_BACKLOG + 3)]
    pair.client.receive_message(message(*opens))
    assert_protocol_error(pair.client, "floods")


def test_streams_beyond_max_streams_are_refused() -> None:
    pair = MuxPair(max_streams=1)
    first = pair.open(POST, end_stream=False)
    second = pair.relay.open_stream(POST, end_stream=False)
    pair.relay.send_data(second, b"body for a refused stream")
    pumped = pair.pump()
    assert pumped.client == []  # no StreamOpened, and the DATA after it is ignored
    assert pumped.relay == [ResetReceived(second, ResetCode.REFUSED, "too many concurrent streams")]
    assert pair.client.open_streams == 1 and pair.client.is_live(first)
    # Once the first stream ends, a new one is accepted.
    pair.client.reset_stream(first, ResetCode.CANCEL)
    pair.pump()
    third = pair.relay.open_stream(GET, end_stream=True)
    assert pair.pump().client == [StreamOpened(third, GET, True)]


def test_goaway_from_the_peer_ends_the_session() -> None:
    pair = MuxPair()
    sid = pair.open(POST, end_stream=False)
    pair.relay.close(GoAwayCode.EXPIRED, "link expired")
    assert pair.relay.ended == SessionEnded(GoAwayCode.EXPIRED, "link expired", False)
    assert pair.relay.open_streams == 0
    assert pair.pump().client == [SessionEnded(GoAwayCode.EXPIRED, "link expired", True)]
    assert pair.client.open_streams == 0
    with pytest.raises(SessionClosed, match="EXPIRED"):
        pair.client.send_reply(sid, OK)
    with pytest.raises(SessionClosed):
        pair.relay.open_stream(GET)
    pair.relay.close()  # already closed: nothing more
    assert pair.relay.data_to_send() == []


def test_goaway_with_an_unknown_code() -> None:
    pair = MuxPair()
    pair.client.receive_message(message(Frame(FrameType.GOAWAY, 0, 0, U32.pack(1234))))
    assert pair.client.events_received() == [SessionEnded(GoAwayCode.INTERNAL_ERROR, "", True)]
    assert pair.client.data_to_send() == []  # no GOAWAY answers a GOAWAY


def test_frames_after_goaway_in_the_same_message_are_ignored() -> None:
    pair = MuxPair()
    goaway = Frame(FrameType.GOAWAY, 0, 0, U32.pack(GoAwayCode.NORMAL))
    pair.client.receive_message(message(goaway, open_frame(2)))
    assert pair.client.events_received() == [SessionEnded(GoAwayCode.NORMAL, "", True)]


# -- output packing ----------------------------------------------------------------------


def test_small_frames_are_packed_into_one_message() -> None:
    pair = MuxPair()
    for _ in range(10):
        pair.relay.open_stream(GET)
    pending = pair.relay.pending_bytes
    messages = pair.relay.data_to_send()
    assert len(messages) == 1 and len(messages[0]) == pending
    assert pair.relay.pending_bytes == 0
    assert len(decode_frames(messages[0])) == 10


def test_large_output_is_split_into_messages_of_bounded_size() -> None:
    pair = MuxPair(relay_window=MAX_WINDOW, client_window=MAX_WINDOW, max_frame=100_000)
    sid = pair.open(POST, end_stream=False)
    payload = bytes(range(256)) * 4000  # 1 MB
    sent = 0
    while sent < len(payload):
        sent += pair.relay.send_data(sid, payload[sent:])
    messages = pair.relay.data_to_send()
    assert len(messages) > 1
    assert all(len(m) <= MESSAGE_TARGET_BYTES for m in messages)
    received = b"".join(f.payload for f in frames_of(messages))
    assert received == payload


def test_a_frame_larger_than_the_target_gets_a_message_of_its_own() -> None:
    pair = MuxPair(relay_window=MAX_WINDOW, client_window=MAX_WINDOW, max_frame=MAX_PAYLOAD)
    sid = pair.open(POST, end_stream=False)
    pair.relay.ping(b"p" * 8)
    pair.relay.send_data(sid, b"x" * MAX_PAYLOAD)
    pair.relay.ping(b"q" * 8)
    sizes = [len(m) for m in pair.relay.data_to_send()]
    assert sizes == [HEADER.size + 8, HEADER.size + MAX_PAYLOAD, HEADER.size + 8]


def test_debug_logging_names_every_frame(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.mux")
    logger.setLevel(logging.DEBUG)
    relay = Mux(Role.RELAY, logger=logger)
    client = Mux(Role.CLIENT, logger=logger)
    with caplog.at_level(logging.DEBUG, logger="test.mux"):
        relay.open_stream(GET, end_stream=True)
        for item in relay.data_to_send():
            client.receive_message(item)
    assert "> OPEN flags=1 stream=2" in caplog.text
    assert "< OPEN flags=1 stream=2" in caplog.text


def test_queued_data_does_not_change_when_the_caller_reuses_its_buffer() -> None:
    pair = MuxPair()
    sid = pair.open_websocket()
    buffer = bytearray(b"first")
    pair.relay.send_message_part(sid, buffer, text=False, final=True)
    pair.relay.send_message_part(sid, memoryview(buffer)[1:], text=False, final=True)
    immutable = b"0123456789"
    pair.relay.send_message_part(sid, memoryview(immutable)[2:], text=False, final=True)
    pair.relay.send_message_part(sid, immutable, text=False, final=True)
    buffer[:] = b"XXXXX"
    assert [f.payload for f in frames_of(pair.relay.data_to_send())] == [
        b"first",
        b"irst",
        b"23456789",
        b"0123456789",
    ]
