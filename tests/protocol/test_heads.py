"""Request and response heads: JSON, validation of hostile input, hop-by-hop headers."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.protocol.helpers import examples
from tunnel_client.protocol.errors import LocalProtocolError, RemoteProtocolError
from tunnel_client.protocol.heads import (
    MAX_HEADERS,
    MAX_TARGET_BYTES,
    RequestHead,
    ResponseHead,
    strip_hop_by_hop,
)


def request_json(**fields: Any) -> bytes:
    obj: dict[str, Any] = {"method": "GET", "target": "/", "headers": [], "websocket": False}
    obj.update(fields)
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


def response_json(**fields: Any) -> bytes:
    obj: dict[str, Any] = {"status": 200, "headers": []}
    obj.update(fields)
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


# -- round trips --------------------------------------------------------------------------


def test_request_head_round_trip_keeps_repeats_and_order() -> None:
    head = RequestHead(
        "POST",
        "/a/b?c=1&d=%20",
        (("Host", "x.example"), ("Cookie", "a=1"), ("cookie", "b=2"), ("X-Empty", "")),
        websocket=False,
    )
    assert RequestHead.decode(head.encode()) == head
    assert head.header("COOKIE") == "a=1"
    assert head.header("missing") is None


def test_request_head_encoding_is_compact_json() -> None:
    head = RequestHead("GET", "/", (("Host", "h"),), websocket=True)
    assert json.loads(head.encode()) == {
        "method": "GET",
        "target": "/",
        "headers": [["Host", "h"]],
        "websocket": True,
    }
    assert b" " not in head.encode()


def test_response_head_round_trip() -> None:
    head = ResponseHead(404, (("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")))
    assert ResponseHead.decode(head.encode()) == head
    assert head.header("set-cookie") == "a=1"
    assert head.header("x") is None


def test_defaults_and_unknown_keys() -> None:
    assert RequestHead.decode(b'{"method":"GET","target":"/","future":1}') == RequestHead(
        "GET", "/"
    )
    assert ResponseHead.decode(b'{"status":204,"x":[1]}') == ResponseHead(204)


def test_asterisk_target_and_non_ascii_path() -> None:
    assert RequestHead.decode(request_json(method="OPTIONS", target="*")).target == "*"
    # aiohttp hands over undecodable path bytes as surrogate escapes: they survive.
    target = "/caf\u00e9/\udcff"
    assert RequestHead.decode(request_json(target=target)).target == target


# -- hostile JSON -------------------------------------------------------------------------

BAD_REQUESTS = {
    "not json": b"{nope",
    "not utf-8": b'{"method":"\xff"}',
    "array": b"[]",
    "string": b'"GET /"',
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "huge integer": b'{"method":' + b"9" * 5000 + b"}",
    "method missing": request_json(method=...),
    "method not a string": request_json(method=1),
    "method with space": request_json(method="GE T"),
    "method empty": request_json(method=""),
    "method with CRLF": request_json(method="GET\r\nX: y"),
    "method too long": request_json(method="A" * 33),
    "method non-ascii": request_json(method="G\u00c9T"),
    "target missing": request_json(target=...),
    "target empty": request_json(target=""),
    "target not a string": request_json(target=["/"]),
    "target relative": request_json(target="a/b"),
    "target absolute URL": request_json(target="http://evil/"),
    "target with space": request_json(target="/a b"),
    "target with CR": request_json(target="/a\rb"),
    "target with LF": request_json(target="/a\nb"),
    "target with NUL": request_json(target="/a\0b"),
    "target with DEL": request_json(target="/a\x7fb"),
    "target too long": request_json(target="/" + "a" * MAX_TARGET_BYTES),
    "target lone surrogate": b'{"method":"GET","target":"/\\ud800"}',
    "websocket as int": request_json(websocket=1),
    "websocket as string": request_json(websocket="true"),
    "websocket null": request_json(websocket=None),
    "headers an object": request_json(headers={"Host": "x"}),
    "headers a string": request_json(headers="Host: x"),
    "header not a pair": request_json(headers=[["Host"]]),
    "header a triple": request_json(headers=[["Host", "x", "y"]]),
    "header a string": request_json(headers=["Host: x"]),
    "header name not a string": request_json(headers=[[1, "x"]]),
    "header name empty": request_json(headers=[["", "x"]]),
    "header name with colon": request_json(headers=[["Host:", "x"]]),
    "header name with space": request_json(headers=[["X Y", "x"]]),
    "header name with LF": request_json(headers=[["X\n", "x"]]),
    "header name with LF inside": request_json(headers=[["A", "1"], ["X\nY", "x"]]),
    "header name a two-character string": request_json(headers=["ab"]),
    "header value not a string": request_json(headers=[["X", 1]]),
    "header value null": request_json(headers=[["X", None]]),
    "header value with CR": request_json(headers=[["X", "a\rb"]]),
    "header value with LF": request_json(headers=[["X", "a\nSet-Cookie: evil"]]),
    "header value with NUL": request_json(headers=[["X", "a\0b"]]),
    "a triple after a pair": request_json(headers=[["A", "1"], ["B", "2", "3"]]),
    "a string after a pair": request_json(headers=[["A", "1"], "ab"]),
    "header name a list": request_json(headers=[[["X"], "x"]]),
    "header value a list after a pair": request_json(headers=[["A", "1"], ["X", ["y"]]]),
    "header value an object": request_json(headers=[["X", {"y": 1}]]),
    "too many headers": request_json(headers=[["X", "y"]] * (MAX_HEADERS + 1)),
}


@pytest.mark.parametrize("payload", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_hostile_request_heads_are_refused(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        RequestHead.decode(payload)


def test_header_count_at_the_limit_is_accepted() -> None:
    head = RequestHead.decode(request_json(headers=[["X", "y"]] * MAX_HEADERS))
    assert len(head.headers) == MAX_HEADERS


BAD_RESPONSES = {
    "not json": b"HTTP/1.1 200 OK",
    "array": b"[200]",
    "status missing": response_json(status=...),
    "status a string": response_json(status="200"),
    "status a float": response_json(status=200.0),
    "status true": response_json(status=True),
    "status too low": response_json(status=99),
    "status too high": response_json(status=600),
    "headers an object": response_json(headers={"a": "b"}),
    "header value with CRLF": response_json(headers=[["Location", "/\r\nX: y"]]),
    "too many headers": response_json(headers=[["X", "y"]] * (MAX_HEADERS + 1)),
}


@pytest.mark.parametrize("payload", BAD_RESPONSES.values(), ids=BAD_RESPONSES.keys())
def test_hostile_response_heads_are_refused(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        ResponseHead.decode(payload)


def test_local_heads_are_validated_with_local_errors() -> None:
    with pytest.raises(LocalProtocolError):
        RequestHead("BAD METHOD", "/")
    with pytest.raises(LocalProtocolError):
        RequestHead("GET", "/", (("X", "a\r\nb"),))
    with pytest.raises(LocalProtocolError):
        ResponseHead(700)
    with pytest.raises(LocalProtocolError):
        ResponseHead(200, (("Bad Name", "x"),))


def test_status_boundaries() -> None:
    assert ResponseHead.decode(response_json(status=100)).status == 100
    assert ResponseHead.decode(response_json(status=599)).status == 599


# -- hop-by-hop ---------------------------------------------------------------------------


def test_strip_hop_by_hop_drops_every_listed_header_case_insensitively() -> None:
    headers = [
        ("Host", "x"),
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authenticate", "a"),
        ("PROXY-AUTHORIZATION", "b"),
        ("Proxy-Connection", "c"),
        ("TE", "trailers"),
        ("Trailer", "X"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Content-Length", "3"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]
    assert strip_hop_by_hop(headers) == [
        ("Host", "x"),
        ("Content-Length", "3"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


def test_strip_hop_by_hop_drops_headers_named_in_connection() -> None:
    headers = [
        ("Connection", "X-Secret , x-other,close"),
        ("connection", "X-Third"),
        ("x-secret", "1"),
        ("X-Other", "2"),
        ("X-Third", "3"),
        ("X-Kept", "4"),
    ]
    assert strip_hop_by_hop(iter(headers)) == [("X-Kept", "4")]


def test_strip_hop_by_hop_with_nothing_to_strip() -> None:
    assert strip_hop_by_hop([]) == []
    assert strip_hop_by_hop([("A", "1")]) == [("A", "1")]


# -- properties ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)
head_like = st.fixed_dictionaries(
    {},
    optional={
        "method": json_values | st.sampled_from(["GET", "POST", "G T"]),
        "target": json_values | st.sampled_from(["/", "*", "/a b", "x"]),
        "headers": json_values | st.lists(st.lists(st.text(max_size=6), max_size=3), max_size=3),
        "websocket": json_values,
        "status": json_values | st.integers(0, 700),
    },
)


def _decode_both(payload: bytes) -> None:
    for decode in (RequestHead.decode, ResponseHead.decode):
        with contextlib.suppress(RemoteProtocolError):
            decode(payload)


@examples(300)
@given(st.binary(max_size=200))
def test_property_garbage_bytes_raise_only_remote_protocol_error(payload: bytes) -> None:
    _decode_both(payload)


@examples(150)
@given(head_like)
def test_property_hostile_json_raises_only_remote_protocol_error(obj: dict[str, Any]) -> None:
    _decode_both(json.dumps(obj).encode())


@examples(200)
@given(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=10),
    st.text(max_size=30).filter(lambda v: not set(v) & {"\0", "\r", "\n"}),
)
def test_property_valid_headers_round_trip(name: str, value: str) -> None:
    head = RequestHead("GET", "/", ((name, value),))
    assert RequestHead.decode(head.encode()) == head
    reply = ResponseHead(200, ((name, value),))
    assert ResponseHead.decode(reply.encode()) == reply
