"""Who may create links (tokens), who may open them (passwords), and TLS."""

from __future__ import annotations

import base64
import http.client
import json
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relay_server.tls import make_self_signed
from tests.processes import Origin, fetch, run_relay, run_tunnel, start_tunnel

pytestmark = pytest.mark.integration


def _refused(origin: Origin, relay_url: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a tunnel that must fail; return its stderr."""
    tunnel = start_tunnel(origin.port, "--relay", relay_url, *args, env=env, wait=False)
    code = tunnel.proc.wait(30)
    tunnel.stop()
    assert code != 0
    text = "\n".join(tunnel.stderr_lines)
    assert "Traceback" not in text
    return text


def test_a_relay_with_tokens_refuses_clients_without_a_good_one(
    origin: Origin, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# who may share\nalpha-token\n")
    with run_relay("--tokens-file", str(tokens)) as relay:
        missing = _refused(origin, relay.url)
        assert "requires a valid token" in missing and "--token" in missing
        wrong = _refused(origin, relay.url, "--token", "nope")
        assert "not accepted" in wrong
        with run_tunnel(origin.port, "--token", "alpha-token", relay=relay) as tunnel:
            assert fetch(relay.port, tunnel.host).status == 200
        with run_tunnel(origin.port, relay=relay, env={"TUNNEL_TOKEN": "alpha-token"}) as tunnel:
            assert fetch(relay.port, tunnel.host).status == 200
        # SIGHUP reloads the file: a new token works, a removed one no longer does.
        tokens.write_text("beta-token\n")
        relay.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not any("loaded 1 token" in line for line in relay.lines[-5:]):
            assert time.monotonic() < deadline, relay.lines
            time.sleep(0.05)
        assert "not accepted" in _refused(origin, relay.url, "--token", "alpha-token")
        with run_tunnel(origin.port, "--token", "beta-token", relay=relay) as tunnel:
            assert fetch(relay.port, tunnel.host).status == 200


@pytest.mark.timeout(60)
def test_a_tokens_file_that_is_not_text_is_named_at_start_and_kept_out_on_sighup(
    origin: Origin, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_bytes(b"alpha-token\n\xff\xfe oops\n")
    for option in ("--tokens-file", "--admin-token-file"):
        started = subprocess.run(
            [sys.executable, "-m", "relay_server", "--port", "0", option, str(tokens)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert started.returncode != 0
        what = "tokens file" if option == "--tokens-file" else "admin token file"
        assert f"cannot use the {what} {tokens}: not UTF-8 text" in started.stderr
        assert "lease key" not in started.stderr and "Traceback" not in started.stderr
    tokens.write_text("alpha-token\n")
    with run_relay("--tokens-file", str(tokens)) as relay:
        tokens.write_bytes(b"\xff\xfe\n")
        relay.proc.send_signal(signal.SIGHUP)
        relay.wait_logged("keeping the previous tokens")
        with run_tunnel(origin.port, "--token", "alpha-token", relay=relay) as tunnel:
            assert fetch(relay.port, tunnel.host).status == 200
    assert "Traceback" not in relay.stderr_text()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_password_protects_the_link_before_anything_reaches_the_app(origin: Origin) -> None:
    with (
        run_relay() as relay,
        run_tunnel(origin.port, "--password", "s3cret", relay=relay) as tunnel,
    ):
        denied = fetch(relay.port, tunnel.host, "/echo", headers={"Accept": "text/html"})
        assert denied.status == 401
        assert (
            denied.header(
                "WWW-Authenticate",
            )
            is not None
        )
        assert b"password" in denied.body.lower()
        wrong = fetch(
            relay.port, tunnel.host, "/echo", headers={"Authorization": _basic("share", "guess")}
        )
        assert wrong.status == 401
        good = fetch(
            relay.port, tunnel.host, "/echo", headers={"Authorization": _basic("share", "s3cret")}
        )
        assert good.status == 200
        seen = {name.lower() for name, _ in json.loads(good.body)["headers"]}
        assert "authorization" not in seen  # the relay's credentials stay at the relay
        # Request lines come out in order (a few ms late): once a last request's line is
        # out, every line before it is too.
        last = fetch(
            relay.port, tunnel.host, "/last", headers={"Authorization": _basic("share", "s3cret")}
        )
        assert last.status == 404
        tunnel.wait_event("request", path="/last")
        requests = [e for e in tunnel.events if e.get("event") == "request"]
        assert len(requests) == 2, "refused visitors must not reach the local server"


def test_basic_auth_and_a_generated_password(origin: Origin) -> None:
    with run_relay() as relay:
        with run_tunnel(origin.port, "--basic-auth", "ann:pw1", relay=relay) as tunnel:
            assert fetch(relay.port, tunnel.host).status == 401
            ok = fetch(relay.port, tunnel.host, headers={"Authorization": _basic("ann", "pw1")})
            assert ok.status == 200
        with run_tunnel(origin.port, "--password", relay=relay) as tunnel:
            secret = next(e for e in tunnel.events if e["event"] == "ready")
            assert tunnel.events[0] is secret  # the ready event comes first, login included
            assert secret["user"] == "share" and len(secret["password"]) >= 12
            ok = fetch(
                relay.port,
                tunnel.host,
                headers={"Authorization": _basic("share", secret["password"])},
            )
            assert ok.status == 200


def _self_signed_cert(relay_lines: list[str]) -> Path:
    for line in relay_lines:
        match = re.search(r"self-signed certificate for \S+: (\S+)", line)
        if match:
            return Path(match.group(1))
    raise AssertionError(f"no certificate path in {relay_lines}")


def _https_get(port: int, host: str, ca: Path) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_self_signed_tls_serves_https_and_wss(origin: Origin) -> None:
    with run_relay("--self-signed") as relay:
        assert relay.url.startswith("wss://")
        relay.wait_logged("self-signed certificate for ")  # stderr is read in a thread
        cert = _self_signed_cert(relay.lines)
        untrusted = _refused(origin, relay.url)
        assert "not trusted" in untrusted and "--ca-file" in untrusted
        plain = _refused(origin, relay.url.replace("wss://", "http://"))
        assert f"if the relay serves TLS, use --relay https://127.0.0.1:{relay.port}" in plain
        with run_tunnel(origin.port, "--ca-file", str(cert), relay=relay) as tunnel:
            assert tunnel.url.startswith("https://")
            status, body = _https_get(relay.port, tunnel.host, cert)
            assert (status, body) == (200, b"hello from the origin\n")


def test_an_operator_certificate_is_served(origin: Origin, tmp_path: Path) -> None:
    cert, key = make_self_signed("localhost", tmp_path)
    with (
        run_relay("--tls-cert", str(cert), "--tls-key", str(key)) as relay,
        run_tunnel(origin.port, "--ca-file", str(cert), relay=relay) as tunnel,
    ):
        assert tunnel.url.startswith("https://")
        assert _https_get(relay.port, tunnel.host, cert)[0] == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"],
            "does not exist",
        ),
        (["--tls-cert", "CERT"], "go together"),
        (["--tls-cert", "KEY", "--tls-key", "KEY"], "cannot load the TLS certificate"),
    ],
)
def test_bad_tls_settings_are_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    import subprocess
    import sys

    cert, key = make_self_signed("localhost", tmp_path)
    argv = [a.replace("CERT", str(cert)).replace("KEY", str(key)) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "relay_server", "--port", "0", *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
