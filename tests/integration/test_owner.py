"""The owner's side: what ``tunnel`` accepts, prints and says, with real processes.

Local targets as people write them, ``--version``, expiry warnings, clear messages for
a scheme-less relay, a shortened ttl, a slow app and an outage, and a relay that says
how to reach it. (The relay's self-signed certificate: test_self_signed.py.)
"""

from __future__ import annotations

import datetime
import importlib.metadata
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay_server.tls import make_self_signed
from tests.faultproxy import fault_proxy
from tests.processes import (
    ROOT,
    Origin,
    RelayProcess,
    TunnelProcess,
    _env,
    fetch,
    run_origin,
    run_relay,
    run_tunnel,
    start_tunnel,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
PLAIN = {"Accept": "*/*"}
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR) ")


@pytest.fixture(scope="module")
def relay() -> Iterator[RelayProcess]:
    with run_relay() as server:
        yield server


def run_cli(module: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_human(target: int | str, *args: str) -> TunnelProcess:
    """``tunnel TARGET ARGS`` without --json: stdout lines arrive as ``text`` events."""
    tunnel = TunnelProcess(
        subprocess.Popen(
            [sys.executable, "-m", "tunnel_client", str(target), *args],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    tunnel.start_readers()
    return tunnel


def stdout_lines(tunnel: TunnelProcess) -> list[str]:
    return [e["line"] for e in tunnel.events if e.get("event") == "text"]


def wait_stderr(tunnel: TunnelProcess, pattern: str, timeout: float = 20) -> str:
    """The first stderr line that matches ``pattern``, waiting for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(tunnel.stderr_lines):
            if re.search(pattern, line):
                return line
        if tunnel.proc.poll() is not None and not tunnel.proc.stderr:
            break
        time.sleep(0.05)
    raise AssertionError(f"no stderr line like {pattern!r}: {tunnel.stderr_lines}")


def serves_origin(relay: RelayProcess, tunnel: TunnelProcess) -> None:
    reply = fetch(relay.port, tunnel.host, "/")
    assert (reply.status, reply.body) == (200, b"hello from the origin\n"), reply.body[:300]


# -- 1. local targets as people write them -----------------------------------------------


@pytest.mark.parametrize(
    ("form", "local"),
    [
        ("{port}", "http://127.0.0.1:{port}"),
        ("localhost:{port}", "http://localhost:{port}"),
        ("127.0.0.1:{port}", "http://127.0.0.1:{port}"),
        ("http://localhost:{port}", "http://localhost:{port}"),
    ],
    ids=["port", "localhost", "address", "http-url"],
)
def test_local_targets_as_people_write_them(
    origin: Origin, relay: RelayProcess, form: str, local: str
) -> None:
    with run_tunnel(form.format(port=origin.port), relay=relay) as tunnel:
        assert tunnel.events[0]["local"] == local.format(port=origin.port)
        serves_origin(relay, tunnel)


def test_an_ipv6_local_address_in_brackets(relay: RelayProcess) -> None:
    with (
        run_origin("--host", "::1") as origin,
        run_tunnel(f"[::1]:{origin.port}", relay=relay) as tunnel,
    ):
        assert tunnel.events[0]["local"] == f"http://[::1]:{origin.port}"
        serves_origin(relay, tunnel)


def test_an_https_local_server_with_local_insecure_for_a_self_signed_one(
    relay: RelayProcess, tmp_path: Path
) -> None:
    cert, key = make_self_signed("localhost", tmp_path)
    with run_origin("--tls-cert", str(cert), "--tls-key", str(key)) as origin:
        target = f"https://localhost:{origin.port}"
        # Not trusted: the owner hears why and what to pass; visitors get a 502 page.
        with run_tunnel(target, relay=relay) as tunnel:
            assert tunnel.events[0]["local"] == target
            local = tunnel.wait_event("local")
            assert "self-signed" in local["certificate_problem"], local
            assert fetch(relay.port, tunnel.host, "/").status == 502
        human = start_human(target, "--relay", relay.url)
        try:
            line = wait_stderr(human, "certificate")
            assert "--local-insecure" in line and "self-signed" in line, line
        finally:
            human.stop()
        with run_tunnel(target, "--local-insecure", relay=relay) as tunnel:
            serves_origin(relay, tunnel)
            record = tunnel.wait_event("request", path="/")
            assert record["status"] == 200
            assert not [
                e for e in tunnel.events if e.get("event") == "local" and "certificate_problem" in e
            ]


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        ("abc", "PORT, HOST:PORT"),
        ("localhost", "PORT, HOST:PORT"),
        ("::1", "[IPV6]:PORT"),
        ("70000", "1..65535"),
        ("localhost:0", "1..65535"),
        ("ftp://localhost:21", "http:// or https://"),
        ("http://localhost:8000/app", "only the scheme, host and port"),
    ],
)
def test_anything_else_is_one_line_and_exit_code_2(target: str, needle: str) -> None:
    done = run_cli("tunnel_client", target)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(f"tunnel: TARGET {target!r}"), done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr


def test_the_python_api_takes_the_same_forms(origin: Origin, relay: RelayProcess) -> None:
    from tunnel_client import share
    from tunnel_client.protocol.errors import ConfigError

    for target in (origin.port, f"localhost:{origin.port}", f"http://127.0.0.1:{origin.port}"):
        with share(target, relay=relay.url, use_environment=False) as link:
            host = link.url.split("://", 1)[1].rstrip("/")
            reply = fetch(relay.port, host, "/")
            assert reply.body == b"hello from the origin\n", target
    with pytest.raises(ConfigError, match="only the scheme, host and port"):
        share("http://localhost:8000/app", relay=relay.url, use_environment=False)


# -- 2. --version -------------------------------------------------------------------------


def test_version_of_both_commands_and_the_package() -> None:
    expected = importlib.metadata.version("sharetunnel")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert expected == pyproject, "the installed distribution is another version"
    for module, name in (("tunnel_client", "tunnel"), ("relay_server", "tunnel-relay")):
        done = run_cli(module, "--version")
        assert (done.returncode, done.stdout, done.stderr) == (0, f"{name} {expected}\n", "")
    done = run_cli("tunnel_client", "share", "--help")
    assert "TARGET" in done.stdout
    # The attribute loads no more of the package than importing it does.
    code = (
        "import sys, tunnel_client; "
        "print(tunnel_client.__version__, 'tunnel_client.api' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.stdout == f"{expected} False\n", done.stderr


def test_version_falls_back_to_pyproject_when_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tunnel_client.protocol import version

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(version.importlib.metadata, "version", missing)
    version.package_version.cache_clear()
    try:
        pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
        assert version.package_version() == pyproject
    finally:
        version.package_version.cache_clear()


# -- 3. expiry the owner cannot miss -------------------------------------------------------


def test_expiry_warnings_at_one_hour_and_five_minutes(origin: Origin, relay: RelayProcess) -> None:
    five = start_tunnel(origin.port, "--ttl", "5m3s", relay=relay)
    hour = start_tunnel(origin.port, "--ttl", "1h3s", relay=relay)
    short = start_tunnel(origin.port, "--ttl", "4m59s", relay=relay)
    human = start_human(origin.port, "--relay", relay.url, "--ttl", "5m3s")
    try:
        for tunnel, left in ((five, 300), (hour, 3600)):
            warning = tunnel.wait_event("expiring", timeout=15)
            assert warning["url"] == tunnel.url
            assert warning["expires_at"] == tunnel.events[0]["expires_at"]
            assert left - 2 <= warning["left_s"] <= left, warning
        line = wait_stderr(human, "^warning: the link expires in ")
        when = r"\(at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)"
        assert re.match(rf"warning: the link expires in (5m|4m5\ds) {when}", line), line
        ready = stdout_lines(human)
        assert ready[1].startswith("Expires     ") and "UTC (in 5m" in ready[1], ready
        time.sleep(1)  # the short link had as long: no warning for a link under 5 minutes
    finally:
        for tunnel in (five, hour, short, human):
            tunnel.stop()
    # Each warning once, and only those still ahead when the link started.
    for tunnel, left in ((five, 300), (hour, 3600)):
        warnings = [e["left_s"] for e in tunnel.events if e["event"] == "expiring"]
        assert warnings == [pytest.approx(left, abs=2)], tunnel.events
    assert not [e for e in short.events if e["event"] == "expiring"], short.events
    assert len([line for line in human.stderr_lines if line.startswith("warning: the link")]) == 1


def test_the_410_page_says_when_the_link_expired(origin: Origin) -> None:
    with run_relay("--ttl", "2s") as relay:
        tunnel = start_tunnel(origin.port, relay=relay)
        try:
            tunnel.wait_event("expired", timeout=20)
        finally:
            tunnel.stop()
        expires = datetime.datetime.fromisoformat(tunnel.events[0]["expires_at"])
        for accept in (HTML, PLAIN):
            reply = fetch(relay.port, tunnel.host, "/", headers=accept)
            assert reply.status == 410
            assert f"expired at {expires:%Y-%m-%d %H:%M} UTC" in reply.body.decode(), reply.body


def test_the_503_page_reloads_itself_in_a_browser(origin: Origin, relay: RelayProcess) -> None:
    tunnel = start_tunnel(origin.port, relay=relay)
    tunnel.stop(signal.SIGKILL)  # the relay sees the socket drop: the owner is away
    relay.wait_connection_ended(tunnel.host)
    html = fetch(relay.port, tunnel.host, "/", headers=HTML)
    plain = fetch(relay.port, tunnel.host, "/", headers=PLAIN)
    assert html.status == plain.status == 503
    assert '<meta http-equiv="refresh" content="5">' in html.body.decode()
    assert b"refresh" not in plain.body and b"<" not in plain.body
    assert html.header("Retry-After") == plain.header("Retry-After") == "5"


# -- 4. clear messages ------------------------------------------------------------------------


def test_a_relay_without_a_scheme_that_speaks_plain_http(relay: RelayProcess) -> None:
    given = f"127.0.0.1:{relay.port}"
    done = run_cli("tunnel_client", "8000", "--relay", given)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"tunnel: cannot reach the relay at wss://{given}/_tunnel: it does not speak TLS; "
        f"if it is a plain-HTTP relay, use --relay http://{given}"
    ]


def test_a_ttl_above_the_relays_limit_says_what_was_granted(origin: Origin) -> None:
    with run_relay("--ttl", "72h") as relay:
        with run_tunnel(origin.port, "--ttl", "100h", relay=relay) as tunnel:
            ready = tunnel.events[0]
            assert ready["ttl_note"] == "the relay granted 72h, less than the 100h asked"
            assert (ready["ttl_asked_s"], ready["ttl_granted_s"]) == (
                360000,
                pytest.approx(259200, abs=2),
            )
        with run_tunnel(origin.port, "--ttl", "2h", relay=relay) as tunnel:
            assert "ttl_note" not in tunnel.events[0]
        human = start_human(origin.port, "--relay", relay.url, "--ttl", "100h")
        try:
            human.wait_event("text", line="Requests:")
        finally:
            human.stop()
        expires = stdout_lines(human)[1]
        assert expires.startswith("Expires     ") and expires.endswith(
            "; the relay granted 72h, less than the 100h asked"
        ), expires


def test_a_slow_app_is_504_in_the_owners_log_and_the_page_names_the_setting(
    origin: Origin,
) -> None:
    with (
        run_relay("--response-timeout", "1s") as relay,
        run_tunnel(origin.port, relay=relay) as tunnel,
    ):
        reply = fetch(relay.port, tunnel.host, "/slow?delay=30", headers=PLAIN)
        assert reply.status == 504
        assert b"--response-timeout" in reply.body and b"RELAY_RESPONSE_TIMEOUT" in reply.body
        record = tunnel.wait_event("request", path="/slow?delay=30")
        assert record["status"] == 504, record
        assert record["error"] == "the app did not answer within the relay's response timeout"


def test_the_relay_says_which_relay_url_works(origin: Origin, relay: RelayProcess) -> None:
    url = f"http://127.0.0.1:{relay.port}"
    # Printed after the relay wrote its ready file: waited for, not just looked up.
    said = f"clients: tunnel PORT --relay {url}"
    assert relay.wait_logged(said) == said, relay.lines
    for host in (f"127.0.0.1:{relay.port}", f"localhost:{relay.port}"):
        page = fetch(relay.port, host, "/")
        assert page.status == 200
        assert f"tunnel PORT --relay http://{host}\n" in page.body.decode(), page.body
    # What it says works as it is.
    with run_tunnel(origin.port, "--relay", url) as tunnel:
        serves_origin(relay, tunnel)


def test_a_given_password_is_never_echoed(origin: Origin, relay: RelayProcess) -> None:
    secret = "hunter2-do-not-print"
    human = start_human(origin.port, "--relay", relay.url, "--password", secret)
    try:
        human.wait_event("text", line="Requests:")
    finally:
        human.stop()
    printed = "\n".join(stdout_lines(human) + human.stderr_lines)
    assert secret not in printed
    assert "Login       visitors must give the user name and password you set" in printed
    with run_tunnel(origin.port, "--password", secret, relay=relay) as tunnel:
        assert tunnel.events[0]["protected"] is True
    assert secret not in repr(tunnel.events) + "\n".join(tunnel.stderr_lines)
    # A generated one is shown: the owner needs it.
    human = start_human(origin.port, "--relay", relay.url, "--password")
    try:
        human.wait_event("text", line="Requests:")
    finally:
        human.stop()
    assert any(
        re.match(r"Login       user 'share', password '\S{12,}'", line)
        for line in stdout_lines(human)
    )


@pytest.mark.parametrize("embedded", [False, True], ids=["localhost-relay", "embedded"])
def test_no_qr_code_for_a_link_a_phone_cannot_open(
    origin: Origin, relay: RelayProcess, embedded: bool
) -> None:
    args = ["--qr"] if embedded else ["--qr", "--relay", relay.url]
    human = start_human(origin.port, *args)
    try:
        human.wait_event("text", line="Requests:")
    finally:
        human.stop()
    lines = stdout_lines(human)
    assert "QR code     none: this link opens on this machine only, not on a phone" in lines
    assert not [line for line in lines if "▄" in line or "█" in line], lines


def test_one_line_per_outage_and_no_log_lines(origin: Origin) -> None:
    with (
        run_relay("--keepalive", "1s") as relay,
        fault_proxy(relay.port) as proxy,
        fault_proxy(relay.port) as own,  # the human's own way: its attempts can be counted
    ):
        via = f"ws://127.0.0.1:{proxy.port}"
        human = start_human(origin.port, "--relay", f"ws://127.0.0.1:{own.port}")
        logged = start_human(origin.port, "--relay", via, "--log-level", "warning")
        machine = start_tunnel(origin.port, "--relay", via)
        try:
            for tunnel in (human, logged):
                tunnel.wait_event("text", line="Requests:")
            for way in (proxy, own):
                way.refuse()
                way.blackhole()  # only keepalives notice: the protocol logs a warning
            for tunnel in (human, logged):
                wait_stderr(tunnel, "reconnecting", timeout=15)
            for _ in range(3):  # more attempts against a refusing relay
                machine.wait_event("reconnecting", timeout=15)
            # The human notices the loss on its own keepalive clock, maybe after the
            # machine's attempts: its line counts attempts, so one must have been refused.
            wait_until(lambda: own.refused >= 1, 15, "the human's first attempt refused")
            for way in (proxy, own):
                way.restore()
            back = machine.wait_event("reconnected", timeout=30)
            for tunnel in (human, logged):
                wait_stderr(tunnel, "^back online", timeout=30)
        finally:
            for tunnel in (human, logged, machine):
                tunnel.stop()
    attempts = [e for e in machine.events if e["event"] == "reconnecting"]
    assert back["attempts"] == len(attempts) >= 3, machine.events
    lost = [line for line in human.stderr_lines if "reconnecting" in line]
    assert len(lost) == 1 and lost[0].startswith("connection to the relay lost ("), (
        human.stderr_lines
    )
    (online,) = [line for line in human.stderr_lines if line.startswith("back online")]
    match = re.fullmatch(
        r"back online after (\d+) s \((\d+) attempts\): (\S+) is the same link", online
    )
    assert match and int(match.group(2)) >= 2, online
    assert not [line for line in human.stderr_lines if LOG_LINE.match(line)], human.stderr_lines
    # --log-level given: the owner asked for log lines, and gets them.
    assert [line for line in logged.stderr_lines if LOG_LINE.match(line) and "WARNING" in line]
