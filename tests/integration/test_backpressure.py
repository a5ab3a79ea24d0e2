"""Backpressure: slow visitors and slow local servers keep relay and client memory bounded.

A visitor reads a 1 GiB download at a few MB/s, or a local server reads an upload at a
few MB/s; the windows must make everyone upstream wait rather than buffer. We watch the
relay's and the client's resident memory all along, and check that a second request on
the same tunnel is not held up by the slow one.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from tests.origin import PATTERN, pattern_bytes
from tests.processes import (
    Origin,
    RelayProcess,
    TunnelProcess,
    fetch,
    rss_bytes,
    run_relay,
    run_tunnel,
)

pytestmark = pytest.mark.integration

MIB = 1 << 20
GIB = 1 << 30
RSS_HEADROOM = 40 * MIB
"""How much relay or client RSS may grow over its warmed-up baseline during a slow transfer.

The windows are 256 KiB per stream, so a correct implementation stays far below this;
one that buffers what the fast side offers grows by hundreds of MiB within seconds."""
PROMPT_S = 2.0
"""A small request beside a slow transfer must finish within this (loaded 2-core box)."""
SLOW_RATE = 4 * MIB
"""Bytes per second the slow side accepts."""
SLOW_FOR_S = 4.0


@dataclass
class RssWatch:
    """Samples the resident memory of some processes until stopped; keeps the peaks."""

    pids: dict[str, int]
    peaks: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                self.peaks[name] = max(self.peaks.get(name, 0), rss_bytes(pid))
            self._stop.wait(0.05)


@contextmanager
def watch_rss(pids: dict[str, int]) -> Iterator[RssWatch]:
    watch = RssWatch(pids)
    thread = threading.Thread(target=watch.run, daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        watch._stop.set()
        thread.join(5)


def warm_up(relay: RelayProcess, tunnel: TunnelProcess) -> dict[str, int]:
    """Exercise the path once, so the baseline includes imports and buffers of a first use."""
    for _ in range(3):
        assert fetch(relay.port, tunnel.host, "/").status == 200
        reply = fetch(relay.port, tunnel.host, f"/bytes/{4 * MIB}")
        assert reply.status == 200 and len(reply.body) == 4 * MIB
    return {"relay": rss_bytes(relay.proc.pid), "client": rss_bytes(tunnel.proc.pid)}


def assert_bounded(watch: RssWatch, baseline: dict[str, int]) -> None:
    for name, base in baseline.items():
        grew = watch.peaks[name] - base
        print(f"\n{name} RSS {base / MIB:.1f} -> peak {watch.peaks[name] / MIB:.1f} MiB")
        assert grew < RSS_HEADROOM, (
            f"{name} RSS grew by {grew / MIB:.1f} MiB (baseline {base / MIB:.1f} MiB, "
            f"peak {watch.peaks[name] / MIB:.1f} MiB); bound {RSS_HEADROOM / MIB:.0f} MiB"
        )


def open_visitor(relay_port: int, *, rcvbuf: int | None = None) -> socket.socket:
    """A raw visitor socket to the relay, optionally with a small receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        # Before connect, so the advertised TCP window stays small.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(15)
    sock.connect(("127.0.0.1", relay_port))
    return sock


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read up to the end of the response head; return (head, body bytes read past it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed inside the response head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def check_pattern(offset: int, chunk: bytes) -> None:
    """Chunks of /bytes/{n} must be the pattern at their offset."""
    start = offset % len(PATTERN)
    expected = (PATTERN * (2 + len(chunk) // len(PATTERN)))[start : start + len(chunk)]
    assert chunk == expected, f"body differs from the pattern near offset {offset}"


@dataclass
class SlowReader:
    """Reads a download at about ``rate`` bytes/s, for ``duration`` seconds."""

    sock: socket.socket
    rate: float
    duration: float
    received: int = 0
    error: BaseException | None = None
    going: threading.Event = field(default_factory=threading.Event)
    """Set once 1 MiB arrived: the slow download is established."""

    def run(self) -> None:
        try:
            head, rest = read_head(self.sock)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert f"content-length: {GIB}".encode() in head.lower(), head
            check_pattern(0, rest)
            self.received = len(rest)
            started = time.monotonic()
            while time.monotonic() - started < self.duration:
                chunk = self.sock.recv(16384)
                assert chunk, "the download ended early"
                check_pattern(self.received, chunk)
                self.received += len(chunk)
                if self.received >= MIB:
                    self.going.set()
                # Pace to the rate: sleep off whatever we are ahead of it.
                ahead = self.received / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        except BaseException as exc:
            self.error = exc
        finally:
            self.going.set()


def timed_fetch(relay: RelayProcess, tunnel: TunnelProcess, path: str) -> tuple[int, int, float]:
    started = time.monotonic()
    reply = fetch(relay.port, tunnel.host, path)
    return reply.status, len(reply.body), time.monotonic() - started


@pytest.mark.timeout(90)
def test_slow_1gib_download_keeps_memory_bounded_and_other_requests_prompt(
    origin: Origin,
) -> None:
    with run_relay() as relay, run_tunnel(origin.port, relay=relay) as tunnel:
        baseline = warm_up(relay, tunnel)
        with watch_rss({"relay": relay.proc.pid, "client": tunnel.proc.pid}) as watch:
            sock = open_visitor(relay.port, rcvbuf=32 * 1024)
            try:
                sock.sendall(
                    f"GET /bytes/{GIB} HTTP/1.1\r\nHost: {tunnel.host}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                reader = SlowReader(sock, SLOW_RATE, SLOW_FOR_S)
                thread = threading.Thread(target=reader.run, daemon=True)
                thread.start()
                assert reader.going.wait(20), "the slow download never started"
                # While the slow download is under way: other requests on the same tunnel.
                others = [
                    timed_fetch(relay, tunnel, "/"),
                    timed_fetch(relay, tunnel, f"/bytes/{MIB}"),
                    timed_fetch(relay, tunnel, "/echo"),
                ]
                still_reading = thread.is_alive()
                thread.join(SLOW_FOR_S + 20)
            finally:
                sock.close()
        assert reader.error is None, f"slow reader failed: {reader.error!r}"
        assert still_reading, "the other requests finished only after the slow download"
        for status, length, took in others:
            assert status == 200 and length > 0
            assert took < PROMPT_S, f"a request beside the slow download took {took:.2f} s"
        assert others[1][1] == MIB
        # The visitor really was slow: nowhere near the 1 GiB it asked for.
        assert MIB <= reader.received <= SLOW_RATE * (SLOW_FOR_S + 1) + MIB
        assert_bounded(watch, baseline)
        # The backpressure reached the local server: the client read from it only about
        # what the visitor took, plus the windows and the sockets' buffers on the way.
        record = tunnel.wait_event("request", timeout=15, path=f"/bytes/{GIB}")
        assert record["bytes"] < reader.received + 64 * MIB, record


@dataclass
class FastSender:
    """Pushes an upload body as fast as the relay lets it, until stopped."""

    sock: socket.socket
    total: int
    sent: int = 0
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        piece = PATTERN * 4
        self.sock.settimeout(0.2)  # so that a blocked send notices the stop flag
        try:
            while self.sent < self.total and not self.stop.is_set():
                try:
                    self.sent += self.sock.send(piece[: self.total - self.sent])
                except TimeoutError:
                    continue  # the relay is pushing back: exactly what we want to see
        except BaseException as exc:
            self.error = exc


@pytest.mark.timeout(90)
def test_large_upload_to_a_slow_local_server_keeps_relay_memory_bounded(origin: Origin) -> None:
    with run_relay() as relay, run_tunnel(origin.port, relay=relay) as tunnel:
        baseline = warm_up(relay, tunnel)
        before = origin.stats()["slow_upload_bytes"]
        widest = 0
        with watch_rss({"relay": relay.proc.pid, "client": tunnel.proc.pid}) as watch:
            sock = open_visitor(relay.port)
            sender = FastSender(sock, GIB)
            try:
                sock.sendall(
                    f"POST /slow-upload?rate={SLOW_RATE} HTTP/1.1\r\nHost: {tunnel.host}\r\n"
                    f"Content-Length: {GIB}\r\nContent-Type: application/octet-stream\r\n"
                    "\r\n".encode()
                )
                thread = threading.Thread(target=sender.run, daemon=True)
                thread.start()
                deadline = time.monotonic() + SLOW_FOR_S
                while time.monotonic() < deadline:
                    # How far the visitor got ahead of what the local server consumed.
                    received = origin.stats()["slow_upload_bytes"] - before
                    widest = max(widest, sender.sent - received)
                    time.sleep(0.1)
                sender.stop.set()
                thread.join(10)
            finally:
                sock.close()
        received = origin.stats()["slow_upload_bytes"] - before
        assert sender.error is None, f"sender failed: {sender.error!r}"
        assert received > MIB, f"the local server got only {received} bytes"
        # Without backpressure, loopback takes the whole GiB within a second or two.
        assert sender.sent < received + 64 * MIB, (sender.sent, received)
        assert widest < 64 * MIB, f"the visitor got {widest / MIB:.1f} MiB ahead"
        assert_bounded(watch, baseline)


@pytest.mark.timeout(60)
def test_upload_to_a_slow_local_server_arrives_intact(origin: Origin) -> None:
    size = 6 * MIB
    body = pattern_bytes(size)
    with run_relay() as relay, run_tunnel(origin.port, relay=relay) as tunnel:
        started = time.monotonic()
        reply = fetch(
            relay.port,
            tunnel.host,
            f"/slow-upload?rate={SLOW_RATE}",
            method="POST",
            body=body,
            timeout=60,
        )
        took = time.monotonic() - started
    assert reply.status == 200, reply.body[:300]
    result = json.loads(reply.body)
    assert result == {"length": size, "sha256": hashlib.sha256(body).hexdigest()}
    # The local server really did read slowly, so the upload waited on it.
    assert took >= size / SLOW_RATE * 0.9
