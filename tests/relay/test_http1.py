"""The edge's HTTP/1.1 pieces, sans-I/O: request heads, chunked bodies, response heads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay_server.http1 import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    ChunkedDecoder,
    HttpError,
    find_head_end,
    parse_request,
    response_head,
    valid_host,
    websocket_accept,
    websocket_problem,
)


def head(*lines: str, first: str = "GET / HTTP/1.1") -> bytes:
    return ("\r\n".join([first, *lines]) + "\r\n\r\n").encode("latin-1")


def test_a_plain_request() -> None:
    request = parse_request(head("Host: a.example:8080", "X-Dup: 1", "x-dup: 2", "X-E:  v \t"))
    assert (request.method, request.target, request.minor) == ("GET", "/", 1)
    assert request.host == "a.example:8080"
    # Names keep their case, repeated headers stay apart and in order, OWS goes.
    assert request.headers == [
        ("Host", "a.example:8080"),
        ("X-Dup", "1"),
        ("x-dup", "2"),
        ("X-E", "v"),
    ]
    assert request.framing == NO_BODY and not request.close


def test_obs_text_passes_byte_for_byte() -> None:
    request = parse_request(head("Host: a", "X-Latin: caf\xe9 \xff"))
    assert request.header("x-latin") == "caf\xe9 \xff"
    assert request.header("x-latin").encode("latin-1") == b"caf\xe9 \xff"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("first", "target"),
    [
        ("BREW /pot HTTP/1.1", "/pot"),
        ("PROPFIND /x? HTTP/1.1", "/x?"),
        ("OPTIONS * HTTP/1.1", "*"),
        ("GET /a%2Fb?x=%20 HTTP/1.1", "/a%2Fb?x=%20"),
        ("M-SEARCH * HTTP/1.1", "*"),
    ],
)
def test_any_token_method_and_the_target_as_sent(first: str, target: str) -> None:
    request = parse_request(head("Host: a", first=first))
    assert request.method == first.split()[0]
    assert request.target == target


def test_a_raw_utf8_target_is_decoded_as_the_protocol_carries_it() -> None:
    request = parse_request(b"GET /caf\xc3\xa9/\xff HTTP/1.1\r\nHost: a\r\n\r\n")
    assert request.target == "/café/\udcff"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (head("Host: a", first="GET / HTTP/2.0"), 505),
        (head("Host: a", first="GET / HTTP/0.9"), 505),
        (head("Host: a", first="GET / HTTP/1.1 x"), 400),
        (head("Host: a", first="GET  / HTTP/1.1"), 400),
        (head("Host: a", first="GET /"), 400),
        (head("Host: a", first="G(T / HTTP/1.1"), 400),
        (head("Host: a", first="GET / http/1.1"), 400),
        (head("Host: a", "X: a", " folded"), 400),
        (head("Host: a", "Bad Name: x"), 400),
        (head("Host: a", "Name : x"), 400),
        (head("Host: a", ": no name"), 400),
        (head("Host: a", "NoColon"), 400),
        (head("Host: a", "X: a\x00b"), 400),
        (head("Host: a", "X: a\rb"), 400),
        (head("Host: a", "X: a\x7fb"), 400),
        (head("Host: a", "Host: b"), 400),
        (head(), 400),  # HTTP/1.1 without Host
        (head("Content-Length: 5", "Content-Length: 5", "Host: a"), 400),
        (head("Content-Length: 5, 5", "Host: a"), 400),
        (head("Content-Length: +5", "Host: a"), 400),
        (head("Content-Length: 5", "Transfer-Encoding: chunked", "Host: a"), 400),
        (head("Transfer-Encoding: chunked, identity", "Host: a"), 400),
        (head("Transfer-Encoding: chunked", "Transfer-Encoding: chunked", "Host: a"), 400),
        (head("Transfer-Encoding: xchunked", "Host: a"), 400),
        (head("Transfer-Encoding: gzip, chunked", "Host: a"), 501),
        (head("Transfer-Encoding: chunked", first="POST / HTTP/1.0"), 400),
        (head(*[f"X-{i}: v" for i in range(600)], "Host: a"), 431),
    ],
)
def test_malformed_heads_are_refused(raw: bytes, status: int) -> None:
    with pytest.raises(HttpError) as refused:
        parse_request(raw)
    assert refused.value.status == status


@pytest.mark.parametrize(
    "host",
    [
        "a.example",
        "a.example:80",
        "a.example:",
        "127.0.0.1:8080",
        "[::1]:8080",
        "[2001:db8::1]",
        "under_score.example",
    ],
)
def test_host_names_with_optional_ports_are_hosts(host: str) -> None:
    assert valid_host(host)
    assert parse_request(head(f"Host: {host}")).host == host


@pytest.mark.parametrize(
    "host",
    [
        "link.example:80@evil.example",
        "link.example:<script>",
        "link.example:1/x/../y",
        "link.example:80x",
        "link.example:123456",
        "link.example caf\xe9",
        "link.example/x",
        "",
        "[::1",
        "a,b",
    ],
)
def test_anything_else_in_host_is_400(host: str) -> None:
    assert not valid_host(host)
    with pytest.raises(HttpError) as refused:
        parse_request(head(f"Host: {host}"))
    assert refused.value.status == 400


def test_framing_connection_and_expect() -> None:
    request = parse_request(
        head("Host: a", "Content-Length: 12", "Expect: 100-continue", first="POST / HTTP/1.1")
    )
    assert (request.framing, request.body_length, request.expect_continue) == (LENGTH, 12, True)
    request = parse_request(
        head("Host: a", "Transfer-Encoding: identity, CHUNKED", "Connection: close")
    )
    assert request.framing == CHUNKED and request.close
    assert parse_request(head("Host: a", "Content-Length: 0")).framing == NO_BODY
    old = parse_request(head("Expect: 100-continue", "Content-Length: 1", first="PUT / HTTP/1.0"))
    # HTTP/1.0: no Host needed, no 100 Continue, and closed unless it asks to keep alive.
    assert (old.host, old.expect_continue, old.close) == (None, False, True)
    assert not parse_request(head("Connection: keep-alive", first="GET / HTTP/1.0")).close


def test_the_end_of_a_head() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nnext"
    assert find_head_end(data) == len(data) - 4
    assert find_head_end(data[:10]) == -1
    with pytest.raises(HttpError):
        find_head_end(b"GET / HTTP/1.1\nHost: a\n\n")


WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def ws_head(*lines: str) -> bytes:
    return head("Host: a", "Upgrade: websocket", "Connection: Upgrade", *lines)


def test_websocket_handshakes() -> None:
    ok = parse_request(ws_head(f"Sec-WebSocket-Key: {WS_KEY}", "Sec-WebSocket-Version: 13"))
    assert websocket_problem(ok) is None
    assert websocket_accept(WS_KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3
    for bad in (
        ws_head("Sec-WebSocket-Version: 13"),
        ws_head("Sec-WebSocket-Key: c2hvcnQ=", "Sec-WebSocket-Version: 13"),
        ws_head(f"Sec-WebSocket-Key: {WS_KEY}", "Sec-WebSocket-Version: 8"),
        ws_head(f"Sec-WebSocket-Key: {WS_KEY}", f"Sec-WebSocket-Key: {WS_KEY}"),
        head("Host: a", "Upgrade: websocket", f"Sec-WebSocket-Key: {WS_KEY}"),
    ):
        assert websocket_problem(parse_request(bad)) is not None


def decode(data: bytes, step: int | None = None) -> tuple[bytes, bytes]:
    decoder = ChunkedDecoder()
    body, rest = b"", b""
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        if decoder.done:
            rest += piece
            continue
        out, after = decoder.feed(piece)
        body += b"".join(bytes(p) for p in out)
        rest += after
    assert decoder.done
    return body, rest


CHUNKED_BODY = b'5\r\nhello\r\n6;ext=1;q="a b"\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT'


@pytest.mark.parametrize("step", [None, 1, 2, 3, 7])
def test_chunked_bodies_decode_whatever_the_pieces(step: int | None) -> None:
    assert decode(CHUNKED_BODY, step) == (b"hello world", b"NEXT")


@given(st.lists(st.binary(min_size=1, max_size=50), max_size=5), st.integers(1, 40))
def test_chunked_round_trip(chunks: list[bytes], step: int) -> None:
    encoded = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    assert decode(encoded, step) == (b"".join(chunks), b"")


@pytest.mark.parametrize(
    "data",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"f" * 19 + b"\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\n0\n\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"5\r\x00\nhello\r\n0\r\n\r\n",
        b"1" * 5000,
    ],
)
def test_malformed_chunked_bodies_are_400(data: bytes) -> None:
    with pytest.raises(HttpError) as refused:
        ChunkedDecoder().feed(data)
    assert refused.value.status == 400


def test_response_heads() -> None:
    assert response_head(200, [("X-A", "1"), ("X-A", "caf\xe9")], b"Content-Length: 0\r\n") == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-A: caf\xe9\r\nContent-Length: 0\r\n\r\n"
    )
    assert response_head(599, []).startswith(b"HTTP/1.1 599 \r\n")
    # A value that was decoded as UTF-8, surrogates and all, goes back out as those bytes.
    assert b"X: \xe2\x9c\x93 \xff\r\n" in response_head(200, [("X", "\u2713 \udcff")])
