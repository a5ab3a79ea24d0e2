"""The command lines: bad input, and ``tunnel PORT`` with no relay configured.

Bad input gets a short error naming the problem, a non-zero exit and no traceback.
With no relay, ``tunnel`` runs one in its own process and hands out a
``http://<sub>.localhost:<port>/`` link that works on this machine.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest

from tests.processes import ROOT, Origin, TunnelProcess, _env, fetch, run_tunnel

pytestmark = pytest.mark.integration


def closed_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_cli(module: str, *args: str, timeout: float = 30) -> tuple[int, str, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


def assert_short_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code != 0, (out, err)
    assert "Traceback" not in out + err, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 4, f"not a short error: {err!r}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["abc"], ["'abc'", "PORT"]),
        (["70000"], ["70000", "1..65535"]),
        (["8000", "--relay", "ftp://x"], ["ftp://x", "ws://"]),
        (["8000", "--relay", "ws://127.0.0.1:70000"], ["ws://127.0.0.1:70000", "port"]),
    ],
    ids=["not-a-number", "port-out-of-range", "wrong-scheme", "bad-relay-port"],
)
def test_tunnel_rejects_bad_input(args: list[str], needles: list[str]) -> None:
    code, out, err, _ = run_cli("tunnel_client", *args)
    assert_short_error(code, out, err, *needles)


@pytest.mark.parametrize("as_json", [False, True], ids=["human", "json"])
def test_tunnel_with_an_unreachable_relay_fails_fast(as_json: bool) -> None:
    port = closed_port()
    args = ["8000", "--relay", f"ws://127.0.0.1:{port}", *(["--json"] if as_json else [])]
    code, out, err, took = run_cli("tunnel_client", *args)
    assert_short_error(code, out, err, "cannot reach the relay", str(port), "refused")
    assert took < 15, f"took {took:.1f} s to give up"
    if as_json:
        assert '"event": "error"' in out and "cannot reach the relay" in out, out


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--ttl", "banana"], ["--ttl", "banana"]),
        (["--port", "-1"], ["--port", "-1"]),
        (["--domain", "bad domain"], ["domain", "'bad domain'"]),
        (["--response-timeout", "soon"], ["--response-timeout", "soon"]),
    ],
    ids=["ttl-not-a-duration", "negative-port", "domain-with-space", "timeout-not-a-duration"],
)
def test_relay_rejects_bad_input(args: list[str], needles: list[str]) -> None:
    code, out, err, took = run_cli("relay_server", *args)
    assert_short_error(code, out, err, *needles)
    assert took < 15


@pytest.mark.parametrize(
    ("command", "args", "needle"),
    [("tunnel", ["abc"], "'abc'"), ("tunnel-relay", ["--ttl", "banana"], "banana")],
)
def test_installed_commands_fail_the_same_way(command: str, args: list[str], needle: str) -> None:
    path = shutil.which(command)
    assert path is not None, f"{command} is not installed (pip install -e .)"
    done = subprocess.run(
        [path, *args], env=_env(), capture_output=True, text=True, timeout=30, check=False
    )
    assert_short_error(done.returncode, done.stdout, done.stderr, needle)


# -- no relay configured: the embedded local relay ------------------------------------

LOCAL_LINK = re.compile(r"^http://([a-z0-9]{16})\.localhost:(\d+)/$")


def curl(url: str) -> str:
    """GET a URL with curl, which resolves *.localhost to loopback by itself."""
    path = shutil.which("curl")
    assert path is not None, "curl is not installed"
    done = subprocess.run(
        [path, "-sS", "--fail", "--noproxy", "*", "--max-time", "15", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def assert_serves_origin(url: str) -> None:
    match = LOCAL_LINK.match(url)
    assert match, f"not a local link: {url}"
    assert curl(url) == "hello from the origin\n"
    reply = fetch(int(match.group(2)), urlsplit(url).netloc, "/")
    assert reply.status == 200 and reply.body == b"hello from the origin\n"


def test_no_relay_json_gives_a_local_link_that_serves_the_origin(origin: Origin) -> None:
    with run_tunnel(origin.port) as tunnel:
        ready = next(e for e in tunnel.events if e["event"] == "ready")
        assert ready["local_only"] is True
        assert_serves_origin(ready["url"])
        record = tunnel.wait_event("request", path="/")
        assert record["status"] == 200 and record["method"] == "GET"


def start_human_tunnel(port: int) -> TunnelProcess:
    """``tunnel PORT`` as a person would run it: no --json, no relay."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunnel_client", str(port)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tunnel = TunnelProcess(proc)
    tunnel._threads = [
        threading.Thread(target=tunnel._read, daemon=True),
        threading.Thread(target=tunnel._read_err, daemon=True),
    ]
    for thread in tunnel._threads:
        thread.start()
    return tunnel


def test_no_relay_human_output_says_local_only_and_how_to_go_public(origin: Origin) -> None:
    tunnel = start_human_tunnel(origin.port)
    try:
        lines = [tunnel.wait_event("text")["line"] for _ in range(3)]
        forwarding, expires, hint = lines
        assert forwarding.startswith("Forwarding"), lines
        url, target = re.findall(r"http://\S+", forwarding)
        assert target == f"http://127.0.0.1:{origin.port}"
        assert expires.startswith("Expires"), lines
        assert "this machine only" in hint and "--relay" in hint, hint
        assert_serves_origin(url)
    finally:
        code = tunnel.stop(signal.SIGINT)
    assert code == 0, tunnel.stderr_lines
    assert "Traceback" not in "\n".join(tunnel.stderr_lines)
    # One line per request, with its method, path and status.
    request_lines = [e["line"] for e in tunnel.events if " GET " in e.get("line", "")]
    assert request_lines and all(" / " in line and " 200 " in line for line in request_lines)


@pytest.mark.timeout(60)
def test_a_visitors_path_cannot_drive_the_owners_terminal(origin: Origin) -> None:
    # C1 controls (U+009B is a CSI to xterm) and bidi overrides (U+202E) are valid
    # UTF-8 in a request target: the owner's terminal gets them only as escapes.
    tunnel = start_human_tunnel(origin.port)
    try:
        forwarding = tunnel.wait_event("text")["line"]
        url = re.findall(r"http://\S+", forwarding)[0]
        host = url.split("//", 1)[1].rstrip("/")
        port = int(host.rsplit(":", 1)[1])
        target = "/a\u009b2J\u202eevil".encode()
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(
                b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                % (target, host.encode())
            )
            answer = sock.recv(1000)
            assert answer.startswith(b"HTTP/1.1 "), answer  # (the origin refuses such paths)
        shown = ""
        while " GET " not in shown:  # the link's lines first, then the request's
            shown = tunnel.wait_event("text", timeout=20)["line"]
    finally:
        code = tunnel.stop(signal.SIGINT)
    assert code == 0, tunnel.stderr_lines
    assert "/a\\x9b2J\\u202eevil" in shown, shown
    assert "\u009b" not in shown and "\u202e" not in shown
