"""What a terminal user sees: the link, its expiry and, when asked, a QR code of it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.processes import ROOT, Origin, TunnelProcess, _env, run_relay
from tunnel_client.display import qr_text

pytestmark = pytest.mark.integration


def _human_output(origin: Origin, relay_url: str, *args: str) -> list[str]:
    tunnel = TunnelProcess(
        subprocess.Popen(
            [sys.executable, "-m", "tunnel_client", str(origin.port), "--relay", relay_url, *args],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    tunnel.start_readers()
    try:
        tunnel.wait_event("text", line="Requests:")
    finally:
        tunnel.stop()
    return [e["line"] for e in tunnel.events if e.get("event") == "text"]


def test_qr_code_of_the_link_on_request(origin: Origin) -> None:
    # Links a phone can open: a public domain (machine-local links get no QR code).
    with run_relay("--domain", "share.example.test") as relay:
        lines = _human_output(origin, relay.url, "--qr")
        match = re.match(r"Forwarding  (\S+)  ->  http://127\.0\.0\.1:\d+$", lines[0])
        assert match, lines
        url = match.group(1)
        assert lines[1].startswith("Expires     ")
        inspect = lines.index("Requests:") - 1
        assert re.fullmatch(r"Inspect     http://127\.0\.0\.1:\d+", lines[inspect]), lines
        printed = "\n".join(lines[2:inspect])
        assert printed == qr_text(url)
        assert "▄" in printed and len(printed.splitlines()) > 15


def test_no_qr_code_when_piped_or_refused(origin: Origin) -> None:
    with run_relay("--domain", "share.example.test") as relay:
        for args in ((), ("--no-qr",)):
            lines = _human_output(origin, relay.url, *args)
            assert lines[2].startswith("Inspect     http://127.0.0.1:"), lines
            assert lines[3] == "Requests:", lines


def test_the_first_json_line_is_the_ready_event(origin: Origin) -> None:
    from tests.processes import start_tunnel

    with run_relay() as relay:
        # Port 1 on loopback has nothing listening: a "local" warning follows, never leads.
        for port in (origin.port, 1):
            tunnel = start_tunnel(port, relay=relay)
            try:
                if port == 1:
                    tunnel.wait_event("local", listening=False)
            finally:
                tunnel.stop()
            assert tunnel.events[0]["event"] == "ready", tunnel.events
            assert tunnel.events[0]["expires_at"].endswith("Z")
