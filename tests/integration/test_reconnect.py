"""Links survive: cut connections, half-open paths and relay restarts keep the same link."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from tests.faultproxy import fault_proxy
from tests.processes import (
    Origin,
    fetch,
    run_relay,
    start_relay,
    start_tunnel,
    stop_process,
)

pytestmark = pytest.mark.integration


def _all_ok(port: int, host: str, count: int = 20) -> None:
    for i in range(count):
        reply = fetch(port, host, f"/echo?n={i}")
        assert reply.status == 200, reply.body


def test_a_cut_connection_comes_back_with_the_same_link(origin: Origin) -> None:
    with run_relay() as relay, fault_proxy(relay.port) as proxy:
        tunnel = start_tunnel(origin.port, "--relay", f"ws://127.0.0.1:{proxy.port}")
        try:
            assert fetch(relay.port, tunnel.host).status == 200
            started = time.monotonic()
            proxy.cut()
            back = tunnel.wait_event("reconnected", timeout=15)
            elapsed = time.monotonic() - started
            print(f"\ncut connection: same link back after {elapsed:.2f} s")
            assert back["url"] == tunnel.url
            assert elapsed < 10
            _all_ok(relay.port, tunnel.host)
        finally:
            tunnel.stop()


def test_visitors_get_503_at_once_while_the_client_is_away(origin: Origin) -> None:
    with run_relay() as relay, fault_proxy(relay.port) as proxy:
        tunnel = start_tunnel(origin.port, "--relay", f"ws://127.0.0.1:{proxy.port}")
        try:
            proxy.refuse()
            proxy.cut()
            tunnel.wait_event("reconnecting", timeout=10)
            deadline = time.monotonic() + 5
            statuses = []
            while time.monotonic() < deadline:
                asked = time.monotonic()
                reply = fetch(relay.port, tunnel.host, timeout=5)
                assert time.monotonic() - asked < 2, "a visitor waited instead of getting a page"
                statuses.append(reply.status)
                if reply.status == 503:
                    assert b"offline" in reply.body
                    break
            assert statuses[-1] == 503, statuses
            proxy.restore()
            tunnel.wait_event("reconnected", timeout=20)
            _all_ok(relay.port, tunnel.host)
        finally:
            tunnel.stop()


def test_a_half_open_connection_is_noticed_by_keepalive(origin: Origin) -> None:
    with run_relay("--keepalive", "1s") as relay, fault_proxy(relay.port) as proxy:
        tunnel = start_tunnel(origin.port, "--relay", f"ws://127.0.0.1:{proxy.port}")
        try:
            started = time.monotonic()
            proxy.blackhole()
            # Nothing is closed: only missing PING answers can reveal the dead path.
            dropped = tunnel.wait_event("reconnecting", timeout=15)
            noticed = time.monotonic() - started
            print(f"\nhalf-open path noticed by the client after {noticed:.2f} s")
            assert noticed < 8, noticed  # keepalive 1 s, timeout 3x
            assert "nothing received" in dropped["reason"]
            # The relay freed its side too: visitors get 503, not a hang.
            deadline = time.monotonic() + 8
            while fetch(relay.port, tunnel.host, timeout=5).status != 503:
                assert time.monotonic() < deadline, "the relay kept the dead session"
            proxy.restore()
            back = tunnel.wait_event("reconnected", timeout=30)
            assert back["url"] == tunnel.url
            _all_ok(relay.port, tunnel.host, 5)
        finally:
            tunnel.stop()


def test_a_relay_killed_and_restarted_gives_the_link_back(origin: Origin, tmp_path: Path) -> None:
    key = tmp_path / "lease-key.pem"
    relay = start_relay("--lease-key", str(key))
    port = relay.port
    tunnel = start_tunnel(origin.port, relay=relay)
    restarted = None
    try:
        assert fetch(port, tunnel.host).status == 200
        stop_process(relay.proc, signal.SIGKILL)
        started = time.monotonic()
        restarted = start_relay("--lease-key", str(key), port=port)
        back = tunnel.wait_event("reconnected", timeout=20)
        elapsed = time.monotonic() - started
        print(f"\nrelay SIGKILLed and restarted: same link back after {elapsed:.2f} s")
        assert back["url"] == tunnel.url
        assert elapsed < 15, elapsed
        _all_ok(port, tunnel.host)
        assert key.stat().st_mode & 0o777 == 0o600
    finally:
        tunnel.stop()
        for process in (relay, restarted):
            if process is not None:
                stop_process(process.proc)
                process.stderr_text()


def test_sigterm_lets_inflight_requests_finish_then_clients_reconnect(origin: Origin) -> None:
    relay = start_relay("--shutdown-grace", "10s")
    tunnel = start_tunnel(origin.port, relay=relay)
    try:
        results: list[int] = []
        # In flight for longer than a tunnel process takes to start on a busy machine:
        # the relay stops listening as soon as nothing is in flight any more.
        slow = threading.Thread(
            target=lambda: results.append(fetch(relay.port, tunnel.host, "/slow?delay=5").status)
        )
        slow.start()
        deadline = time.monotonic() + 5
        while b'"inflight": 0' in fetch(relay.port, "relay", "/_health").body:
            assert time.monotonic() < deadline
        relay.proc.send_signal(signal.SIGTERM)
        relay.wait_logged("stopping: finishing in-flight requests")
        # New tunnels are refused during the grace period.
        late = start_tunnel(origin.port, relay=relay, wait=False)
        assert late.proc.wait(20) != 0
        late.stop()
        assert any("shutting down" in line for line in late.stderr_lines), late.stderr_lines
        slow.join(15)
        assert results == [200]
        reason = tunnel.wait_event("reconnecting", timeout=15)["reason"]
        assert "restarting" in reason
        assert relay.proc.wait(15) == 0
    finally:
        tunnel.stop()
        stop_process(relay.proc)
        relay.stderr_text()


@pytest.mark.timeout(240)
def test_a_hundred_links_all_come_back_after_a_relay_restart(
    origin: Origin, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from tests.processes import ROOT, TunnelProcess, _env

    key = tmp_path / "lease-key.pem"
    relay = start_relay("--lease-key", str(key), "--tunnels-per-ip", "200")
    port = relay.port
    holder = TunnelProcess(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.many_links",
                "--relay",
                relay.url,
                "--port",
                str(origin.port),
                "--count",
                "100",
            ],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    holder.start_readers()
    restarted = None
    try:
        holder.wait_event("all-ready", timeout=120)
        urls = {e["url"] for e in holder.events if e["event"] == "ready"}
        assert len(urls) == 100
        stop_process(relay.proc, signal.SIGKILL)
        started = time.monotonic()
        restarted = start_relay("--lease-key", str(key), "--tunnels-per-ip", "200", port=port)
        back: set[str] = set()
        while len(back) < 100:
            back.add(holder.wait_event("reconnected", timeout=60)["url"])
        elapsed = time.monotonic() - started
        print(f"\n100 links back {elapsed:.2f} s after the relay was killed")
        assert back == urls
        for url in urls:
            host = url.split("//")[1].rstrip("/")
            assert fetch(port, host).status == 200
    finally:
        holder.stop()
        for process in (relay, restarted):
            if process is not None:
                process.stderr_text()
