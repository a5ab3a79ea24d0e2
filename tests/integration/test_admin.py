"""The operator's side: metrics, the links API and its token, revocation, logs.

Real relay and tunnel processes on 127.0.0.1; the admin listener on a port of its own
(``--admin-port 0``, read from the ready file). The curl commands come from
ops/RUNBOOK.md (tests/runbook.py), so the runbook says what is tested.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import (
    ROOT,
    Origin,
    RelayProcess,
    TunnelProcess,
    _env,
    close_pipes,
    fetch,
    run_relay,
    run_tunnel,
    start_relay,
    start_tunnel,
    stop_process,
)
from tests.runbook import run_runbook_command
from tunnel_client.connection import AuthRejected, RelayTarget, open_tunnel
from tunnel_client.protocol.handshake import Hello, Welcome
from tunnel_client.protocol.window import MIN_WINDOW

pytestmark = pytest.mark.integration

METRICS = "curl -s http://127.0.0.1:9090/metrics"
LIST = 'curl -s -H "Authorization: Bearer'
REVOKE = "curl -X DELETE"


def admin(relay: RelayProcess, path: str, **kwargs: Any) -> tuple[int, Any]:
    """A request to the relay's admin listener; the status and the JSON body."""
    assert relay.admin_port is not None, "start the relay with --admin-port 0"
    reply = fetch(relay.admin_port, f"127.0.0.1:{relay.admin_port}", path, **kwargs)
    body = json.loads(reply.body) if reply.body.startswith(b"{") else reply.body
    return reply.status, body


def scrape(relay: RelayProcess) -> dict[str, float]:
    """Every sample of /metrics (fetched with the runbook's command), by name and labels."""
    assert relay.admin_port is not None
    done = run_runbook_command(METRICS, admin_port=relay.admin_port)
    assert done.returncode == 0, done.stderr
    samples = {}
    for family in text_string_to_metric_families(done.stdout):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def wait_until(condition: Any, timeout: float = 15, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.05)


def subdomain(tunnel: TunnelProcess) -> str:
    return tunnel.host.split(".", 1)[0]


def exit_of(tunnel: TunnelProcess, timeout: float = 20) -> tuple[int, str]:
    """Wait for a tunnel to end by itself: its exit code and its stderr."""
    code = tunnel.proc.wait(timeout)
    tunnel.stop()
    return code, "\n".join(tunnel.stderr_lines)


def test_metrics_parse_and_count_what_passes(origin: Origin) -> None:
    with (
        run_relay("--admin-port", "0") as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
    ):
        before = scrape(relay)
        assert before["sharetunnel_links{state=live}"] == 1
        assert before["sharetunnel_new_links_total"] == 1
        assert before["sharetunnel_broker_connected"] == 0
        assert before["sharetunnel_cross_node_forwards_total"] == 0
        assert before["sharetunnel_limit{setting=tunnels_per_ip}"] == 20
        assert before["sharetunnel_busiest_address_links"] == 1
        assert "process_open_fds" in before
        replies = [fetch(relay.port, tunnel.host, "/") for _ in range(2)]
        replies.append(fetch(relay.port, tunnel.host, "/bytes/20000"))
        upload = b"x" * 5000
        replies.append(fetch(relay.port, tunnel.host, "/echo", method="POST", body=upload))
        assert [r.status for r in replies] == [200] * 4
        assert fetch(relay.port, tunnel.host, "/status/503").status == 503
        assert fetch(relay.port, "zzzzzzzzzzzzzzzz.localhost", "/").status == 404
        after = scrape(relay)

        def moved(name: str) -> float:
            return after[name] - before.get(name, 0.0)

        assert moved("sharetunnel_requests_total{status=2xx}") == 4
        assert moved("sharetunnel_requests_total{status=5xx}") == 1
        assert moved("sharetunnel_requests_total{status=4xx}") == 1
        assert moved("sharetunnel_request_bytes_total") == len(upload)
        # Heads and bodies: more than the bodies alone.
        assert moved("sharetunnel_response_bytes_total") > sum(len(r.body) for r in replies)
        assert moved("sharetunnel_request_duration_seconds_count") == 6
        assert after["sharetunnel_open_streams"] == 0


