"""Limits a stranger hits, each with its own answer: 429, 431, 413, a refused tunnel, a cut
connection; and the memory bound when visitors stop reading.

Every test runs a real relay with the limit set small, a real ``tunnel`` process and the
test origin, and checks both sides of the limit: what goes over it is refused with the
documented status, what stays under it is served.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

from relay_server.config import RelayConfig
from relay_server.settings import RELAY
from tests.origin import pattern_bytes
from tests.processes import (
    Origin,
    RelayProcess,
    fetch,
    rss_bytes,
    run_relay,
    run_tunnel,
    start_tunnel,
    wait_until,
)
from tests.rawhttp import RawConnection
from tunnel_client.protocol.settings import resolve

pytestmark = pytest.mark.integration

MIB = 1 << 20
GRADIO_HEARTBEAT_S = 15.0
"""Gradio's queue sends an SSE heartbeat this often; a shorter idle timeout breaks it."""


def origin_stats(origin: Origin) -> dict[str, int]:
    with RawConnection(origin.port) as conn:
        conn.send(f"GET /stats HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n".encode())
        response = conn.read_response()
    assert response is not None and response.status == 200
    return response.json()  # type: ignore[no-any-return]


def relay_error(reply_headers: list[tuple[str, str]]) -> str | None:
    return next((v for k, v in reply_headers if k.lower() == "x-sharetunnel-error"), None)


# -- concurrent streams -----------------------------------------------------------------


