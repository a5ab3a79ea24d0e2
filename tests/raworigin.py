"""A tiny raw TCP origin for tests that must see or send exact bytes.

aiohttp's origin (tests/origin.py) normalises what some tests need to see: header case,
the bytes of a value, a Content-Type it adds. :class:`RawOrigin` listens on 127.0.0.1 in
a thread, reads each request head (and its body, by Content-Length or chunked), keeps
the raw bytes, and answers with the bytes a test scripted for the path, keeping the
connection open for the next request unless the answer says ``Connection: close``.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["RawOrigin", "RawRequest", "raw_origin"]

Answer = bytes | Callable[["RawRequest"], bytes]


@dataclass
class RawRequest:
    """One request as the origin read it."""

    head: bytes
    body: bytes

    @property
    def request_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    @property
    def target(self) -> bytes:
        return self.request_line.split(b" ")[1]

    @property
    def header_lines(self) -> list[bytes]:
        return self.head.split(b"\r\n")[1:]

    def values(self, name: bytes) -> list[bytes]:
        """Every value of a header, in order (bytes exactly as received)."""
        found = []
        for line in self.header_lines:
            key, _, value = line.partition(b":")
            if key.lower() == name.lower():
                found.append(value.strip(b" \t"))
        return found


@dataclass
class RawOrigin:
    port: int
    answers: dict[bytes, Answer] = field(default_factory=dict)
    """Path (target without the query) -> the response bytes, or a function making them;
    empty bytes close the connection without an answer."""
    requests: list[RawRequest] = field(default_factory=list)
    connections: int = 0
    disconnects: int = 0
    """Connections that ended, by either side."""

    def answer(self, path: str, response: Answer) -> None:
        self.answers[path.encode()] = response

    def last(self, path: str) -> RawRequest:
        wanted = path.encode()
        return [r for r in self.requests if r.target.split(b"?")[0] == wanted][-1]


def _read_until(sock: socket.socket, buffer: bytearray, marker: bytes) -> int:
    while (end := buffer.find(marker)) < 0:
        data = sock.recv(65536)
        if not data:
            return -1
        buffer += data
    return end


def _read_exact(sock: socket.socket, buffer: bytearray, n: int) -> bytes | None:
    while len(buffer) < n:
        data = sock.recv(65536)
        if not data:
            return None
        buffer += data
    out = bytes(buffer[:n])
    del buffer[:n]
    return out


def _read_chunked(sock: socket.socket, buffer: bytearray) -> bytes | None:
    body = bytearray()
    while True:
        end = _read_until(sock, buffer, b"\r\n")
        if end < 0:
            return None
        size = int(bytes(buffer[:end]).split(b";")[0], 16)
        del buffer[: end + 2]
        if size == 0:
            if _read_until(sock, buffer, b"\r\n") < 0:
                return None
            while not buffer.startswith(b"\r\n"):  # trailers
                end = _read_until(sock, buffer, b"\r\n")
                del buffer[: end + 2]
            del buffer[:2]
            return bytes(body)
        piece = _read_exact(sock, buffer, size + 2)
        if piece is None:
            return None
        body += piece[:-2]


def _handler(origin: RawOrigin) -> type[socketserver.BaseRequestHandler]:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            sock.settimeout(30)
            origin.connections += 1
            buffer = bytearray()
            try:
                while True:
                    end = _read_until(sock, buffer, b"\r\n\r\n")
                    if end < 0:
                        return
                    head = bytes(buffer[:end])
                    del buffer[: end + 4]
                    request = RawRequest(head, b"")
                    length = request.values(b"Content-Length")
                    if length:
                        body = _read_exact(sock, buffer, int(length[0]))
                    elif [v.lower() for v in request.values(b"Transfer-Encoding")] == [b"chunked"]:
                        body = _read_chunked(sock, buffer)
                    else:
                        body = b""
                    if body is None:
                        return
                    request.body = body
                    origin.requests.append(request)
                    answer = origin.answers.get(request.target.split(b"?")[0])
                    if answer is None:
                        answer = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                    elif callable(answer):
                        answer = answer(request)
                    if not answer:
                        return  # an empty answer: close the connection without one
                    sock.sendall(answer)
                    if b"\r\nconnection: close\r\n" in answer.lower().split(b"\r\n\r\n")[0] + (
                        b"\r\n"
                    ):
                        return
            except OSError:
                return
            finally:
                origin.disconnects += 1

    return Handler


@contextmanager
def raw_origin() -> Iterator[RawOrigin]:
    """A :class:`RawOrigin` listening on 127.0.0.1 until the block ends."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler)
    server.daemon_threads = True
    origin = RawOrigin(server.server_address[1])
    server.RequestHandlerClass = _handler(origin)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield origin
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