def test_the_links_api_lists_a_live_link(origin: Origin) -> None:
    with (
        run_relay("--admin-port", "0") as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
    ):
        assert fetch(relay.port, tunnel.host, "/").status == 200
        status, body = admin(relay, "/api/links")
        assert status == 200
        assert body["node"] == f"127.0.0.1:{relay.port}"
        (link,) = body["links"]
        assert link["subdomain"] == subdomain(tunnel)
        assert link["url"] == tunnel.url
        assert link["node"] == f"127.0.0.1:{relay.port}"
        assert link["state"] == "live"
        assert link["client"] == "127.0.0.1"
        assert link["token_id"] is None
        assert link["requests"] == 1
        assert link["created"].endswith("Z") and link["expires"] > link["created"]
        status, one = admin(relay, f"/api/links/{subdomain(tunnel)}")
        assert status == 200 and one == link
        assert admin(relay, "/healthz") == (200, {"status": "alive"})
        assert admin(relay, "/readyz")[0] == 200


def test_without_a_token_the_api_answers_this_machines_clients_not_web_pages(
    origin: Origin,
) -> None:
    # DNS rebinding: a page whose name now points at 127.0.0.1 sends its own Host (and,
    # for a DELETE, an Origin); curl and scripts send the listener's address, no Origin.
    with (
        run_relay("--admin-port", "0") as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
    ):
        port = relay.admin_port
        assert port is not None
        sub = subdomain(tunnel)
        evil = f"rebind.attacker.example:{port}"
        listed = fetch(port, evil, "/api/links")
        assert listed.status == 403 and b"answers to Host" in listed.body
        revoked = fetch(port, evil, f"/api/links/{sub}", method="DELETE")
        assert revoked.status == 403
        paged = fetch(
            port,
            f"127.0.0.1:{port}",
            f"/api/links/{sub}",
            method="DELETE",
            headers={"Origin": f"http://127.0.0.1:{port}"},
        )
        assert paged.status == 403 and b"Origin" in paged.body
        assert fetch(relay.port, tunnel.host, "/").status == 200  # still live
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "127.0.0.1"):
            assert fetch(port, host, "/api/links").status == 200, host
        assert fetch(port, evil, "/metrics").status == 200  # scrapers name hosts freely
        # A request that is not HTTP gets its 400, and the log no traceback.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /api/links HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n")
            assert sock.recv(100).split(b" ")[1] == b"400"
    logged = relay.stderr_text()
    assert "Traceback" not in logged and "Error handling request" not in logged, logged


def test_the_admin_token_guards_the_api_but_not_the_probes(origin: Origin, tmp_path: Path) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text(secrets.token_urlsafe(24) + "\n")  # as the runbook makes one
    with run_relay("--admin-port", "0", "--admin-token-file", str(token_file)) as relay:
        assert relay.admin_port is not None
        status, body = admin(relay, "/api/links")
        assert status == 401 and "Bearer" in body["error"]
        assert admin(relay, "/api/links", headers={"Authorization": "Bearer nope"})[0] == 401
        assert admin(relay, "/api/links/aaaaaaaaaaaaaaaa", method="DELETE")[0] == 401
        listed = run_runbook_command(LIST, admin_port=relay.admin_port, token_file=token_file)
        assert json.loads(listed.stdout)["links"] == []
        for open_path in ("/metrics", "/healthz", "/readyz"):
            assert admin(relay, open_path)[0] == 200


