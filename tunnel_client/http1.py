"""HTTP/1.1 to the local server, sans-I/O: request heads out, responses in.

:func:`request_head` builds the bytes of a request from a tunnel
:class:`~.protocol.heads.RequestHead` exactly: header names keep their case, repeats
and order; nothing is added but what HTTP/1.1 needs to frame the message (``Host`` if
the visitor sent none, ``Content-Length`` or ``Transfer-Encoding: chunked`` for a body,
``Connection: Upgrade`` and ``Upgrade: websocket`` for a WebSocket handshake).

:class:`ResponseReader` parses the local server's response and calls its
:class:`ResponseSink` as the parts arrive. Heads are parsed here in Python: they are
small, the head of a typical response parses in about 4 us (half of what llhttp takes
through httptools' per-header callbacks), and llhttp refuses header values with control
bytes (``\\x01``, ``\\x7f``) that a proxy should pass on byte for byte. Chunked bodies
go through llhttp (``httptools.HttpResponseParser``), fed a fixed head and then the
body bytes; length-framed bodies are only counted.

Header values are text decoded as latin-1, so every octet survives the round trip
(RFC 9110 §5.5: obs-text). Request header values that are not latin-1 text came from a
relay that decodes as UTF-8 with surrogate escapes (aiohttp does): they are encoded
back that way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol

import httptools

from .protocol.heads import HOP_BY_HOP, MAX_HEADERS, Headers, RequestHead

__all__ = [
    "LAST_CHUNK",
    "MAX_HEAD_BYTES",
    "HeadTooLargeError",
    "InvalidResponse",
    "ResponseReader",
    "ResponseSink",
    "chunk",
    "header_bytes",
    "request_head",
]

MAX_HEAD_BYTES = 1 << 20
"""A response head larger than this is refused before it is parsed (the tunnel's own
limit, 256 KiB of JSON, is checked when the REPLY is sent)."""

MAX_LINE_BYTES = 64 * 1024
"""The status line must end within this many bytes (a server that is not HTTP)."""

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_STATUS_LINE = re.compile(r"HTTP/1\.([01]) ([0-9]{3})(?: (.*))?\Z", re.DOTALL)
_CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
# Hop-by-hop headers of the request that we set ourselves (the relay strips them too).
_OURS = HOP_BY_HOP | {"sec-websocket-extensions"}


class InvalidResponse(Exception):
    """The local server's answer is not HTTP/1.x, or breaks its framing."""


class HeadTooLargeError(InvalidResponse):
    """The response head is over :data:`MAX_HEAD_BYTES` or has too many lines."""


def header_bytes(text: str) -> bytes:
    """A header name or value as the octets it stands for (see the module docstring)."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


def request_head(
    head: RequestHead,
    *,
    host: str | None = None,
    default_host: str = "localhost",
    body_length: int | None = None,
    chunked: bool = False,
) -> bytes:
    """The request line and headers for the local server, as bytes.

    Args:
        head: the request as the relay forwarded it (hop-by-hop headers already gone;
            any left are dropped here).
        host: a ``Host`` value that replaces the visitor's (``--host-header``), in place.
        default_host: the ``Host`` to send if the head has none (HTTP/1.1 requires one).
        body_length: send ``Content-Length: N`` if the head has none (a body whose length
            the visitor did not say, but that is all here already).
        chunked: the body's length is unknown: send it with chunked encoding.
    """
    lines = [f"{head.method} {head.target} HTTP/1.1"]
    has_host = has_length = False
    for name, value in head.headers:
        lower = name.lower()
        if lower in _OURS:
            continue
        if lower == "host":
            if has_host:
                continue  # one Host only (the relay never sends two)
            has_host = True
            if host is not None:
                value = host
        elif lower == "content-length":
            has_length = True
        lines.append(f"{name}: {value}")
    if not has_host:
        lines.insert(1, f"Host: {host or default_host}")
    if chunked and not has_length:
        lines.append("Transfer-Encoding: chunked")
    elif body_length is not None and not has_length:
        lines.append(f"Content-Length: {body_length}")
    if head.websocket:
        lines.append("Connection: Upgrade")
        lines.append("Upgrade: websocket")
    lines.append("\r\n")
    text = "\r\n".join(lines)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        # The target is UTF-8 with surrogate escapes (aiohttp's raw path), and so may be
        # a value; each part is encoded on its own.
        return _encode_parts(head, lines)


def _encode_parts(head: RequestHead, lines: list[str]) -> bytes:
    first = f"{head.method} ".encode() + head.target.encode("utf-8", "surrogateescape")
    rest = [first + b" HTTP/1.1"]
    for line in lines[1:]:
        name, sep, value = line.partition(": ")
        rest.append(header_bytes(name) + sep.encode() + header_bytes(value))
    return b"\r\n".join(rest)


def chunk(data: bytes) -> list[bytes]:
    """One chunk of a chunked body (for ``transport.writelines``)."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


