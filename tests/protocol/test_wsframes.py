"""RFC 6455 framing (tunnel_client/protocol/wsframes.py), checked against websockets' own.

websockets' sans-I/O Protocol plays the peer: what it frames, our codec must read, and
what our codec frames, it must read, in both roles, for any message.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Opcode
from websockets.protocol import OPEN, Protocol, Side

from tunnel_client.protocol.wsframes import Close, Message, WebSocketCodec, apply_mask

messages = st.lists(
    st.one_of(
        st.binary(max_size=70_000).map(lambda b: Message(b, False)),
        st.text(max_size=300).map(lambda t: Message(t.encode(), True)),
    ),
    max_size=6,
)


def peer(side: Side) -> Protocol:
    return Protocol(side, state=OPEN, max_size=None)


@pytest.mark.parametrize("ours_masks", [True, False])
@given(sent=messages, chop=st.integers(1, 5000))
def test_their_frames_become_our_messages(ours_masks: bool, sent: list[Message], chop: int) -> None:
    theirs = peer(Side.SERVER if ours_masks else Side.CLIENT)
    codec = WebSocketCodec(mask=ours_masks)
    for message in sent:
        if message.text:
            theirs.send_text(message.data)
        else:
            theirs.send_binary(message.data)
    wire = b"".join(theirs.data_to_send())
    for i in range(0, len(wire), chop):  # any split of the byte stream
        codec.receive_data(wire[i : i + chop])
    assert codec.events_received() == sent


@pytest.mark.parametrize("ours_masks", [True, False])
@given(sent=messages)
def test_our_frames_become_their_messages(ours_masks: bool, sent: list[Message]) -> None:
    theirs = peer(Side.SERVER if ours_masks else Side.CLIENT)
    codec = WebSocketCodec(mask=ours_masks)
    for message in sent:
        codec.send_message(message.data, text=message.text)
    theirs.receive_data(codec.data_to_send())
    got = [Message(f.data, f.opcode is Opcode.TEXT) for f in theirs.events_received()]
    assert got == sent


def test_fragments_are_joined_and_pings_answered() -> None:
    theirs = peer(Side.CLIENT)
    codec = WebSocketCodec(mask=False)
    theirs.send_text(b"hel", fin=False)
    theirs.send_ping(b"p1")
    theirs.send_continuation(b"lo", fin=True)
    codec.receive_data(b"".join(theirs.data_to_send()))
    assert codec.events_received() == [Message(b"hello", True)]
    theirs.receive_data(codec.data_to_send())
    (pong,) = theirs.events_received()
    assert pong.opcode is Opcode.PONG and pong.data == b"p1"


def test_the_closing_handshake_carries_code_and_reason() -> None:
    theirs = peer(Side.SERVER)
    codec = WebSocketCodec(mask=True)
    codec.send_close(4000, "bye")
    theirs.receive_data(codec.data_to_send())
    assert (theirs.close_rcvd.code, theirs.close_rcvd.reason) == (4000, "bye")
    codec.receive_data(b"".join(theirs.data_to_send()))  # websockets answers the close
    assert codec.events_received() == [Close(4000, "bye")] and codec.closed
    codec.send_message(b"late", text=False)
    assert codec.data_to_send() == b""  # nothing after our CLOSE


def test_an_empty_close_is_1005_and_1005_is_sent_as_empty() -> None:
    codec = WebSocketCodec(mask=False)
    codec.receive_data(b"\x88\x80" + b"\x00" * 4)  # masked CLOSE with no payload
    assert codec.events_received() == [Close(1005, "")]
    codec.send_close(1005)
    assert codec.data_to_send() == b"\x88\x00"


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (b"\x81\x05hello", 1002),  # a server must receive masked frames only
        (b"\xc1\x80\x00\x00\x00\x00", 1002),  # RSV1 without an extension
        (b"\x83\x80\x00\x00\x00\x00", 1002),  # unknown opcode
        (b"\x09\x80\x00\x00\x00\x00", 1002),  # fragmented PING
        (b"\x80\x80\x00\x00\x00\x00", 1002),  # continuation of nothing
        (b"\x81\x82\x00\x00\x00\x00\xff\xfe", 1007),  # text that is not UTF-8
        (b"\x88\x81\x00\x00\x00\x00\x03", 1002),  # one-byte close payload
        (b"\x88\x82\x00\x00\x00\x00\x03\xed", 1002),  # close code 1005 on the wire
        (b"\x82\xff" + (1 << 40).to_bytes(8, "big") + b"\x00" * 4, 1009),  # too large
    ],
)
def test_rule_breaking_frames_close_with_a_code(wire: bytes, code: int) -> None:
    codec = WebSocketCodec(mask=False, max_message=1 << 20)
    codec.receive_data(wire)
    (event,) = codec.events_received()
    assert isinstance(event, Close) and event.code == code
    sent = codec.data_to_send()
    assert sent[0] == 0x88 and int.from_bytes(sent[2:4], "big") == code
    codec.receive_data(b"\x82\x80\x00\x00\x00\x00")  # nothing counts after that
    assert codec.events_received() == []


def test_a_new_message_inside_a_fragmented_one_is_an_error() -> None:
    codec = WebSocketCodec(mask=True)
    codec.receive_data(b"\x01\x01a\x01\x01b")  # TEXT (not final), then TEXT again
    (event,) = codec.events_received()
    assert event == Close(1002, "new message before the last one ended")


@given(st.binary(max_size=300))
def test_garbage_never_raises(data: bytes) -> None:
    codec = WebSocketCodec(mask=False, max_message=1000)
    codec.receive_data(data)
    for event in codec.events_received():
        assert isinstance(event, Message | Close)


@pytest.mark.parametrize("size", [0, 1, 3, 4096, 4097, 3 * 4096 + 5, 70_001])
def test_the_pure_python_mask_xors_the_repeated_key(size: int) -> None:
    data, key = os.urandom(size), os.urandom(4)
    expected = bytes(b ^ key[i % 4] for i, b in enumerate(data))
    assert apply_mask(data, key) == expected
    assert apply_mask(expected, key) == data


def test_a_faster_mask_function_can_be_given() -> None:
    calls = []

    def xor(data: bytes, key: bytes) -> bytes:
        calls.append(len(data))
        return apply_mask(data, key)

    client = WebSocketCodec(mask=True, xor=xor)
    server = WebSocketCodec(mask=False, xor=xor)
    client.send_message(b"x" * 300, text=False)
    server.receive_data(client.data_to_send())
    assert server.events_received() == [Message(b"x" * 300, False)]
    assert calls == [300, 300]  # masked by one side, unmasked by the other
