"""Frame layout: encoding, decoding, flag and bound rules (tunnel_client/protocol/frames.py)."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.protocol.helpers import examples
from tunnel_client.protocol.errors import LocalProtocolError, RemoteProtocolError
from tunnel_client.protocol.frames import (
    _ALLOWED_FLAGS,
    _PAYLOAD_BOUNDS,
    _SESSION_TYPES,
    HEADER,
    MAX_HEAD_PAYLOAD,
    MAX_MESSAGE_BYTES,
    MAX_PAYLOAD,
    MAX_REASON_BYTES,
    Flags,
    Frame,
    FrameType,
    check_frame,
    decode_frames,
    encode_frame,
)

# One legal frame of every type.
EXAMPLES = [
    Frame(FrameType.HELLO, 0, 0, b'{"version":1}'),
    Frame(FrameType.WELCOME, 0, 0, b"{}"),
    Frame(FrameType.OPEN, Flags.FIN, 2, b'{"method":"GET","target":"/"}'),
    Frame(FrameType.REPLY, 0, 2, b'{"status":200}'),
    Frame(FrameType.DATA, 0, 2, b"body"),
    Frame(FrameType.DATA, Flags.FIN, 2, b""),
    Frame(FrameType.WINDOW, 0, 4, struct.pack("!I", 65536)),
    Frame(FrameType.RESET, 0, 6, struct.pack("!I", 0) + b"bye"),
    Frame(FrameType.PING, 0, 0, b"12345678"),
    Frame(FrameType.PING, Flags.ACK, 0, b"12345678"),
    Frame(FrameType.GOAWAY, 0, 0, struct.pack("!I", 1) + b"broken"),
    Frame(FrameType.MESSAGE, Flags.TEXT | Flags.MORE, 8, b"hel"),
    Frame(FrameType.MESSAGE, 0, 8, b"lo"),
    Frame(FrameType.CLOSE, 0, 8, struct.pack("!H", 1000) + b"done"),
]


@pytest.mark.parametrize("frame", EXAMPLES, ids=lambda f: f"{f.type.name}-{f.flags}")
def test_every_type_round_trips(frame: Frame) -> None:
    data = encode_frame(frame)
    assert data[: HEADER.size] == HEADER.pack(
        frame.type, frame.flags, frame.stream_id, len(frame.payload)
    )
    assert decode_frames(data) == [frame]


def test_header_layout_is_big_endian() -> None:
    data = encode_frame(Frame(FrameType.DATA, Flags.FIN, 0x01020304, b"xy"))
    assert data == bytes([0x05, 0x01, 1, 2, 3, 4, 0, 0, 0, 2]) + b"xy"


def test_fin_property() -> None:
    assert Frame(FrameType.DATA, Flags.FIN, 2).fin
    assert not Frame(FrameType.DATA, 0, 2).fin


def test_several_frames_in_one_message_keep_their_order() -> None:
    data = b"".join(encode_frame(f) for f in EXAMPLES)
    assert decode_frames(data) == EXAMPLES


def test_empty_message_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="empty"):
        decode_frames(b"")


def test_oversized_message_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        decode_frames(b"\0" * (MAX_MESSAGE_BYTES + 1))


def test_message_at_the_limit_is_accepted() -> None:
    # Three full DATA frames, and a fourth that fills the message to exactly 4 MiB.
    big = encode_frame(Frame(FrameType.DATA, 0, 2, b"\0" * MAX_PAYLOAD))
    frames = [big] * 3
    tail = MAX_MESSAGE_BYTES - 3 * len(big) - HEADER.size
    frames.append(encode_frame(Frame(FrameType.DATA, 0, 2, b"\0" * tail)))
    data = b"".join(frames)
    assert len(data) == MAX_MESSAGE_BYTES
    assert len(decode_frames(data)) == 4


@pytest.mark.parametrize("size", [1, 5, HEADER.size - 1])
def test_truncated_header(size: int) -> None:
    with pytest.raises(RemoteProtocolError, match="truncated frame header"):
        decode_frames(encode_frame(EXAMPLES[4])[:size])


def test_truncated_header_after_a_whole_frame() -> None:
    whole = encode_frame(EXAMPLES[4])
    with pytest.raises(RemoteProtocolError, match="truncated frame header"):
        decode_frames(whole + whole[:3])


def test_truncated_payload() -> None:
    with pytest.raises(RemoteProtocolError, match="truncated DATA payload"):
        decode_frames(encode_frame(Frame(FrameType.DATA, 0, 2, b"abcdef"))[:-1])


@pytest.mark.parametrize("code", [0x00, 0x0C, 0x7F, 0xFF])
def test_unknown_type(code: int) -> None:
    with pytest.raises(RemoteProtocolError, match="unknown frame type"):
        decode_frames(HEADER.pack(code, 0, 0, 0))


@pytest.mark.parametrize("type_", list(FrameType))
def test_flags_outside_the_types_set_are_refused(type_: FrameType) -> None:
    low, _ = _PAYLOAD_BOUNDS[type_]
    stream_id = 0 if type_ in _SESSION_TYPES else 2
    for bit in (0x01, 0x02, 0x04, 0x08, 0x10, 0x80):
        header = HEADER.pack(type_, bit, stream_id, low) + b"\0" * low
        if bit & _ALLOWED_FLAGS[type_]:
            assert decode_frames(header)[0].flags == bit
        else:
            with pytest.raises(RemoteProtocolError, match="not allowed"):
                decode_frames(header)
            with pytest.raises(LocalProtocolError, match="not allowed"):
                encode_frame(Frame(type_, bit, stream_id, b"\0" * low))


@pytest.mark.parametrize("type_", list(FrameType))
def test_session_types_use_stream_zero_and_others_never(type_: FrameType) -> None:
    low, _ = _PAYLOAD_BOUNDS[type_]
    wrong = 2 if type_ in _SESSION_TYPES else 0
    with pytest.raises(RemoteProtocolError, match=f"{type_.name} on stream {wrong}"):
        decode_frames(HEADER.pack(type_, 0, wrong, low) + b"\0" * low)
    with pytest.raises(LocalProtocolError):
        encode_frame(Frame(type_, 0, wrong, b"\0" * low))


@pytest.mark.parametrize("type_", list(FrameType))
def test_payload_bounds(type_: FrameType) -> None:
    low, high = _PAYLOAD_BOUNDS[type_]
    stream_id = 0 if type_ in _SESSION_TYPES else 2
    for length in (low, high):
        assert check_frame(type_, 0, stream_id, length) is None
    assert check_frame(type_, 0, stream_id, high + 1) is not None
    # The header is checked before the payload is read: a lying length is refused at once.
    with pytest.raises(RemoteProtocolError, match="payload of"):
        decode_frames(HEADER.pack(type_, 0, stream_id, high + 1))
    if low:
        with pytest.raises(RemoteProtocolError, match="payload of"):
            decode_frames(HEADER.pack(type_, 0, stream_id, low - 1) + b"\0" * (low - 1))
        with pytest.raises(LocalProtocolError, match="payload of"):
            encode_frame(Frame(type_, 0, stream_id, b"\0" * (low - 1)))


def test_documented_limits() -> None:
    assert _PAYLOAD_BOUNDS[FrameType.OPEN] == (2, MAX_HEAD_PAYLOAD)
    assert _PAYLOAD_BOUNDS[FrameType.RESET] == (4, 4 + MAX_REASON_BYTES)
    assert _PAYLOAD_BOUNDS[FrameType.CLOSE] == (2, 2 + MAX_REASON_BYTES)
    assert max(high for _, high in _PAYLOAD_BOUNDS.values()) == MAX_PAYLOAD


def test_largest_stream_id_round_trips() -> None:
    frame = Frame(FrameType.DATA, 0, 2**32 - 1, b"x")
    assert decode_frames(encode_frame(frame)) == [frame]


@pytest.mark.parametrize("stream_id", [-1, 2**32])
def test_stream_id_out_of_range_is_not_encoded(stream_id: int) -> None:
    with pytest.raises(LocalProtocolError, match="out of range"):
        encode_frame(Frame(FrameType.DATA, 0, stream_id, b"x"))


def test_decoded_payload_is_bytes_not_a_view() -> None:
    (frame,) = decode_frames(encode_frame(Frame(FrameType.DATA, 0, 2, b"abc")))
    assert type(frame.payload) is bytes


# -- properties ---------------------------------------------------------------------------


@st.composite
def valid_frames(draw: st.DrawFn) -> Frame:
    type_ = draw(st.sampled_from(FrameType))
    allowed = _ALLOWED_FLAGS[type_]
    flags = draw(st.sampled_from([f for f in range(16) if not f & ~allowed]))
    stream_id = 0 if type_ in _SESSION_TYPES else draw(st.integers(1, 2**32 - 1))
    low, high = _PAYLOAD_BOUNDS[type_]
    payload = draw(st.binary(min_size=low, max_size=min(high, low + 100)))
    return Frame(type_, flags, stream_id, payload)


@examples(300)
@given(valid_frames())
def test_property_round_trip(frame: Frame) -> None:
    assert decode_frames(encode_frame(frame)) == [frame]


@examples(100)
@given(st.lists(valid_frames(), min_size=1, max_size=8))
def test_property_multi_frame_round_trip(frames: list[Frame]) -> None:
    assert decode_frames(b"".join(map(encode_frame, frames))) == frames


@examples(500)
@given(st.binary(max_size=200))
def test_property_garbage_raises_only_remote_protocol_error(data: bytes) -> None:
    try:
        frames = decode_frames(data)
    except RemoteProtocolError:
        return
    # Whatever decodes re-encodes to the same bytes: the decoder checked every rule.
    assert b"".join(map(encode_frame, frames)) == data


@examples(150)
@given(
    st.lists(valid_frames(), min_size=1, max_size=4),
    st.integers(0, 10_000),
    st.binary(max_size=12),
)
def test_property_corrupted_messages_raise_only_remote_protocol_error(
    frames: list[Frame], cut: int, noise: bytes
) -> None:
    data = b"".join(map(encode_frame, frames))
    cut %= len(data) + 1
    for mangled in (data[:cut], data[:cut] + noise + data[cut:], noise + data):
        with contextlib.suppress(RemoteProtocolError):
            decode_frames(mangled)
