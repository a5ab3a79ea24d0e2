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


@pytest.mark.timeout(60)
def test_the_ready_file_comes_after_the_start_up_lines_and_a_stop_right_then_is_clean() -> None:
    # A supervisor that stops the relay the moment its ready file appears must get a
    # clean stop (exit 0), not a kill mid-start; and what the file announces, the relay
    # has said already.
    relay = start_relay()
    relay.proc.send_signal(signal.SIGTERM)
    assert relay.proc.wait(20) == 0
    logged = relay.stderr_text()
    assert "tunnel-relay listening on" in logged and "clients: tunnel PORT" in logged, logged
    assert "stopping" in logged and "Traceback" not in logged, logged