LAST_CHUNK = b"0\r\n\r\n"


class ResponseSink(Protocol):
    """Where a :class:`ResponseReader` delivers a response."""

    def response_head(self, status: int, reason: str, headers: Headers) -> None:
        """The final response head (interim 1xx heads other than 101 are skipped)."""

    def response_body(self, data: bytes) -> None:
        """A piece of the body, as it arrived."""

    def response_end(self) -> None:
        """The body is complete."""


class ResponseReader:
    """Parses one response from the bytes of the connection.

    Args:
        sink: receives the head, the body pieces and the end.
        head_request: the request was HEAD (so the response has no body).
        upgrade: the request asked for a WebSocket: a 101 ends the HTTP part, and the
            bytes after its head are the WebSocket's (:attr:`rest`).

    After :meth:`feed` or :meth:`feed_eof`: :attr:`done` once the response is complete,
    :attr:`reusable` if the connection may carry another request.

    Raises (from :meth:`feed` and :meth:`feed_eof`):
        InvalidResponse: the bytes are not a valid response (the connection is unusable).
    """

    __slots__ = (
        "_buffer",
        "_chunked",
        "_head_request",
        "_left",
        "_sink",
        "_until_close",
        "_upgrade",
        "_version_10",
        "done",
        "head_done",
        "hop_by_hop",
        "rest",
        "reusable",
        "status",
    )

    def __init__(self, sink: ResponseSink, *, head_request: bool, upgrade: bool) -> None:
        self._sink = sink
        self._head_request = head_request
        self._upgrade = upgrade
        self._buffer = b""
        self._left = 0
        self._chunked: _ChunkedBody | None = None
        self._until_close = False
        self._version_10 = False
        self.status = 0
        self.head_done = False
        self.hop_by_hop = False
        """The head has hop-by-hop headers (to strip before it is passed on)."""
        self.done = False
        self.reusable = False
        self.rest = b""
        """Bytes after a 101 head: the first bytes of the WebSocket."""

    def feed(self, data: bytes) -> None:
        """Take bytes from the connection."""
        if self.done:
            # Bytes after a complete response, before the next request: not HTTP.
            self.reusable = False
            return
        if not self.head_done:
            data = self._buffer + data if self._buffer else data
            self._buffer = b""
            data = self._parse_heads(data)
            if not self.head_done:
                return
            if self.done:
                if self.status == 101:
                    self.rest = data
                elif data:
                    self.reusable = False  # bytes after a whole response: not HTTP
                return
        if self._chunked is not None:
            self._chunked.feed(data)
            if self._chunked.done:
                self._finish(extra=self._chunked.extra)
        elif self._until_close:
            if data:
                self._sink.response_body(data)
        else:
            left = self._left
            if len(data) <= left:
                self._left = left - len(data)
                if data:
                    self._sink.response_body(data)
                if not self._left:
                    self._finish(extra=False)
            else:
                if left:
                    self._sink.response_body(data[:left])
                self._left = 0
                self._finish(extra=True)

    def feed_eof(self) -> None:
        """The server closed its side."""
        if self.done:
            self.reusable = False
            return
        if not self.head_done:
            if self._buffer:
                self._check_status_line(self._buffer)
                raise InvalidResponse("the local server closed the connection mid-head")
            raise InvalidResponse("the local server closed the connection without answering")
        if self._until_close:
            self._finish(extra=False)
            self.reusable = False
            return
        raise InvalidResponse("the local server closed the connection mid-body")

    def _finish(self, *, extra: bool) -> None:
        self.done = True
        if extra:
            self.reusable = False
        self._sink.response_end()
        self._let_go()

    def _let_go(self) -> None:
        """Done: nothing more reaches the sink, so drop it. The sink (the forwarder's
        exchange) holds this reader: kept, the pair would be a reference cycle per
        request, freed only by the cyclic garbage collector."""
        self._sink = _LET_GO
        if self._chunked is not None:
            self._chunked.let_go()
            self._chunked = None

    # -- heads --------------------------------------------------------------------------

    def _parse_heads(self, data: bytes) -> bytes:
        """Parse heads off ``data`` (skipping interim ones); return the rest."""
        while True:
            end = data.find(b"\r\n\r\n")
            size = 4
            if end < 0:
                end = data.find(b"\n\n")  # bare LF line ends (RFC 9112 §2.2 allows them)
                size = 2
            if end < 0:
                self._check_status_line(data)
                if len(data) > MAX_HEAD_BYTES:
                    raise HeadTooLargeError(
                        f"the response head is over {MAX_HEAD_BYTES // 1024} KiB"
                    )
                self._buffer = data
                return b""
            if end > MAX_HEAD_BYTES:
                raise HeadTooLargeError(f"the response head is over {MAX_HEAD_BYTES // 1024} KiB")
            interim = self._parse_head(data[:end].decode("latin-1"))
            data = data[end + size :]
            if not interim:
                return data

    def _check_status_line(self, data: bytes) -> None:
        """Refuse a first line that cannot start a response, before its head is whole
        (a server that is not HTTP may send one line and wait)."""
        newline = data.find(b"\n")
        if newline >= 0:
            line = data[:newline].rstrip(b"\r").decode("latin-1")
            if not _STATUS_LINE.match(line):
                raise InvalidResponse(f"Bad status line {_quote(line)}")
        elif len(data) > MAX_LINE_BYTES or not _could_start(data):
            raise InvalidResponse(f"Bad status line {_quote(data.decode('latin-1'))}")

    def _parse_head(self, text: str) -> bool:
        """Parse one head; True if it was an interim (1xx) response to skip."""
        lines = text.split("\n")
        status_line = lines[0].removesuffix("\r")
        match = _STATUS_LINE.match(status_line)
        if match is None:
            raise InvalidResponse(f"Bad status line {_quote(status_line)}")
        status = int(match.group(2))
        if not 100 <= status <= 599:
            raise InvalidResponse(f"invalid status {status}")
        headers = _parse_fields(lines)
        if 100 <= status < 200 and status != 101:
            return True  # 100 Continue, 103 Early Hints: the tunnel relays final heads only
        self._version_10 = match.group(1) == "0"
        self.status = status
        self.head_done = True
        self._frame(status, headers)
        self._sink.response_head(status, match.group(3) or "", headers)
        if self.done:
            if status != 101:
                self._sink.response_end()
            self._let_go()
        return False

    def _frame(self, status: int, headers: Headers) -> None:
        """How the body is delimited (RFC 9112 §6.3), and whether the connection lives on."""
        keep_alive = not self._version_10
        transfer_coding = None
        lengths = []
        hop = False
        for name, value in headers:
            lower = name.lower()
            if lower in HOP_BY_HOP:
                hop = True
            if lower == "connection":
                tokens = {t.strip().lower() for t in value.split(",")}
                if "close" in tokens:
                    keep_alive = False
                elif "keep-alive" in tokens:
                    keep_alive = True
            elif lower == "transfer-encoding":
                transfer_coding = value.rsplit(",", 1)[-1].strip().lower()
            elif lower == "content-length":
                lengths.append(value.strip())
        self.reusable = keep_alive
        self.hop_by_hop = hop
        if status == 101:
            if not self._upgrade:
                raise InvalidResponse("101 Switching Protocols to a request that asked for none")
            self.done = True
            self.reusable = False
            return
        if self._head_request or status in (204, 304):
            self.done = True
            return
        if transfer_coding is not None:
            if lengths:
                self.reusable = False  # both: the length is ignored (§6.3 rule 3)
            if transfer_coding == "chunked":
                self._chunked = _ChunkedBody(self._sink)
            else:
                self._until_close = True
                self.reusable = False
            return
        if lengths:
            if len(set(lengths)) != 1 or not all(n.isascii() and n.isdigit() for n in lengths):
                raise InvalidResponse(f"invalid Content-Length {', '.join(lengths)!r:.80}")
            self._left = int(lengths[0])
            if not self._left:
                self.done = True
            return
        self._until_close = True
        self.reusable = False


