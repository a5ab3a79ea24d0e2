"""Clean stops: Ctrl-C on the client frees its link at once; SIGTERM on the relay says why."""

from __future__ import annotations

import signal
import time

import pytest

from tests.processes import Origin, fetch, run_relay, start_relay, start_tunnel, stop_process

pytestmark = pytest.mark.integration


def test_ctrl_c_on_the_client_frees_the_link_at_once(origin: Origin) -> None:
    with run_relay() as relay:
        tunnel = start_tunnel(origin.port, relay=relay)
        try:
            assert fetch(relay.port, tunnel.host, "/").status == 200
        finally:
            started = time.monotonic()
            code = tunnel.stop(signal.SIGINT)
            took = time.monotonic() - started
        # Right after: the link is gone (404), not merely offline (503).
        reply = fetch(relay.port, tunnel.host, "/")
        assert reply.status == 404, reply.body[:300]
        assert code == 0, tunnel.stderr_lines
        assert took < 5, f"the client took {took:.1f} s to stop"
        closed = [e for e in tunnel.events if e.get("event") == "closed"]
        assert len(closed) == 1 and tunnel.events[-1] == closed[0], tunnel.events
        assert "Traceback" not in "\n".join(tunnel.stderr_lines)


def test_sigterm_on_the_relay_closes_tunnels_with_a_reason(origin: Origin) -> None:
    relay = start_relay()
    try:
        tunnel = start_tunnel(origin.port, relay=relay)
        try:
            assert fetch(relay.port, tunnel.host, "/").status == 200
            relay.proc.send_signal(signal.SIGTERM)
            reconnecting = tunnel.wait_event("reconnecting", timeout=20)
            assert relay.proc.wait(20) == 0
        finally:
            client_code = tunnel.stop(signal.SIGINT)
    finally:
        logged = relay.stderr_text()
    # The reason the relay gave, not just "connection lost".
    assert "restarting" in reconnecting["reason"], reconnecting
    assert "Traceback" not in logged, logged
    # A client waiting to reconnect still stops cleanly on Ctrl-C.
    assert client_code == 0, tunnel.stderr_lines
    assert tunnel.events[-1]["event"] == "closed", tunnel.events
    # The relay process is gone for good (nothing left to stop).
    assert stop_process(relay.proc) == 0
