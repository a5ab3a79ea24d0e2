"""HTTP/1.1 for the visitor edge, sans-I/O: request heads in, chunked bodies, response heads out.

The relay parses visitors' request heads itself instead of with llhttp (``httptools``),
for three reasons measured or found while building the edge:

* llhttp refuses methods it does not know (``BREW``, any extension token) with an
  error, and an app behind a share link may use any token as a method;
* httptools reports where a message ended only for upgrades, so it cannot tell where a
  chunked body stops and a pipelined request begins (on_headers_complete skips the
  body of any upgrade request);
* it holds heads to the rules of the tunnel's heads as well
  (:meth:`~tunnel_client.protocol.heads.RequestHead.prechecked`), so they are
  checked once;
* on the heads visitors send, a split-based parser is within 1-2 us of llhttp plus the
  per-header callbacks and decoding the relay needs anyway (wrk's 2-line head: 2.9 us
  against 1.9 us; a browser's 13-line head: 7 us against 4 us, 2 cores, CPython 3.11).

What it accepts (RFC 9112, strictly, since two parsers that disagree are how requests
are smuggled): lines end in CRLF, never a bare CR or LF; a field name is a token
directly followed by ``:``; no obs-fold; no control byte in a field value but HTAB;
``obs-text`` (bytes 0x80-0xFF) passes. Field values are decoded as latin-1, so every
byte comes back out unchanged; the target is decoded as UTF-8 with surrogateescape,
as the protocol's heads carry it (:mod:`tunnel_client.protocol.heads`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http
import re
import time
from collections.abc import Sequence
from email.utils import formatdate

from tunnel_client.protocol.heads import MAX_HEADERS

__all__ = [
    "ChunkedDecoder",
    "ConnectionGone",
    "HttpError",
    "Request",
    "find_head_end",
    "parse_request",
    "response_head",
    "valid_host",
    "wants_websocket",
    "websocket_accept",
    "websocket_problem",
]

CHUNKED, LENGTH, NO_BODY = "chunked", "length", "none"
"""How a request body is framed (:attr:`Request.framing`)."""

MAX_METHOD = 32
"""The longest method a tunnel head may carry."""

ADDED_HEADERS = 3
"""The relay adds X-Forwarded-For, -Host and -Proto to every request it forwards."""

MAX_CHUNK_LINE = 4096
"""A chunk-size line (with its extensions) or a trailer line may be at most this long."""

_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Bytes allowed in a head besides CR and LF: visible ASCII, SP, HTAB and obs-text.
_FIELD_BYTES = bytes(b for b in range(256) if (b >= 0x20 and b != 0x7F) or b == 0x09)
_HEX = b"0123456789abcdefABCDEF"
_VERSION = re.compile(r"HTTP/([0-9])\.([0-9])")
_HOST = re.compile(r"(?:[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{0,5})?")


class ConnectionGone(Exception):
    """The visitor's connection closed before its request body ended."""


class HttpError(Exception):
    """A request the relay answers itself: its status and why (shown to the visitor)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Request:
    """One parsed request head, and what the edge needs to know about it."""

    __slots__ = (
        "body_length",
        "close",
        "connection_upgrade",
        "expect_continue",
        "framing",
        "head_bytes",
        "headers",
        "host",
        "method",
        "minor",
        "target",
        "upgrade",
    )

    def __init__(
        self, method: str, target: str, minor: int, headers: list[tuple[str, str]], size: int
    ) -> None:
        self.method = method
        self.target = target
        """As sent: origin-form, absolute-form, authority-form or ``*``."""
        self.minor = minor
        """1 for HTTP/1.1, 0 for HTTP/1.0."""
        self.headers = headers
        """Every field line in order, names as sent, values latin-1 without OWS."""
        self.head_bytes = size
        self.host: str | None = None
        self.framing = NO_BODY
        self.body_length = 0
        self.close = minor == 0
        """The visitor wants the connection closed after this exchange."""
        self.expect_continue = False
        self.upgrade = ""
        """The (last) Upgrade header's value, lowercased ("" without one)."""
        self.connection_upgrade = False
        """Connection names the upgrade option."""

    def header(self, lname: str) -> str | None:
        """The first value of a header (``lname`` in lowercase), or None."""
        for name, value in self.headers:
            if name.lower() == lname:
                return value
        return None

    def header_all(self, lname: str) -> list[str]:
        return [value for name, value in self.headers if name.lower() == lname]


