"""A client given several relays starts on the first that answers and moves when its
relay dies, keeping its link: relays that share ``--lease-key`` honour each other's
leases (without a cluster, the next relay resumes the link from the lease alone)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import (
    ROOT,
    Origin,
    _env,
    fetch,
    run_relay,
    start_relay,
    start_tunnel,
    stop_process,
)

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sub_of(url: str) -> str:
    return url.split("//", 1)[1].split(".", 1)[0]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_a_client_moves_to_the_next_relay_and_keeps_its_link(
    origin: Origin, tmp_path: Path, how: signal.Signals
) -> None:
    key = str(tmp_path / "lease-key.pem")
    with (
        run_relay("--lease-key", key, "--admin-port", "0") as first,
        run_relay("--lease-key", key, "--admin-port", "0") as second,
    ):
        tunnel = start_tunnel(origin.port, "--relay", first.url, "--relay", second.url)
        try:
            sub = sub_of(tunnel.url)
            assert f":{first.port}/" in tunnel.url
            assert fetch(first.port, tunnel.host).status == 200
            started = time.monotonic()
            stop_process(first.proc, how)
            back = tunnel.wait_event("reconnected", timeout=20)
            elapsed = time.monotonic() - started
            print(f"\nrelay {how.name}: the link moved to the second relay in {elapsed:.2f} s")
            assert sub_of(back["url"]) == sub and f":{second.port}/" in back["url"]
            host = f"{sub}.localhost:{second.port}"
            for _ in range(5):
                assert fetch(second.port, host, "/echo").status == 200
            assert second.admin_port is not None
            links = fetch(second.admin_port, f"127.0.0.1:{second.admin_port}", "/api/links")
            (link,) = json.loads(links.body)["links"]
            assert link["subdomain"] == sub and link["state"] == "live"
            metrics = fetch(second.admin_port, "admin", "/metrics").body.decode()
            assert "sharetunnel_reconnects_total 1.0" in metrics
        finally:
            tunnel.stop()


def test_a_client_starts_on_the_second_relay_when_the_first_is_down(origin: Origin) -> None:
    down = f"ws://127.0.0.1:{closed_port()}"
    with run_relay() as relay:
        # TUNNEL_RELAY takes a comma-separated list.
        tunnel = start_tunnel(origin.port, env={"TUNNEL_RELAY": f"{down},{relay.url}"})
        try:
            assert f":{relay.port}/" in tunnel.url
            assert fetch(relay.port, tunnel.host).status == 200
        finally:
            tunnel.stop()


def test_when_no_relay_answers_the_client_says_so_for_each() -> None:
    ports = [closed_port(), closed_port()]
    args = [a for p in ports for a in ("--relay", f"ws://127.0.0.1:{p}")]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "tunnel_client", "8000", *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert time.monotonic() - started < 20
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("tunnel: no relay answered: cannot reach the relay at ")
    assert all(str(port) in line for port in ports), line


@pytest.mark.timeout(90)
def test_a_relay_with_another_key_is_passed_over_until_the_links_relay_is_back(
    origin: Origin, tmp_path: Path
) -> None:
    key = str(tmp_path / "lease-key.pem")
    port = closed_port()
    first = start_relay("--lease-key", key, port=port)
    try:
        with run_relay() as other:  # its own key: it cannot take the link's lease
            tunnel = start_tunnel(origin.port, "--relay", first.url, "--relay", other.url)
            try:
                sub = sub_of(tunnel.url)
                stop_process(first.proc, signal.SIGTERM)
                first.stderr_text()
                # The other relay refuses the lease; the client does not give up...
                other.wait_logged("the lease was not issued by this relay")
                assert tunnel.proc.poll() is None, tunnel.stderr_lines
                # ...and takes its link back from its own relay once that is up again.
                first = start_relay("--lease-key", key, port=port)
                back = tunnel.wait_event("reconnected", timeout=60)
                assert sub_of(back["url"]) == sub and f":{port}/" in back["url"]
                assert fetch(port, f"{sub}.localhost:{port}").status == 200
            finally:
                assert tunnel.stop() == 0, tunnel.stderr_lines
    finally:
        stop_process(first.proc)
        first.stderr_text()


@pytest.mark.timeout(60)
def test_a_link_no_relay_will_take_back_ends_with_a_reason(origin: Origin) -> None:
    port = closed_port()
    relay = start_relay(port=port)  # a signing key in memory only
    try:
        tunnel = start_tunnel(origin.port, relay=relay)
        stop_process(relay.proc, signal.SIGTERM)
        relay.stderr_text()
        relay = start_relay(port=port)  # the same address, a new key: the lease is foreign
        code = tunnel.proc.wait(30)
        tunnel.stop()
    finally:
        stop_process(relay.proc)
        relay.stderr_text()
    assert code == 1
    said = "\n".join(tunnel.stderr_lines)
    assert "the link is gone: no relay accepts its lease any more" in said, said
    assert "run tunnel again for a new link" in said and "Traceback" not in said