@contextmanager
def held_requests(relay: RelayProcess, host: str, count: int) -> Iterator[list[RawConnection]]:
    """``count`` visitors waiting on /hold, which never answers; closed on exit."""
    with ExitStack() as stack:
        conns = [stack.enter_context(RawConnection(relay.port)) for _ in range(count)]
        for conn in conns:
            assert conn.send(f"GET /hold HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        yield conns


def test_a_fifth_concurrent_request_gets_429_and_a_later_one_succeeds(origin: Origin) -> None:
    with run_relay("--max-streams", "4") as relay, run_tunnel(origin.port, relay=relay) as tunnel:
        before = origin_stats(origin)
        with held_requests(relay, tunnel.host, 4):
            wait_until(
                lambda: origin_stats(origin)["held"] == before["held"] + 4, what="4 held requests"
            )
            fifth = fetch(relay.port, tunnel.host, "/")
            assert fifth.status == 429
            assert relay_error(fifth.headers) == "429"
            assert fifth.header("Retry-After") is not None
            assert b"too many requests at once" in fifth.body
        # The four visitors left: their streams end (the origin sees them cancelled).
        wait_until(
            lambda: origin_stats(origin)["cancelled"] == before["cancelled"] + 4,
            what="4 cancelled requests",
        )
        after = fetch(relay.port, tunnel.host, "/")
        assert after.status == 200 and after.body == b"hello from the origin\n"


# -- header and body sizes --------------------------------------------------------------


def test_headers_over_the_limit_get_431(origin: Origin) -> None:
    with (
        run_relay("--max-header-bytes", "2KiB") as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
    ):
        under = fetch(relay.port, tunnel.host, "/echo", headers={"X-Pad": "p" * 1500})
        assert under.status == 200
        over = fetch(relay.port, tunnel.host, "/echo", headers={"X-Pad": "p" * 2100})
        assert over.status == 431 and relay_error(over.headers) == "431"
        assert b"at most 2048 bytes" in over.body
        many = {f"X-Pad-{i}": "p" * 50 for i in range(60)}
        assert fetch(relay.port, tunnel.host, "/echo", headers=many).status == 431


def _chunked_upload(port: int, host: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        pieces = (body[i : i + 16384] for i in range(0, len(body), 16384))
        conn.request("POST", "/upload", body=pieces, headers={"Host": host}, encode_chunked=True)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_bodies_over_the_limit_get_413_fixed_length_or_chunked(origin: Origin) -> None:
    limit = 100 * 1024
    with (
        run_relay("--max-body-bytes", "100KiB") as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
    ):
        at_limit = b"a" * limit
        reply = fetch(relay.port, tunnel.host, "/upload", method="POST", body=at_limit)
        assert reply.status == 200
        assert json.loads(reply.body)["sha256"] == hashlib.sha256(at_limit).hexdigest()
        status, body = _chunked_upload(relay.port, tunnel.host, at_limit)
        assert status == 200 and json.loads(body)["length"] == limit

        over = b"b" * (limit + 1)
        reply = fetch(relay.port, tunnel.host, "/upload", method="POST", body=over)
        assert reply.status == 413 and relay_error(reply.headers) == "413"
        assert b"at most 102400 bytes" in reply.body
        status, body = _chunked_upload(relay.port, tunnel.host, b"c" * (4 * limit))
        assert status == 413 and b"at most 102400 bytes" in body


# -- request rate -----------------------------------------------------------------------


def test_requests_beyond_the_rate_get_429_on_that_link_only(origin: Origin) -> None:
    rate = 1.0  # per second, bursts of 4
    with (
        run_relay("--rate-per-link", f"{rate}") as relay,
        run_tunnel(origin.port, relay=relay) as busy,
        run_tunnel(origin.port, relay=relay) as calm,
    ):
        started = time.monotonic()
        statuses = [fetch(relay.port, busy.host, "/").status for _ in range(12)]
        elapsed = time.monotonic() - started
        assert statuses[:4] == [200] * 4, statuses  # the burst
        assert 429 in statuses, statuses
        # Never more than the burst plus what the rate refilled meanwhile.
        assert statuses.count(200) <= 4 + int(elapsed * rate) + 1, (statuses, elapsed)
        refused = fetch(relay.port, busy.host, "/")
        if refused.status == 429:
            assert relay_error(refused.headers) == "429"
            assert b"too many requests" in refused.body.lower()
        # Another link has its own bucket.
        assert fetch(relay.port, calm.host, "/").status == 200


def test_a_rate_below_one_request_in_four_seconds_still_allows_one(origin: Origin) -> None:
    with (
        run_relay("--rate-per-link", "0.1") as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
    ):
        assert fetch(relay.port, tunnel.host, "/").status == 200
        assert fetch(relay.port, tunnel.host, "/").status == 429


# -- tunnels per address ----------------------------------------------------------------


def test_a_third_tunnel_from_one_address_is_refused_clearly(origin: Origin) -> None:
    with (
        run_relay("--tunnels-per-ip", "2") as relay,
        run_tunnel(origin.port, relay=relay),
        run_tunnel(origin.port, relay=relay) as second,
    ):
        third = start_tunnel(origin.port, relay=relay, wait=False)
        try:
            code = third.proc.wait(30)
        finally:
            third.stop()
        assert code != 0
        errors = [e for e in third.events if e.get("event") == "error"]
        assert errors and "already holds 2 links" in errors[0]["message"], third.events
        assert any("already holds 2 links" in line for line in third.stderr_lines)
        assert not any(e.get("event") == "ready" for e in third.events)
        # A link given back frees its place.
        second.stop()
        with run_tunnel(origin.port, relay=relay) as fourth:
            assert fetch(relay.port, fourth.host, "/").status == 200


# -- slow request heads -----------------------------------------------------------------


def _trickle_head(
    port: int, host: str, interval: float, complete_after: int | None = None
) -> tuple[float, bytes]:
    """Send a request head one byte per ``interval``; after ``complete_after`` bytes (if
    given) finish it. Return the seconds from the first byte until the relay answered or
    closed, and what it sent (b"" for a close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.settimeout(interval)  # each wait for an answer is the pause between bytes
        started = time.monotonic()
        sock.sendall(f"GET /echo HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode())
        sent = 0
        finished = False
        while True:
            try:
                return time.monotonic() - started, sock.recv(65536)
            except TimeoutError:
                pass  # nothing yet
            except ConnectionResetError:
                return time.monotonic() - started, b""
            try:
                if finished:
                    continue
                if complete_after is not None and sent >= complete_after:
                    sock.sendall(b"\r\n\r\n")
                    finished = True
                else:
                    sock.sendall(b"x")
                    sent += 1
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started, b""


def test_slow_header_senders_are_cut_at_the_header_timeout(origin: Origin) -> None:
    timeout = 2.0
    with (
        run_relay("--header-timeout", f"{timeout:g}s") as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
    ):
        # Trickling a byte every 0.1 s does not buy more time.
        took, answer = _trickle_head(relay.port, tunnel.host, 0.1)
        assert answer == b"", answer
        assert timeout * 0.9 <= took < timeout + 5, took
        # Nor does sending nothing at all.
        with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as sock:
            started = time.monotonic()
            assert sock.recv(1) == b""
            silent = time.monotonic() - started
        assert timeout * 0.9 <= silent < timeout + 5, silent
        # A slow head that is complete before the timeout is served.
        served, answer = _trickle_head(relay.port, tunnel.host, 0.1, complete_after=5)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert served < timeout, served
    print(f"\ntrickling sender cut after {took:.2f} s, silent one after {silent:.2f} s")


# -- idle timeouts ----------------------------------------------------------------------


def test_the_idle_timeout_cuts_a_stalled_stream_but_never_a_live_sse_stream(
    origin: Origin,
) -> None:
    idle = 2.0
    with (
        run_relay("--idle-timeout", f"{idle:g}s") as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
    ):
        # An SSE stream with a heartbeat every 0.5 s lives 3.5 times the idle timeout.
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)
        try:
            conn.request("GET", "/sse?n=15&interval=0.5", headers={"Host": tunnel.host})
            response = conn.getresponse()
            assert response.status == 200
            events = [line for line in response.read().split(b"\n") if line.startswith(b"id: ")]
        finally:
            conn.close()
        lived = time.monotonic() - started
        assert events == [f"id: {i}".encode() for i in range(15)]
        assert lived > 3 * idle, lived

        # A stream that stalls after its first chunk is cut once idle for the timeout.
        before = origin_stats(origin)
        with RawConnection(relay.port, timeout=30) as visitor:
            target = "/endless?chunk=1000&interval=3600"
            visitor.send(f"GET {target} HTTP/1.1\r\nHost: {tunnel.host}\r\n\r\n".encode())
            first = visitor.sock.recv(65536)
            stalled_at = time.monotonic()
            assert first.startswith(b"HTTP/1.1 200"), first
            while visitor.sock.recv(65536):
                pass  # the rest of the first chunk, then the close
            cut_after = time.monotonic() - stalled_at
        assert idle * 0.8 <= cut_after < idle + 5, cut_after
        wait_until(
            lambda: origin_stats(origin)["endless_closed"] == before["endless_closed"] + 1,
            what="the origin to see the stalled stream cancelled",
        )
    print(
        f"\nSSE lived {lived:.1f} s with idle timeout {idle:g} s; stall cut after {cut_after:.2f} s"
    )


@pytest.mark.timeout(60)
def test_an_upload_that_stops_arriving_gets_408_after_the_idle_timeout(origin: Origin) -> None:
    # The app's time to answer starts only once the body is all here, so a body that
    # stops coming is the idle timeout's to end: with a 408 that says so, like nginx.
    idle = 1.5
    with (
        run_relay("--idle-timeout", f"{idle:g}s", "--response-timeout", "60s") as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
        RawConnection(relay.port, timeout=30) as visitor,
    ):
        head = f"POST /upload HTTP/1.1\r\nHost: {tunnel.host}\r\nContent-Length: 1000\r\n\r\n"
        visitor.send(head.encode() + b"x" * 10)
        started = time.monotonic()
        response = visitor.read_response()
        took = time.monotonic() - started
        assert response is not None and response.status == 408, response
        assert b"stopped arriving" in response.body
        assert visitor.closed_by_peer()
    assert idle * 0.8 <= took < idle + 10, took


@pytest.mark.timeout(60)
def test_an_upload_the_app_stops_taking_is_the_apps_504_not_the_visitors_408(
    origin: Origin,
) -> None:
    # The app reads 16 KiB and then nothing: the relay stops reading the visitor (whose
    # upload is not stalled) and, after the response timeout, answers 504.
    with (
        run_relay("--idle-timeout", "1.5s", "--response-timeout", "3s") as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
        RawConnection(relay.port, timeout=30) as visitor,
    ):
        size = 256 * MIB
        head = (
            f"POST /slow-upload?rate=1 HTTP/1.1\r\nHost: {tunnel.host}\r\n"
            f"Content-Length: {size}\r\n\r\n"
        )
        visitor.send(head.encode())

        def upload() -> None:
            piece = b"u" * MIB
            with contextlib.suppress(OSError):  # the relay closes once it has answered
                for _ in range(size // MIB):
                    visitor.sock.sendall(piece)

        sender = threading.Thread(target=upload, daemon=True)
        started = time.monotonic()
        sender.start()
        response = visitor.read_response()
        took = time.monotonic() - started
        assert response is not None and response.status == 504, response
    sender.join(10)
    assert took >= 2.5, took  # the response timeout, not the idle timeout


def test_the_default_idle_timeout_is_well_above_gradios_heartbeat() -> None:
    default = RelayConfig().idle_timeout_s
    assert default >= 4 * GRADIO_HEARTBEAT_S
    # tunnel-relay's default is the same one (the settings table reads the dataclass's).
    assert resolve(RELAY, {}, environ={})["idle_timeout"] == default


# -- visitors who never read ------------------------------------------------------------


def test_64_visitors_that_never_read_keep_relay_memory_bounded(origin: Origin) -> None:
    bound = 100 * MIB
    with run_relay() as relay, run_tunnel(origin.port, relay=relay) as tunnel:
        for _ in range(3):  # warm up: the baseline includes a first large transfer
            reply = fetch(relay.port, tunnel.host, f"/bytes/{4 * MIB}")
            assert reply.body == pattern_bytes(4 * MIB)
        baseline = rss_bytes(relay.proc.pid)
        client_baseline = rss_bytes(tunnel.proc.pid)
        peak = baseline
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.wait(0.05):
                peak = max(peak, rss_bytes(relay.proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            with ExitStack() as stack:
                visitors = [
                    stack.enter_context(RawConnection(relay.port, timeout=30, rcvbuf=4096))
                    for _ in range(64)
                ]
                for visitor in visitors:
                    visitor.send(
                        f"GET /bytes/{1 << 30} HTTP/1.1\r\nHost: {tunnel.host}\r\n\r\n".encode()
                    )
                for visitor in visitors:
                    # Each download has started: read its first bytes, then nothing more.
                    assert visitor.sock.recv(64).startswith(b"HTTP/1.1 200")
                # Give the relay every chance to buffer: its memory is watched meanwhile.
                for _ in range(5):
                    reply = fetch(relay.port, tunnel.host, f"/bytes/{MIB}", timeout=30)
                    assert reply.status == 200 and reply.body == pattern_bytes(MIB)
                    echo = fetch(relay.port, tunnel.host, "/echo", method="POST", body=b"x" * 1000)
                    assert json.loads(echo.body)["length"] == 1000
                client_peak = rss_bytes(tunnel.proc.pid)
        finally:
            stop.set()
            sampler.join(5)
    grew = peak - baseline
    print(
        f"\n64 stalled downloads: relay RSS {baseline / MIB:.0f} MiB -> peak {peak / MIB:.0f} MiB "
        f"(+{grew / MIB:.1f}); client {client_baseline / MIB:.0f} -> {client_peak / MIB:.0f} MiB"
    )
    assert grew < bound, f"relay RSS grew {grew / MIB:.0f} MiB (bound {bound / MIB:.0f})"