def find_head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """The length of the head at the start of ``buffer`` (through its blank line), or -1.

    Raises:
        HttpError: 400 if the head so far uses bare LF line ends (it would never end).
    """
    end = buffer.find(b"\r\n\r\n", max(start - 3, 0))
    if end >= 0:
        return end + 4
    if buffer.count(b"\n") != buffer.count(b"\r\n"):
        raise HttpError(400, "Request lines must end with CRLF.")
    return -1


def parse_request(head: bytes) -> Request:
    """Parse a request head (everything through the blank line).

    Raises:
        HttpError: 400 for a malformed head, 505 for an HTTP version other than 1.x, 501
            for a transfer coding the relay does not implement.
    """
    lines_bytes = head.count(b"\n")
    # One C-speed pass: only CRLF pairs may remain once every allowed byte is deleted.
    if head.translate(None, _FIELD_BYTES) != b"\r\n" * lines_bytes:
        raise HttpError(400, "The request head contains control characters or bare CR/LF.")
    lines = head[:-4].decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    target, _, version = rest.partition(" ")
    if version == "HTTP/1.1":
        minor = 1
    elif version == "HTTP/1.0":
        minor = 0
    else:
        match = _VERSION.fullmatch(version)
        if match is None or " " in version or not target:
            raise HttpError(400, "The request line is malformed.")
        raise HttpError(505, f"This relay speaks HTTP/1.1, not {version}.")
    if not method or not target or " " in target:
        raise HttpError(400, "The request line is malformed.")
    if len(method) > MAX_METHOD:
        raise HttpError(501, f"This relay knows no method of {len(method)} characters.")
    fields = [line.partition(":") for line in lines[1:]]
    if len(fields) > MAX_HEADERS - ADDED_HEADERS:
        raise HttpError(431, f"This relay accepts at most {MAX_HEADERS - ADDED_HEADERS} headers.")
    names = "\n".join([name if colon else " " for name, colon, _ in fields])
    if (method + names).encode("latin-1").translate(None, _TCHAR) != b"\n" * (
        len(fields) - 1 if fields else 0
    ) or not all([name for name, _, _ in fields]):
        if method.encode("latin-1").translate(None, _TCHAR):
            raise HttpError(400, "The request method is not a token (RFC 9110 §9).")
        raise HttpError(400, "A header line is malformed (or folded, which HTTP/1.1 forbids).")
    headers = [(name, value.strip(" \t")) for name, _, value in fields]
    try:
        target = target.encode("latin-1").decode("utf-8", "surrogateescape")
    except UnicodeDecodeError:  # pragma: no cover - surrogateescape decodes any bytes
        raise HttpError(400, "The request target is malformed.") from None
    request = Request(method, target, minor, headers, len(head))
    _read_fields(request, names.lower().split("\n") if fields else [])
    return request


_SPECIAL = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade"}
)


