"""Heads too large for the tunnel fail one request, never the tunnel that carries it.

An OPEN or REPLY head may be at most ``MAX_HEAD_PAYLOAD`` (256 KiB) of JSON; a peer that
receives a larger one must end the session (a protocol error). So the sending side
refuses it first: the relay answers that visitor 431, the client resets that stream and
the relay shows a 502 page saying the app's response head was too large. Every other
request on the link carries on, and the client never has to reconnect.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Link
from tests.origin import pattern_bytes
from tests.processes import Origin, RelayProcess, TunnelProcess, fetch, run_relay, run_tunnel
from tests.rawhttp import RawConnection
from tunnel_client.protocol.frames import MAX_HEAD_PAYLOAD

pytestmark = pytest.mark.integration

HTML = {"Accept": "text/html"}
DOWNLOAD_BYTES = 16 << 20

# What the relay's config will allow at most: a visitor head of that many bytes, each
# escaped 6 times over in JSON, plus 4 KiB for the rest of the OPEN, fits in one frame.
CAPPED_MAX_HEADER_BYTES = (MAX_HEAD_PAYLOAD - 4096) // 6


def assert_link_never_dropped(tunnel: TunnelProcess) -> None:
    """The client kept its one session: it never had to reconnect."""
    names = [event.get("event") for event in tunnel.events]
    assert "reconnecting" not in names and "reconnected" not in names, tunnel.events


def test_a_response_head_too_large_is_a_502_for_that_request_only(link: Link) -> None:
    """40 Set-Cookie headers of 8000 bytes: 320 kB of REPLY, over the 256 KiB limit."""
    download = http.client.HTTPConnection("127.0.0.1", link.port, timeout=30)
    try:
        download.request("GET", f"/bytes/{DOWNLOAD_BYTES}", headers={"Host": link.host})
        response = download.getresponse()
        assert response.status == 200
        first = response.read(64 * 1024)  # the stream is running, held back by its window

        for accept in (HTML, {"Accept": "*/*"}):
            reply = link.fetch("/big-cookies?n=40&size=8000", headers=accept)
            assert reply.status == 502, reply.body[:300]
            assert reply.header("X-Sharetunnel-Error") == "502"
            text = reply.body.decode()
            assert "response head was too large" in text, text
            assert "Set-Cookie" not in text and "xxxx" not in text

        body = first + response.read()
        assert len(body) == DOWNLOAD_BYTES and body == pattern_bytes(DOWNLOAD_BYTES)
    finally:
        download.close()

    later = link.fetch("/")
    assert later.status == 200 and later.body == b"hello from the origin\n"
    record = link.tunnel.wait_event("request", path="/big-cookies?n=40&size=8000")
    assert record["status"] == 502
    # The owner learns the size and the limit; the visitor only that it was too large.
    assert f"limit of {MAX_HEAD_PAYLOAD} bytes" in record["error"], record
    assert "response head of 32" in record["error"], record  # 320 896 bytes of JSON
    assert_link_never_dropped(link.tunnel)


@pytest.fixture(scope="module")
def capped_relay() -> Iterator[RelayProcess]:
    with run_relay("--max-header-bytes", str(CAPPED_MAX_HEADER_BYTES)) as relay:
        yield relay


def test_no_visitor_head_under_the_cap_escapes_past_the_frame_limit(
    capped_relay: RelayProcess, origin: Origin
) -> None:
    """The cap on ``--max-header-bytes`` keeps every accepted head within one OPEN.

    The relay runs with the largest ``--max-header-bytes`` its config allows,
    ``(MAX_HEAD_PAYLOAD - 4096) // 6`` = 43008. JSON escapes each byte outside ASCII as
    6 bytes (``\\u00ff``), so a head that is all obs-text grows about 6x, and still fits:
    the relay forwards it. The Host header, which the relay also copies into
    ``X-Forwarded-Host`` (so that it counted twice), must be a host name and an optional
    port: with 25 000 bytes of 0xFF after the colon it is refused with 400 before any
    link is looked at. (When a head does not fit, the relay answers 431 and the session
    carries on: tests/relay/test_edge.py shows it with the frame limit lowered.)
    """
    with run_tunnel(origin.port, relay=capped_relay) as tunnel:
        name = tunnel.host.rsplit(":", 1)[0].encode()
        request = (
            b"GET /echo HTTP/1.1\r\nHost: " + name + b":" + b"\xff" * 25_000 + b"\r\n"
            b"Accept: text/html\r\n\r\n"
        )
        assert len(request) < CAPPED_MAX_HEADER_BYTES
        with RawConnection(capped_relay.port) as conn:
            assert conn.send(request)
            reply = conn.read_response()
        assert reply is not None and reply.status == 400, reply
        assert reply.header("X-Sharetunnel-Error") == "400"

        # As much obs-text as the byte limit lets through: forwarded, not refused.
        pad = CAPPED_MAX_HEADER_BYTES - 200
        request = (
            b"GET /echo HTTP/1.1\r\nHost: " + tunnel.host.encode() + b"\r\n"
            b"X-Pad: " + b"\xff" * pad + b"\r\n\r\n"
        )
        with RawConnection(capped_relay.port) as conn:
            assert conn.send(request)
            reply = conn.read_response()
        assert reply is not None and reply.header("X-Sharetunnel-Error") is None, reply

        # Over the byte limit itself: the relay's usual 431, before any escaping.
        over = {"X-Pad": "p" * CAPPED_MAX_HEADER_BYTES}
        assert fetch(capped_relay.port, tunnel.host, "/echo", headers=over).status == 431
        # And the link never noticed.
        assert fetch(capped_relay.port, tunnel.host, "/").status == 200
        assert_link_never_dropped(tunnel)


def test_many_refused_heads_in_a_row_leave_other_requests_alone(link: Link) -> None:
    """A burst of too-large replies beside ordinary requests: each gets its own answer."""
    results: dict[str, list[int]] = {"big": [], "small": []}

    def hammer(kind: str, path: str) -> None:
        for _ in range(10):
            results[kind].append(link.fetch(path).status)

    threads = [
        threading.Thread(target=hammer, args=("big", "/big-cookies?n=40&size=8000")),
        threading.Thread(target=hammer, args=("small", "/")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {"big": [502] * 10, "small": [200] * 10}
    assert_link_never_dropped(link.tunnel)