def test_a_revoked_link_ends_for_visitors_and_its_client(origin: Origin, tmp_path: Path) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text("s3cret-admin\n")
    with run_relay("--admin-port", "0", "--admin-token-file", str(token_file)) as relay:
        assert relay.admin_port is not None
        tunnel = start_tunnel(origin.port, relay=relay)
        sub = subdomain(tunnel)
        assert fetch(relay.port, tunnel.host).status == 200
        done = run_runbook_command(
            REVOKE, admin_port=relay.admin_port, token_file=token_file, link=sub
        )
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["state"] == "revoked" and answer["was"] == "live"
        assert answer["persisted"] is True
        code, stderr = exit_of(tunnel)
        assert code != 0
        assert "link revoked: revoked by the relay operator" in stderr, stderr
        assert "Traceback" not in stderr
        assert not any(e["event"] == "reconnecting" for e in tunnel.events), tunnel.events
        error = next(e for e in tunnel.events if e["event"] == "error")
        assert "revoked" in error["message"]
        reply = fetch(relay.port, tunnel.host)
        assert reply.status == 410 and b"taken down" in reply.body.lower()
        assert scrape(relay)["sharetunnel_revocations_total"] == 1
        assert (
            admin(relay, "/api/links", headers={"Authorization": "Bearer s3cret-admin"})[1]["links"]
            == []
        )


def _hello(secret: str, lease: str | None = None) -> Hello:
    return Hello(window=MIN_WINDOW, max_streams=8, client_secret=secret, lease=lease)


async def _connect(relay: RelayProcess, hello: Hello) -> Welcome:
    transport, welcome = await open_tunnel(RelayTarget(f"{relay.url}/_tunnel"), hello, timeout_s=10)
    await transport.close()  # the client drops: its link is AWAY, its lease still good
    return welcome


async def test_a_revocation_survives_a_relay_restart(origin: Origin, tmp_path: Path) -> None:
    key = tmp_path / "lease-key.pem"
    args = ("--admin-port", "0", "--lease-key", str(key))
    relay = start_relay(*args)
    restarted = None
    try:
        secret = secrets.token_urlsafe(32)
        first = await _connect(relay, _hello(secret))
        wait_until(lambda: admin(relay, f"/api/links/{first.subdomain}")[1]["state"] == "away")
        status, answer = admin(relay, f"/api/links/{first.subdomain}?reason=abuse", method="DELETE")
        assert status == 200 and answer["was"] == "away" and answer["reason"] == "abuse"
        # The lease is refused at once...
        with pytest.raises(AuthRejected, match="taken down"):
            await _connect(relay, _hello(secret, first.lease))
        assert (tmp_path / "revoked.jsonl").exists()
        port = relay.port
        stop_process(relay.proc)
        relay.stderr_text()
        # ...and by the next relay with the same key, which a lease alone would convince.
        restarted = start_relay(*args, port=port)
        with pytest.raises(AuthRejected, match="taken down"):
            await _connect(restarted, _hello(secret, first.lease))
        host = f"{first.subdomain}.localhost:{port}"
        assert fetch(port, host).status == 410
        # Links never revoked still come back from their leases after the restart.
        other_secret = secrets.token_urlsafe(32)
        other = await _connect(restarted, _hello(other_secret))
        stop_process(restarted.proc)
        restarted.stderr_text()
        restarted = start_relay(*args, port=port)
        again = await _connect(restarted, _hello(other_secret, other.lease))
        assert again.resumed and again.subdomain == other.subdomain
    finally:
        for process in (relay, restarted):
            if process is not None:
                process.stderr_text()