def _read_fields(request: Request, lnames: list[str]) -> None:
    """Fill in what the headers say about framing, Host and the connection."""
    hosts: list[str] = []
    lengths: list[str] = []
    codings: list[str] = []
    connection: list[str] = []
    expect = upgrade = None
    headers = request.headers
    for i, lname in enumerate(lnames):
        if lname not in _SPECIAL:
            continue
        value = headers[i][1]
        if lname == "host":
            hosts.append(value)
        elif lname == "content-length":
            lengths.append(value)
        elif lname == "transfer-encoding":
            codings.extend(c.strip().lower() for c in value.split(","))
        elif lname == "connection":
            connection.extend(c.strip().lower() for c in value.split(","))
        elif lname == "expect":
            expect = value.lower()
        elif lname == "upgrade":
            upgrade = value.lower()
    if len(hosts) > 1:
        raise HttpError(400, "The request has more than one Host header.")
    if hosts:
        if not valid_host(hosts[0]):
            raise HttpError(400, "The Host header is not a host name with an optional port.")
        request.host = hosts[0]
    elif request.minor == 1:
        raise HttpError(400, "An HTTP/1.1 request needs a Host header.")
    if codings:
        if lengths:
            raise HttpError(400, "The request has both Content-Length and Transfer-Encoding.")
        if request.minor == 0:
            raise HttpError(400, "HTTP/1.0 has no Transfer-Encoding.")
        # RFC 9112 §6.3: chunked must come last (else the length is unknowable: 400);
        # §6.1: a coding the server does not implement is 501.
        if codings[-1] != "chunked" or codings.count("chunked") != 1:
            raise HttpError(400, "The request's Transfer-Encoding does not end with chunked.")
        unknown = [c for c in codings[:-1] if c != "identity"]
        if unknown:
            raise HttpError(501, f"This relay does not implement the {unknown[0]!r} coding.")
        request.framing = CHUNKED
    elif lengths:
        value = lengths[0]
        if len(lengths) > 1 or not (value.isascii() and value.isdigit()) or len(value) > 18:
            raise HttpError(400, "The request's Content-Length is invalid.")
        request.body_length = int(value)
        if request.body_length:
            request.framing = LENGTH
    request.close = "close" in connection or (request.minor == 0 and "keep-alive" not in connection)
    if expect == "100-continue" and request.minor == 1:
        request.expect_continue = True
    if upgrade is not None:
        request.upgrade = upgrade
        request.connection_upgrade = "upgrade" in connection


_valid_hosts: dict[str, bool] = {}


def valid_host(value: str) -> bool:
    """True for a host name, IPv4 or bracketed IPv6 address, with an optional port."""
    valid = _valid_hosts.get(value)
    if valid is None:
        if len(_valid_hosts) >= 4096:
            _valid_hosts.clear()  # strangers' hosts cannot grow it without bound
        valid = _valid_hosts[value] = _HOST.fullmatch(value) is not None
    return valid


