"""The HTTP/1.1 bytes of the forwarder, sans-I/O: request heads out, responses in."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.protocol.helpers import examples
from tunnel_client.http1 import (
    MAX_HEAD_BYTES,
    HeadTooLargeError,
    InvalidResponse,
    ResponseReader,
    chunk,
    header_bytes,
    request_head,
)
from tunnel_client.protocol.heads import Headers, RequestHead, ResponseHead


@dataclass
class Sink:
    heads: list[tuple[int, str, Headers]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ends: int = 0

    def response_head(self, status: int, reason: str, headers: Headers) -> None:
        self.heads.append((status, reason, headers))

    def response_body(self, data: bytes) -> None:
        self.body += data

    def response_end(self) -> None:
        self.ends += 1


def read(
    *pieces: bytes, head_request: bool = False, upgrade: bool = False, eof: bool = False
) -> tuple[Sink, ResponseReader]:
    sink = Sink()
    reader = ResponseReader(sink, head_request=head_request, upgrade=upgrade)
    for piece in pieces:
        reader.feed(piece)
    if eof:
        reader.feed_eof()
    return sink, reader


# -- request heads -------------------------------------------------------------------------


def test_a_request_head_adds_only_framing() -> None:
    head = RequestHead("POST", "/a?b", (("host", "x"), ("X-A", "1"), ("Connection", "close")))
    assert request_head(head, chunked=True) == (
        b"POST /a?b HTTP/1.1\r\nhost: x\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert request_head(head, body_length=5).endswith(b"X-A: 1\r\nContent-Length: 5\r\n\r\n")
    with_length = RequestHead("POST", "/", (("Host", "x"), ("Content-Length", "3")))
    assert request_head(with_length, body_length=3, chunked=False).count(b"Content-Length") == 1


def test_a_missing_host_is_added_and_a_rewritten_one_stays_in_place() -> None:
    assert request_head(RequestHead("GET", "/"), default_host="127.0.0.1:80") == (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n"
    )
    head = RequestHead("GET", "/", (("X", "1"), ("HOST", "public"), ("Host", "twice")))
    assert (
        request_head(head, host="localhost:8")
        == b"GET / HTTP/1.1\r\nX: 1\r\nHOST: localhost:8\r\n\r\n"
    )


def test_bytes_of_values_and_targets() -> None:
    head = RequestHead(
        "GET", "/caf\udce9/\u00e9", (("Host", "h"), ("X", "\u65e5"), ("Y", "caf\xe9"))
    )
    assert request_head(head) == (
        b"GET /caf\xe9/\xc3\xa9 HTTP/1.1\r\nHost: h\r\nX: \xe6\x97\xa5\r\nY: caf\xe9\r\n\r\n"
    )
    assert header_bytes("caf\udce9") == b"caf\xe9" == header_bytes("caf\xe9")


def test_a_websocket_head_asks_for_the_upgrade() -> None:
    head = RequestHead(
        "GET", "/ws", (("Host", "h"), ("Sec-WebSocket-Extensions", "x")), websocket=True
    )
    assert request_head(head) == (
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )


def test_chunk_framing() -> None:
    assert b"".join(chunk(b"x" * 26)) == b"1a\r\n" + b"x" * 26 + b"\r\n"


# -- responses -----------------------------------------------------------------------------


def test_a_head_in_pieces_and_a_body_by_length() -> None:
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX:  padded \t\r\n\r\nhello"
    sink, reader = read(*[response[i : i + 3] for i in range(0, len(response), 3)])
    assert sink.heads == [(200, "OK", (("Content-Length", "5"), ("X", "padded")))]
    assert (bytes(sink.body), sink.ends, reader.done, reader.reusable) == (b"hello", 1, True, True)


def test_bare_lf_lines_folded_lines_and_space_before_the_colon() -> None:
    sink, _ = read(b"HTTP/1.1 204 No Content\nX-A : 1\nX-B: one\n  two\n\n")
    assert sink.heads == [(204, "No Content", (("X-A", "1"), ("X-B", "one two")))]


@pytest.mark.parametrize(
    ("response", "head_request", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", True, True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", False, True),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", False, True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", False, False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False, False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n", False, True),
    ],
)
def test_responses_without_a_body(response: bytes, head_request: bool, reusable: bool) -> None:
    sink, reader = read(response, head_request=head_request)
    assert (sink.ends, bytes(sink.body), reader.done, reader.reusable) == (1, b"", True, reusable)


def test_a_chunked_body_and_its_trailers() -> None:
    sink, reader = read(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n",
        b"5;x=y\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    assert (bytes(sink.body), sink.ends, reader.reusable) == (b"wikipedia", 1, True)


def test_a_body_until_close_and_transfer_encoding_beating_length() -> None:
    sink, reader = read(b"HTTP/1.1 200 OK\r\n\r\nsome", b" more", eof=True)
    assert (bytes(sink.body), sink.ends, reader.reusable) == (b"some more", 1, False)
    sink, reader = read(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\nabc", eof=True
    )
    assert (bytes(sink.body), reader.reusable) == (b"abc", False)
    sink, reader = read(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n",
        b"1\r\na\r\n0\r\n\r\n",
    )
    assert (bytes(sink.body), reader.done, reader.reusable) == (b"a", True, False)


def test_bytes_after_a_response_make_the_connection_unusable() -> None:
    _, reader = read(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab")
    assert reader.done and not reader.reusable
    _, reader = read(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", b"junk")
    assert not reader.reusable
    _, reader = read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nHTTP/1.1")
    assert not reader.reusable


def test_interim_heads_are_skipped_and_101_keeps_what_follows() -> None:
    sink, _ = read(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert [h[0] for h in sink.heads] == [200]
    sink, reader = read(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi", upgrade=True
    )
    assert ([h[0] for h in sink.heads], sink.ends) == ([101], 0)
    assert (reader.done, reader.reusable, reader.rest) == (True, False, b"\x81\x02hi")


@pytest.mark.parametrize(
    ("pieces", "message"),
    [
        ((b"SSH-2.0-OpenSSH_9.2\r\n",), "Bad status line 'SSH-2.0-OpenSSH_9.2'"),
        ((b"<html>",), "Bad status line"),
        ((b"HTTP/2 200 OK\r\n\r\n",), "Bad status line"),
        ((b"HTTP/1.1 600 Odd\r\n\r\n",), "invalid status 600"),
        ((b"HTTP/1.1 200 OK\r\n folded first\r\n\r\n",), "folded"),
        ((b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",), "header line"),
        ((b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",), "CR or NUL"),
        ((b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",), "Content-Length"),
        ((b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",), "Content-Length"),
        ((b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",), "chunked"),
        ((b"HTTP/1.1 101 Switching Protocols\r\n\r\n",), "101"),
    ],
)
def test_invalid_responses(pieces: tuple[bytes, ...], message: str) -> None:
    with pytest.raises(InvalidResponse, match=message):
        read(*pieces)


@pytest.mark.parametrize(
    ("pieces", "message"),
    [
        ((), "without answering"),
        ((b"HTTP/1.1 200 OK\r\nX: y",), "mid-head"),
        ((b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",), "mid-body"),
        ((b"SSH-2.0",), "Bad status line"),
    ],
)
def test_a_close_too_early(pieces: tuple[bytes, ...], message: str) -> None:
    with pytest.raises(InvalidResponse, match=message):
        read(*pieces, eof=True)


def test_heads_too_large() -> None:
    with pytest.raises(HeadTooLargeError, match="headers"):
        read(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 513 + b"\r\n")
    with pytest.raises(HeadTooLargeError, match="KiB"):
        read(b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_HEAD_BYTES)
    with pytest.raises(HeadTooLargeError, match="KiB"):
        read(b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_HEAD_BYTES + b"\r\n\r\n")


# The forwarder hands what the reader parsed to ResponseHead.prechecked, which skips the
# protocol's checks: every head the reader accepts must pass them.
_TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_header_line = st.tuples(
    st.text(alphabet=_TCHARS, min_size=1, max_size=12),
    st.sampled_from([":", " :", "\t:"]),  # whitespace before the colon is removed
    st.binary(max_size=30),  # any bytes: the reader refuses what may not pass
    st.sampled_from([b"\r\n", b"\n"]),
)


@examples(300)
@given(st.integers(100, 599), st.lists(_header_line, max_size=8))
def test_property_every_head_the_reader_accepts_passes_the_protocol_checks(
    status: int, lines: list[tuple[str, str, bytes, bytes]]
) -> None:
    raw = b"".join(n.encode() + c.encode() + v + end for n, c, v, end in lines)
    response = b"HTTP/1.1 %d X\r\n%b\r\n" % (status, raw)
    try:
        sink, _ = read(response, head_request=True, upgrade=status == 101)
    except InvalidResponse:
        return  # refused: nothing reaches the tunnel
    for parsed_status, _, headers in sink.heads:
        checked = ResponseHead(parsed_status, headers)  # validates; raises if not
        assert ResponseHead.prechecked(parsed_status, headers) == checked