def test_sighup_after_a_token_is_withdrawn_ends_its_links(origin: Origin, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alpha-token\nbeta-token\n")
    with run_relay("--tokens-file", str(tokens), "--admin-port", "0") as relay:
        alpha = start_tunnel(origin.port, "--token", "alpha-token", relay=relay)
        beta = start_tunnel(origin.port, "--token", "beta-token", relay=relay)
        try:
            assert fetch(relay.port, alpha.host).status == 200
            tokens.write_text("beta-token\n")
            relay.proc.send_signal(signal.SIGHUP)
            code, stderr = exit_of(alpha)
            assert code != 0 and "token withdrawn" in stderr, stderr
            assert fetch(relay.port, alpha.host).status == 410
            assert fetch(relay.port, beta.host).status == 200
            (left,) = admin(relay, "/api/links")[1]["links"]
            assert left["subdomain"] == subdomain(beta) and left["token_id"] is not None
        finally:
            beta.stop()
            alpha.stop()


def _requests_for_the_log(relay: RelayProcess, tunnel: TunnelProcess) -> None:
    assert fetch(relay.port, tunnel.host, "/").status == 200
    assert fetch(relay.port, tunnel.host, '/echo?q="x"', method="POST", body=b"abc").status == 200
    assert fetch(relay.port, tunnel.host, "/status/404").status == 404


def test_the_access_log_has_a_line_per_request(origin: Origin, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    with (
        run_relay("--access-log", str(log)) as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
    ):
        _requests_for_the_log(relay, tunnel)
        wait_until(lambda: len(log.read_text().splitlines()) >= 3, what="three access lines")
        lines = log.read_text().splitlines()
    sub = subdomain(tunnel)
    assert len(lines) == 3, lines
    first, second, third = (line.split(" ") for line in lines)
    assert first[0].endswith("Z") and first[1:3] == ["127.0.0.1", sub]
    assert first[3:5] == ['"GET', '/"'] and first[5] == "200"
    assert first[6] == "0" and int(first[7]) > 0 and first[8].endswith("ms")
    assert second[3:5] == ['"POST', '/echo?q=\\"x\\""'] and second[5:7] == ["200", "3"]
    assert third[5] == "404"


def test_json_logs_and_a_json_access_log(origin: Origin, tmp_path: Path) -> None:
    log = tmp_path / "access.jsonl"
    relay = start_relay("--access-log", str(log), "--log-format", "json", "--admin-port", "0")
    try:
        with run_tunnel(origin.port, relay=relay) as tunnel:
            _requests_for_the_log(relay, tunnel)
            wait_until(lambda: len(log.read_text().splitlines()) >= 3, what="three access lines")
    finally:
        stderr = relay.stderr_text()
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["status"] for e in entries] == [200, 200, 404]
    assert entries[1]["method"] == "POST" and entries[1]["path"] == '/echo?q="x"'
    assert entries[1]["bytes_in"] == 3 and entries[0]["bytes_out"] > 0
    assert all(e["link"] == subdomain(tunnel) and e["visitor"] == "127.0.0.1" for e in entries)
    assert all(e["duration_ms"] >= 0 and e["time"].endswith("Z") for e in entries)
    lines = stderr.splitlines()
    assert len(lines) >= 4, lines
    records = [json.loads(line) for line in lines]  # every line, not just most
    assert {"time", "level", "logger", "message"} <= set(records[0])
    messages = " ".join(r["message"] for r in records)
    assert "admin listener" in messages and "tunnel-relay listening" in messages
    assert "relay stopped" in messages


def test_the_access_log_goes_to_stdout_with_a_dash(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    argv = ["--port", "0", "--ready-file", str(ready), "--access-log", "-"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay_server", *argv],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_until(ready.exists, what="the relay's ready file")
        port = json.loads(ready.read_text())["port"]
        # An unknown link is a visitor request too: it gets its 404 and its line.
        assert fetch(port, f"{'q' * 16}.localhost:{port}", "/nothing").status == 404
    finally:
        stop_process(proc)
    out = proc.stdout.read() if proc.stdout else ""
    close_pipes(proc)
    (line,) = out.splitlines()
    fields = line.split(" ")
    assert fields[1:6] == ["127.0.0.1", "q" * 16, '"GET', '/nothing"', "404"]
    assert fields[6] == "0" and int(fields[7]) > 0 and fields[8].endswith("ms")