def websocket_problem(request: Request) -> str | None:
    """Why a WebSocket upgrade request is not one (RFC 6455 §4.2.1), or None if it is."""
    if request.method != "GET" or request.minor != 1:
        return "A WebSocket handshake must be an HTTP/1.1 GET."
    if request.framing != NO_BODY:
        return "A WebSocket handshake has no body."
    if request.upgrade != "websocket" or not request.connection_upgrade:
        return "A WebSocket handshake needs Upgrade: websocket and Connection: upgrade."
    if request.header("sec-websocket-version") != "13":
        return "This relay speaks WebSocket version 13 only."
    key = request.header_all("sec-websocket-key")
    if len(key) != 1:
        return "A WebSocket handshake needs one Sec-WebSocket-Key."
    try:
        raw = base64.b64decode(key[0], validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        return "The Sec-WebSocket-Key is not 16 bytes in base64."
    return None


_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def websocket_accept(key: str) -> str:
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(
        hashlib.sha1(key.encode() + _WS_GUID, usedforsecurity=False).digest()
    ).decode()


def wants_websocket(request: Request) -> bool:
    """True when the visitor asks for a WebSocket (valid or not) in any way."""
    return "websocket" in request.upgrade


class ChunkedDecoder:
    """A strict decoder of the chunked transfer coding (RFC 9112 §7.1).

    Feed it the bytes that follow a head with :meth:`feed`; it returns the body bytes
    they hold and, once the last chunk and its trailer section have passed, the bytes
    after it (the next pipelined request). Trailer fields are checked and dropped: the
    tunnel has no frame for them. Chunk extensions are accepted and dropped.
    """

    __slots__ = ("_left", "_line", "_state", "_trailer_bytes", "done", "max_trailer_bytes")

    _SIZE, _DATA, _CRLF, _TRAILER = range(4)

    def __init__(self, max_trailer_bytes: int = 16384) -> None:
        self._state = self._SIZE
        self._left = 0
        self._line = b""
        self._trailer_bytes = 0
        self.max_trailer_bytes = max_trailer_bytes
        self.done = False

    def feed(self, data: bytes) -> tuple[list[bytes | memoryview], bytes]:
        """Decode ``data``; returns the body pieces in it and what follows the body.

        Raises:
            HttpError: 400 for anything that is not strictly chunked.
        """
        pieces: list[bytes | memoryview] = []
        pos, size = 0, len(data)
        view: memoryview | None = None
        while pos < size and not self.done:
            state = self._state
            if state == self._DATA:
                n = min(self._left, size - pos)
                if pos == 0 and n == size:
                    pieces.append(data)
                else:
                    if view is None:
                        view = memoryview(data)
                    pieces.append(view[pos : pos + n])
                pos += n
                self._left -= n
                if not self._left:
                    self._state = self._CRLF
            elif state == self._CRLF:
                need = 2 - len(self._line)
                got = data[pos : pos + need]
                self._line += got
                pos += len(got)
                if len(self._line) == 2:
                    if self._line != b"\r\n":
                        raise HttpError(400, "A chunk is not followed by CRLF.")
                    self._line = b""
                    self._state = self._SIZE
                elif self._line != b"\r":
                    raise HttpError(400, "A chunk is not followed by CRLF.")
            else:
                end = data.find(b"\n", pos)
                if end < 0:
                    self._line += data[pos:]
                    pos = size
                    if len(self._line) > MAX_CHUNK_LINE:
                        raise HttpError(400, "A chunk-size or trailer line is too long.")
                    break
                line = self._line + data[pos : end + 1]
                self._line = b""
                pos = end + 1
                if len(line) > MAX_CHUNK_LINE:
                    raise HttpError(400, "A chunk-size or trailer line is too long.")
                if state == self._SIZE:
                    self._on_size_line(line)
                else:
                    self._on_trailer_line(line)
        return pieces, data[pos:] if self.done else b""

    def _on_size_line(self, line: bytes) -> None:
        if not line.endswith(b"\r\n") or line.translate(None, _FIELD_BYTES) != b"\r\n":
            raise HttpError(400, "A chunk-size line is malformed.")
        digits, semicolon, _ = line[:-2].partition(b";")
        if semicolon:
            digits = digits.rstrip(b" \t")  # BWS before a chunk extension
        if not digits or len(digits) > 15 or digits.translate(None, _HEX):
            raise HttpError(400, "A chunk size is not a hexadecimal number.")
        self._left = int(digits, 16)
        self._state = self._DATA if self._left else self._TRAILER

    def _on_trailer_line(self, line: bytes) -> None:
        self._trailer_bytes += len(line)
        if self._trailer_bytes > self.max_trailer_bytes:
            raise HttpError(431, "The request's trailer section is too large.")
        if line == b"\r\n":
            self.done = True
            return
        name, colon, _ = line.partition(b":")
        if (
            not line.endswith(b"\r\n")
            or line.translate(None, _FIELD_BYTES) != b"\r\n"
            or not colon
            or not name
            or name.translate(None, _TCHAR)
        ):
            raise HttpError(400, "A trailer field is malformed.")


# -- responses ----------------------------------------------------------------------------

_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``; the version is ours whatever the visitor's."""
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        line = f"HTTP/1.1 {status} {phrase}\r\n".encode()
        if 100 <= status <= 599:
            _STATUS_LINES[status] = line
    return line


_date: tuple[int, bytes] = (0, b"")


def date_line() -> bytes:
    """``Date: ...\\r\\n`` for now, formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, f"Date: {formatdate(now, usegmt=True)}\r\n".encode())
    return _date[1]


def _encode_value(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        # A value that was not decoded byte for byte (a client that decoded UTF-8).
        return value.encode("utf-8", "surrogateescape" if _escapable(value) else "replace")


def _escapable(value: str) -> bool:
    try:
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def response_head(status: int, headers: Sequence[tuple[str, str]], extra: bytes = b"") -> bytes:
    """A response head: the status line, ``headers``, then ``extra`` (lines ending in
    CRLF, written by the edge: framing and connection), then the blank line."""
    text = "".join([f"{name}: {value}\r\n" for name, value in headers])
    try:
        fields = text.encode("latin-1")
    except UnicodeEncodeError:
        fields = b"".join(
            name.encode("latin-1", "replace") + b": " + _encode_value(value) + b"\r\n"
            for name, value in headers
        )
    return status_line(status) + fields + extra + b"\r\n"
