"""Cancellation: a visitor that goes away cancels the request to the local server.

The origin counts what it saw (``/stats``): a ``/hold`` request cancelled while waiting,
an ``/endless`` download whose response was closed mid-stream. The origin here is this
module's own, so no other test's requests can move its counters.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.processes import (
    Origin,
    RelayProcess,
    TunnelProcess,
    fetch,
    run_origin,
    run_relay,
    run_tunnel,
    wait_until,
)

pytestmark = pytest.mark.integration

NOTICE_S = 5.0
"""How soon the origin must see that the visitor left."""


@pytest.fixture(scope="module")
def quiet_origin() -> Iterator[Origin]:
    with run_origin() as server:
        yield server


@pytest.fixture
def quiet_link(quiet_origin: Origin) -> Iterator[tuple[RelayProcess, TunnelProcess]]:
    with run_relay() as relay, run_tunnel(quiet_origin.port, relay=relay) as tunnel:
        yield relay, tunnel


def visitor(relay: RelayProcess, tunnel: TunnelProcess, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=15)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {tunnel.host}\r\n\r\n".encode())
    return sock


def test_visitor_leaving_a_pending_request_cancels_it_locally(
    quiet_origin: Origin, quiet_link: tuple[RelayProcess, TunnelProcess]
) -> None:
    relay, tunnel = quiet_link
    before = quiet_origin.stats()
    sock = visitor(relay, tunnel, "/hold")
    try:
        wait_until(
            lambda: quiet_origin.stats()["held"] > before["held"], 15, "the /hold request arriving"
        )
        assert quiet_origin.stats()["cancelled"] == before["cancelled"]
    finally:
        sock.close()
    wait_until(
        lambda: quiet_origin.stats()["cancelled"] > before["cancelled"],
        NOTICE_S,
        "the origin seeing the cancellation",
    )
    record = tunnel.wait_event("request", timeout=NOTICE_S, path="/hold")
    assert record["error"], record


def test_visitor_leaving_mid_download_closes_the_local_response(
    quiet_origin: Origin, quiet_link: tuple[RelayProcess, TunnelProcess]
) -> None:
    relay, tunnel = quiet_link
    before = quiet_origin.stats()
    path = "/endless?chunk=16384&interval=0.01"
    sock = visitor(relay, tunnel, path)
    try:
        received = 0
        while received < 256 * 1024:  # well into the body: the response is streaming
            chunk = sock.recv(65536)
            assert chunk, "the download ended by itself"
            received += len(chunk)
        now = quiet_origin.stats()
        assert now["endless_started"] == before["endless_started"] + 1
        assert now["endless_closed"] == before["endless_closed"]
    finally:
        sock.close()
    wait_until(
        lambda: quiet_origin.stats()["endless_closed"] > before["endless_closed"],
        NOTICE_S,
        "the origin's streaming response being closed",
    )
    record = tunnel.wait_event("request", timeout=NOTICE_S, path=path)
    assert record["status"] == 200 and record["error"], record
    assert record["bytes"] >= 128 * 1024  # what the visitor got, less head and framing
    # The link is still fine for the next visitor.
    assert fetch(relay.port, tunnel.host, "/").status == 200
