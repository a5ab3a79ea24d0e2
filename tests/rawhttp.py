"""HTTP/1.1 on a raw socket, for tests that must send exactly the bytes they choose.

:class:`RawConnection` writes whatever bytes a test gives it and parses responses
strictly (status line, headers, then a body framed by Content-Length, chunked encoding
or the connection's close), keeping any bytes read past one response for the next, so
a relay that answers one request twice, or a smuggled request, shows up as an extra or
misplaced response rather than being silently skipped.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

__all__ = ["ConnectionClosed", "RawConnection", "RawResponse"]


@dataclass
class RawResponse:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def from_relay(self) -> bool:
        """True for the relay's own error pages."""
        return self.header("X-Sharetunnel-Error") is not None

    @property
    def keeps_alive(self) -> bool:
        connection = (self.header("Connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    def __repr__(self) -> str:
        return f"<{self.version} {self.status} {self.reason} {self.headers} {self.body[:200]!r}>"


class ConnectionClosed(Exception):
    """The peer closed the connection in the middle of a response."""


class RawConnection:
    """One TCP connection to 127.0.0.1:port."""

    def __init__(self, port: int, *, timeout: float = 15, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buffer = b""
        self.eof = False

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Send bytes; False if the peer already closed the connection."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionClosed(f"closed inside a line: {self.buffer[:200]!r}")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise ConnectionClosed(f"closed with {len(self.buffer)} of {n} body bytes")
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def closed_by_peer(self) -> bool:
        """True when the peer closed the connection (after whatever is buffered); False
        if it is still open or sent more bytes than were read so far."""
        if self.eof:
            return True
        if self.buffer:
            return False
        return not self._fill()

    def read_response(self, *, head: bool = False) -> RawResponse | None:
        """The next response, or None if the connection closed before its first byte."""
        if not self.buffer and not self._fill():
            return None
        status_line = self._line().decode("latin-1")
        version, _, rest = status_line.partition(" ")
        assert version.startswith("HTTP/"), f"not a status line: {status_line!r}"
        code, _, reason = rest.partition(" ")
        headers: list[tuple[str, str]] = []
        while line := self._line():
            name, sep, value = line.decode("latin-1").partition(":")
            assert sep, f"malformed response header {line!r}"
            headers.append((name.strip(), value.strip()))
        response = RawResponse(version, int(code), reason, headers, b"")
        status = response.status
        if head or status in (204, 304) or 100 <= status < 200:
            return response
        encoding = (response.header("Transfer-Encoding") or "").lower()
        length = response.header("Content-Length")
        if "chunked" in encoding:
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass  # trailers
                    break
                body += self._exactly(size)
                assert self._line() == b"", "chunk not followed by CRLF"
            response.body = body
        elif length is not None:
            response.body = self._exactly(int(length))
        else:
            while self._fill():
                pass
            response.body, self.buffer = self.buffer, b""
        return response