class _LetGo:
    """The sink of a reader that is done: never called (a call would be a bug here)."""

    def response_head(self, status: int, reason: str, headers: Headers) -> None:
        raise AssertionError("a done response reader got a head")

    def response_body(self, data: bytes) -> None:
        raise AssertionError("a done response reader got body bytes")

    def response_end(self) -> None:
        raise AssertionError("a done response reader ended twice")


_LET_GO = _LetGo()


def _could_start(data: bytes) -> bool:
    """True if ``data`` may still grow into ``HTTP/1.x``."""
    prefix = b"HTTP/1."
    n = min(len(data), len(prefix))
    return data[:n] == prefix[:n]


def _quote(line: str) -> str:
    shown = line if len(line) <= 100 else line[:97] + "..."
    return repr(shown)


def _parse_fields(lines: Iterable[str]) -> Headers:
    fields: list[tuple[str, str]] = []
    it = iter(lines)
    next(it)  # the status line
    for raw in it:
        line = raw[:-1] if raw.endswith("\r") else raw
        if "\r" in line or "\x00" in line:
            raise InvalidResponse("a response header line holds a CR or NUL byte")
        if line[:1] in (" ", "\t"):
            # obs-fold (RFC 9112 §5.2): a proxy replaces it with a space.
            if not fields:
                raise InvalidResponse("the response head starts with a folded line")
            name, value = fields[-1]
            folded = line.strip(" \t")
            fields[-1] = (name, f"{value} {folded}" if value else folded)
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise InvalidResponse(f"invalid response header line {_quote(line)}")
        name = name.rstrip(" \t")  # §5.1: a proxy removes whitespace before the colon
        if not _TOKEN.match(name):
            raise InvalidResponse(f"invalid response header name {_quote(name)}")
        fields.append((name, value.strip(" \t")))
    if len(fields) > MAX_HEADERS:
        raise HeadTooLargeError(f"the response head has {len(fields)} headers, over {MAX_HEADERS}")
    return tuple(fields)


class _ChunkedBody:
    """A chunked body, decoded by llhttp (see the module docstring)."""

    __slots__ = ("_parser", "_sink", "done", "extra")

    def __init__(self, sink: ResponseSink) -> None:
        self._sink = sink
        self.done = False
        self.extra = False
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._parser.feed_data(_CHUNKED_HEAD)

    def let_go(self) -> None:
        """Done: drop the parser (which holds this object: a cycle) and the sink."""
        self._parser = None
        self._sink = _LET_GO

    def feed(self, data: bytes) -> None:
        if self.done or self._parser is None:
            self.extra = self.extra or bool(data)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.done:
                self.extra = True  # bytes after the last chunk that are no response
                return
            raise InvalidResponse(f"invalid chunked body: {exc}") from None

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._sink.response_body(body)

    def on_message_complete(self) -> None:
        self.done = True

    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True
