"""HELLO and WELCOME: round trips and hostile payloads (tunnel_client/protocol/handshake.py)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.protocol.helpers import examples
from tunnel_client.protocol.errors import GoAwayCode, HandshakeRefused, RemoteProtocolError
from tunnel_client.protocol.frames import FrameType, decode_frames
from tunnel_client.protocol.handshake import (
    PROTOCOL_VERSION,
    Hello,
    Welcome,
    read_hello,
    read_welcome,
    refusal,
)
from tunnel_client.protocol.window import MAX_WINDOW, MIN_WINDOW

SECRET = "s" * 32

HELLO = Hello(window=65536, max_streams=100, client_secret=SECRET)
FULL_HELLO = Hello(
    window=MIN_WINDOW,
    max_streams=1,
    client_secret=SECRET,
    token="tok",
    lease="lease.sig",
    visitor_auth="user:pw",
    ttl_s=3600,
    agent="sharetunnel/0.1",
)
WELCOME = Welcome(
    url="https://abc.share.example/",
    subdomain="abc",
    expires_at=1_900_000_000.5,
    lease="lease.sig",
    window=MAX_WINDOW,
    keepalive_s=20.0,
    resumed=True,
)


def payload_of(message: bytes, type_: FrameType) -> bytes:
    (frame,) = decode_frames(message)
    assert frame.type is type_
    assert frame.stream_id == 0
    return frame.payload


@pytest.mark.parametrize("hello", [HELLO, FULL_HELLO])
def test_hello_round_trip(hello: Hello) -> None:
    assert Hello.decode(payload_of(hello.encode(), FrameType.HELLO)) == hello


def test_hello_leaves_out_absent_options() -> None:
    obj = json.loads(payload_of(HELLO.encode(), FrameType.HELLO))
    assert obj == {
        "version": PROTOCOL_VERSION,
        "window": 65536,
        "max_streams": 100,
        "client_secret": SECRET,
        "agent": "",
    }


def test_hello_repr_hides_credentials() -> None:
    text = repr(FULL_HELLO)
    for secret in (SECRET, "tok", "lease.sig", "user:pw"):
        assert secret not in text


def test_welcome_round_trip() -> None:
    assert Welcome.decode(payload_of(WELCOME.encode(), FrameType.WELCOME)) == WELCOME
    assert "lease.sig" not in repr(WELCOME)


def test_welcome_accepts_integers_where_floats_are_expected() -> None:
    obj = json.loads(payload_of(WELCOME.encode(), FrameType.WELCOME))
    obj.update(expires_at=1_900_000_000, keepalive_s=5)
    welcome = Welcome.decode(json.dumps(obj).encode())
    assert welcome.expires_at == 1_900_000_000.0
    assert welcome.keepalive_s == 5.0
    del obj["resumed"]
    assert Welcome.decode(json.dumps(obj).encode()).resumed is False


def test_unknown_keys_are_ignored_and_a_newer_version_is_reported() -> None:
    obj = json.loads(payload_of(HELLO.encode(), FrameType.HELLO))
    obj.update(version=7, extension={"x": 1})
    assert Hello.decode(json.dumps(obj).encode()).version == 7


def hello_json(**fields: Any) -> bytes:
    obj = json.loads(payload_of(FULL_HELLO.encode(), FrameType.HELLO))
    obj.update(fields)
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


def welcome_json(**fields: Any) -> bytes:
    obj = json.loads(payload_of(WELCOME.encode(), FrameType.WELCOME))
    obj.update(fields)
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


BAD_HELLOS = {
    "not json": b"hello",
    "not utf-8": b"\xff\xfe\xfd",
    "array": b"[1]",
    "deep nesting": b"[" * 50_000 + b"]" * 50_000,
    "version missing": hello_json(version=...),
    "version negative": hello_json(version=-1),
    "version a string": hello_json(version="1"),
    "version true": hello_json(version=True),
    "version a float": hello_json(version=1.0),
    "window missing": hello_json(window=...),
    "window too small": hello_json(window=MIN_WINDOW - 1),
    "window too large": hello_json(window=MAX_WINDOW + 1),
    "max_streams zero": hello_json(max_streams=0),
    "max_streams huge": hello_json(max_streams=10**6),
    "max_streams true": hello_json(max_streams=True),
    "secret missing": hello_json(client_secret=...),
    "secret short": hello_json(client_secret="x" * 15),
    "secret too long": hello_json(client_secret="x" * 257),
    "secret a number": hello_json(client_secret=1234567890123456789),
    "token a list": hello_json(token=["x"]),
    "token too long": hello_json(token="t" * 4097),
    "lease a number": hello_json(lease=1),
    "visitor_auth too long": hello_json(visitor_auth="u" * 513),
    "ttl zero": hello_json(ttl_s=0),
    "ttl a string": hello_json(ttl_s="1h"),
    "ttl false": hello_json(ttl_s=False),
    "agent too long": hello_json(agent="a" * 201),
    "agent an object": hello_json(agent={}),
    "bypass_token too short": hello_json(bypass_token="a"),
    "bypass_token empty": hello_json(bypass_token=""),
    "bypass_token with a space": hello_json(bypass_token="a b c d e f"),
    "bypass_token not for a URL": hello_json(bypass_token="abcdefgh/?#"),
}


@pytest.mark.parametrize("payload", BAD_HELLOS.values(), ids=BAD_HELLOS.keys())
def test_hostile_hellos_are_refused(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        Hello.decode(payload)


BAD_WELCOMES = {
    "not json": b"{",
    "a string": b'"welcome"',
    "url missing": welcome_json(url=...),
    "url empty": welcome_json(url=""),
    "url too long": welcome_json(url="h" * 2049),
    "subdomain missing": welcome_json(subdomain=...),
    "subdomain too long": welcome_json(subdomain="a" * 64),
    "lease missing": welcome_json(lease=...),
    "lease a number": welcome_json(lease=5),
    "expires_at missing": welcome_json(expires_at=...),
    "expires_at a string": welcome_json(expires_at="2030-01-01"),
    "expires_at true": welcome_json(expires_at=True),
    "expires_at negative": welcome_json(expires_at=-1),
    "expires_at past year 9999": welcome_json(expires_at=1e300),
    "expires_at infinite": welcome_json(expires_at=float("inf")),
    "expires_at NaN": welcome_json(expires_at=float("nan")),
    "keepalive missing": welcome_json(keepalive_s=...),
    "keepalive too short": welcome_json(keepalive_s=0.01),
    "keepalive too long": welcome_json(keepalive_s=3601),
    "keepalive true": welcome_json(keepalive_s=True),
    "keepalive NaN": welcome_json(keepalive_s=float("nan")),
    "window too small": welcome_json(window=1),
    "version missing": welcome_json(version=...),
}


@pytest.mark.parametrize("payload", BAD_WELCOMES.values(), ids=BAD_WELCOMES.keys())
def test_hostile_welcomes_are_refused(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        Welcome.decode(payload)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
hostile = st.dictionaries(
    st.sampled_from(
        [
            "version",
            "window",
            "max_streams",
            "client_secret",
            "token",
            "lease",
            "visitor_auth",
            "ttl_s",
            "agent",
            "url",
            "subdomain",
            "expires_at",
            "keepalive_s",
            "resumed",
        ]
    ),
    json_scalars | st.lists(json_scalars, max_size=3),
)


@examples(150)
@given(hostile)
def test_property_hostile_json_raises_only_remote_protocol_error(obj: dict[str, Any]) -> None:
    payload = json.dumps(obj).encode()
    for decode in (Hello.decode, Welcome.decode):
        with contextlib.suppress(RemoteProtocolError):
            decode(payload)


@examples(200)
@given(st.binary(max_size=100))
def test_property_garbage_raises_only_remote_protocol_error(payload: bytes) -> None:
    for decode in (Hello.decode, Welcome.decode):
        with contextlib.suppress(RemoteProtocolError):
            decode(payload)


# -- the handshake's rules, shared by both sides ------------------------------------------


def test_read_hello_returns_the_hello() -> None:
    assert read_hello(FULL_HELLO.encode()) == FULL_HELLO


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (WELCOME.encode(), GoAwayCode.PROTOCOL_ERROR),  # not a HELLO
        (HELLO.encode() + HELLO.encode(), GoAwayCode.PROTOCOL_ERROR),  # two frames
        (b"\x00", GoAwayCode.PROTOCOL_ERROR),  # not a frame at all
        (refusal(HandshakeRefused(GoAwayCode.NORMAL, "x")), GoAwayCode.PROTOCOL_ERROR),
        (
            Hello(version=99, window=65536, max_streams=1, client_secret=SECRET).encode(),
            GoAwayCode.VERSION_MISMATCH,
        ),
    ],
)
def test_read_hello_refuses_anything_else_with_a_code(message: bytes, code: GoAwayCode) -> None:
    with pytest.raises(HandshakeRefused) as refused:
        read_hello(message)
    assert refused.value.code is code and refused.value.reason


def test_a_refusal_reaches_the_client_as_the_same_refusal() -> None:
    sent = HandshakeRefused(GoAwayCode.LIMIT_EXCEEDED, "this address already holds 20 links")
    with pytest.raises(HandshakeRefused) as got:
        read_welcome(refusal(sent))
    assert (got.value.code, got.value.reason) == (sent.code, sent.reason)
    assert not got.value.retryable
    assert HandshakeRefused(GoAwayCode.SHUTDOWN, "").retryable


def test_read_welcome_returns_the_welcome_and_rejects_other_frames() -> None:
    assert read_welcome(WELCOME.encode()) == WELCOME
    with pytest.raises(RemoteProtocolError):
        read_welcome(HELLO.encode())
    with pytest.raises(RemoteProtocolError):
        read_welcome(WELCOME.encode() + WELCOME.encode())
