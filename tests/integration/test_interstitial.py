"""``tunnel-relay --interstitial``: browsers see a warning page once per link; programs,
the skip header and the owner's bypass token pass straight through.

The browser test drives headless Chromium (a screenshot of the page is kept in
tests/artifacts/); the rest speak HTTP to the relay as curl, webhooks and
``gradio_client`` would.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator

import pytest
from websockets.sync.client import connect

from tests.cdp import Chromium, Page
from tests.integration.test_cli import assert_short_error
from tests.integration.test_display import _human_output
from tests.processes import (
    ROOT,
    Origin,
    RelayProcess,
    TunnelProcess,
    fetch,
    run_relay,
    run_tunnel,
    start_tunnel,
)
from tunnel_client.display import WARNING_PAGE_HINT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SCREENSHOT = ROOT / "tests" / "artifacts" / "interstitial.png"
TOKEN = "team-demo-2026"
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.fixture(scope="module")
def warning_relay() -> Iterator[RelayProcess]:
    with run_relay("--interstitial") as relay:
        yield relay


@pytest.fixture(scope="module")
def shared(warning_relay: RelayProcess, origin: Origin) -> Iterator[TunnelProcess]:
    with run_tunnel(origin.port, "--bypass-token", TOKEN, relay=warning_relay) as tunnel:
        yield tunnel


def count_of(origin: Origin, key: str) -> int:
    return int(origin.stats().get(f"count:{key}", 0))


def is_warning(page: Page) -> bool:
    return bool(page.evaluate("document.querySelector('#continue') !== null"))


@pytest.mark.browser
def test_a_browser_sees_the_page_once_per_link_and_the_bypass_link_skips_it(
    warning_relay: RelayProcess, shared: TunnelProcess, origin: Origin
) -> None:
    key = uuid.uuid4().hex[:12]
    url = shared.url.rstrip("/")
    with Chromium() as browser:
        page = browser.open(f"{url}/count?key={key}&lang=en")
        page.wait_for("document.querySelector('#continue') !== null")
        title = page.evaluate("document.title")
        assert "shared link" in title
        body = page.evaluate("document.body.innerText")
        assert shared.host in body and "someone's own computer" in body
        page.screenshot(SCREENSHOT)
        assert count_of(origin, key) == 0, "nothing reaches the app before the visitor chooses"

        # Continue: the app gets the request, at the address asked for (no st_continue).
        page.click("#continue")
        page.wait_for(f"document.body.innerText.includes('count:{key}')")
        assert count_of(origin, key) == 1
        assert page.evaluate("location.href") == f"{url}/count?key={key}&lang=en"

        # Remembered: another page of the same link goes straight to the app.
        second = browser.open(f"{url}/count?key={key}")
        second.wait_for(f"document.body.innerText.includes('count:{key}')")
        assert count_of(origin, key) == 2

        # Per link: another link on the same relay asks again.
        with run_tunnel(origin.port, relay=warning_relay) as other:
            third = browser.open(other.url)
            third.wait_for("document.readyState === 'complete' && document.body !== null")
            third.wait_for("document.querySelector('#continue') !== null")

    # A fresh browser with the owner's bypass link lands on the app at once, and the
    # token is gone from the address bar; the cookie then holds for the link's other pages.
    ready = next(e for e in shared.events if e.get("event") == "ready")
    assert ready["bypass_url"] == f"{url}/?st_bypass={TOKEN}"
    with Chromium() as browser:
        page = browser.open(f"{url}/count?key={key}&st_bypass={TOKEN}")
        page.wait_for(f"document.body.innerText.includes('count:{key}')")
        assert count_of(origin, key) == 3
        assert page.evaluate("location.href") == f"{url}/count?key={key}"
        again = browser.open(f"{url}/count?key={key}")
        again.wait_for(f"document.body.innerText.includes('count:{key}')")
        assert count_of(origin, key) == 4

    # A wrong token is no bypass.
    with Chromium() as browser:
        page = browser.open(f"{url}/count?key={key}&st_bypass=not-the-token")
        page.wait_for("document.querySelector('#continue') !== null")
        assert count_of(origin, key) == 4


def test_programs_pass_straight_through(shared: TunnelProcess, warning_relay: RelayProcess) -> None:
    port, host = warning_relay.port, shared.host
    # No Accept (curl, webhooks), JSON APIs, fetch() from the page, gradio_client (*/*).
    for headers in ({}, {"Accept": "application/json"}, {"Accept": "*/*"}):
        reply = fetch(port, host, "/echo", headers=headers)
        assert reply.status == 200 and reply.header("X-Sharetunnel-Warning") is None, headers
    reply = fetch(port, host, "/echo", method="POST", body=b'{"a": 1}', headers={"Accept": "*/*"})
    assert reply.status == 200 and json.loads(reply.body)["length"] == len(b'{"a": 1}')
    # A browser-like request that says it is a program.
    skip = {**BROWSER, "Sharetunnel-Skip-Warning": "1"}
    assert fetch(port, host, "/echo", headers=skip).status == 200
    # WebSockets are never stopped, whatever they accept.
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with connect(f"ws://{host}/ws", sock=sock, additional_headers=BROWSER, open_timeout=10) as ws:
        ws.send("ping")
        assert ws.recv(timeout=10) == "ping"


def test_the_page_the_redirect_and_the_cookie(
    shared: TunnelProcess, warning_relay: RelayProcess, origin: Origin
) -> None:
    port, host = warning_relay.port, shared.host
    key = uuid.uuid4().hex[:12]
    page = fetch(port, host, f"/count?key={key}", headers=BROWSER)
    assert page.status == 200 and page.header("X-Sharetunnel-Warning") == "interstitial"
    assert page.header("Cache-Control") == "no-store"
    assert page.header("X-Frame-Options") == "DENY"
    assert f'href="/count?key={key}&amp;st_continue=1"' in page.body.decode()
    head = fetch(port, host, "/", method="HEAD", headers=BROWSER)
    assert head.status == 200 and head.body == b""
    assert head.header("X-Sharetunnel-Warning") == "interstitial"

    went_on = fetch(port, host, f"/count?key={key}&st_continue=1", headers=BROWSER)
    assert went_on.status == 303 and went_on.header("Location") == f"/count?key={key}"
    cookie = went_on.header("Set-Cookie") or ""
    assert cookie.startswith("sharetunnel_warned=")
    assert all(part in cookie for part in ("Path=/", "HttpOnly", "SameSite=Lax", "Max-Age="))
    mark = cookie.split(";")[0]
    # The cookie passes, beside the visitor's own cookies, and the app sees those.
    passed = fetch(port, host, f"/count?key={key}", headers={**BROWSER, "Cookie": f"a=1; {mark}"})
    assert passed.status == 200 and json.loads(passed.body) == {f"count:{key}": 1}
    assert count_of(origin, key) == 1
    # A forged or tampered value does not.
    for forged in ("sharetunnel_warned=1", mark[:-1] + ("0" if mark[-1] != "0" else "1")):
        reply = fetch(port, host, "/", headers={**BROWSER, "Cookie": forged})
        assert reply.header("X-Sharetunnel-Warning") == "interstitial", forged

    # The owner's token: 303 to the address without it, and the same cookie.
    bypass = fetch(port, host, f"/count?st_bypass={TOKEN}&key={key}", headers=BROWSER)
    assert bypass.status == 303 and bypass.header("Location") == f"/count?key={key}"
    assert (bypass.header("Set-Cookie") or "").split(";")[0] == mark
    wrong = fetch(port, host, f"/?st_bypass={TOKEN}x", headers=BROWSER)
    assert wrong.header("X-Sharetunnel-Warning") == "interstitial"
    assert count_of(origin, key) == 1, "the page and the redirects reach nothing"


def test_the_cookie_of_one_link_does_not_open_another(
    shared: TunnelProcess, warning_relay: RelayProcess, origin: Origin
) -> None:
    port = warning_relay.port
    went_on = fetch(port, shared.host, "/?st_continue=1", headers=BROWSER)
    mark = (went_on.header("Set-Cookie") or "").split(";")[0]
    assert mark.startswith("sharetunnel_warned=")
    # A sibling link could set a cookie for the whole domain: its value is no key here.
    with run_tunnel(origin.port, relay=warning_relay) as other:
        reply = fetch(port, other.host, "/", headers={**BROWSER, "Cookie": mark})
        assert reply.header("X-Sharetunnel-Warning") == "interstitial"
        # That link has no bypass token: the owner's token of another link is no key.
        reply = fetch(port, other.host, f"/?st_bypass={TOKEN}", headers=BROWSER)
        assert reply.header("X-Sharetunnel-Warning") == "interstitial"
        ready = next(e for e in other.events if e.get("event") == "ready")
        assert ready["warning_page"] is True and "bypass_url" not in ready


def test_off_by_default(origin: Origin) -> None:
    with run_relay() as relay, run_tunnel(origin.port, "--bypass-token", TOKEN, relay=relay) as t:
        reply = fetch(relay.port, t.host, "/", headers=BROWSER)
        assert reply.status == 200 and reply.header("X-Sharetunnel-Warning") is None
        ready = next(e for e in t.events if e.get("event") == "ready")
        assert "warning_page" not in ready and "bypass_url" not in ready


def test_the_terminal_names_the_bypass_link(warning_relay: RelayProcess, origin: Origin) -> None:
    with_token = _human_output(origin, warning_relay.url, "--bypass-token", TOKEN, "--no-inspect")
    url = with_token[0].split()[1]
    assert f"Warning     browsers see a warning page once; skip it: {url}?st_bypass={TOKEN}" in (
        with_token
    )
    without = _human_output(origin, warning_relay.url, "--no-inspect")
    assert WARNING_PAGE_HINT in without, without


@pytest.mark.parametrize(
    "token",
    ["short", "has space in it", "slash/es-are-bad", "x" * 129, "ünïcode-token"],
)
def test_a_bad_bypass_token_is_refused_clearly(token: str) -> None:
    tunnel = start_tunnel(8000, "--bypass-token", token, wait=False)
    code = tunnel.proc.wait(30)
    tunnel.stop()
    assert_short_error(
        code, "", "\n".join(tunnel.stderr_lines), "--bypass-token", "bypass token must be 8 to 128"
    )
