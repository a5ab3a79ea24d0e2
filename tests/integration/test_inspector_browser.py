"""Headless Chromium uses the inspector page: the list, one request's heads and body,
Replay, Edit and replay, and the filter. A screenshot is kept in tests/artifacts/."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import pytest

from tests.cdp import Chromium, Page
from tests.integration.test_inspector import Api
from tests.processes import ROOT, Origin, fetch, run_relay, run_tunnel

pytestmark = [pytest.mark.integration, pytest.mark.browser]

SCREENSHOT = ROOT / "tests" / "artifacts" / "inspector.png"


def until(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def text_of(page: Page, selector: str) -> str:
    return str(page.evaluate(f"document.querySelector({json.dumps(selector)}).textContent"))


@pytest.mark.timeout(120)
def test_the_page_lists_shows_and_replays_a_request(origin: Origin) -> None:
    key = uuid.uuid4().hex[:12]
    path = f"/count?key={key}"
    with run_relay() as relay, run_tunnel(origin.port, relay=relay) as tunnel:
        api = Api.of(tunnel)
        reply = fetch(
            relay.port,
            tunnel.host,
            path,
            method="POST",
            body=b'{"prompt": "a <b>bold</b> cat", "steps": 20}',
            headers={"Content-Type": "application/json", "X-Browser-Test": "yes"},
        )
        assert reply.status == 200
        entry_id = api.wait_for(lambda e: e["path"] == path and e["done"])["id"]
        row = f'tr.entry[data-id="{entry_id}"]'
        with Chromium() as browser:
            page = browser.open(api.url + "/")
            # Listed (from the first fetch or the live stream), with its status.
            page.wait_for(f"document.querySelector({json.dumps(row)}) !== null")
            assert path in text_of(page, row) and "200" in text_of(page, f"{row} td.status")
            # A request made while the page is open appears by itself (live updates).
            fetch(relay.port, tunnel.host, f"/echo?live={key}")
            page.wait_for(
                f"[...document.querySelectorAll('td.path')].some(td => "
                f"td.textContent.includes('/echo?live={key}'))"
            )
            # Opening it shows its headers and its JSON body, pretty-printed and as text.
            page.click(row)
            page.wait_for(
                "document.querySelector('#request-headers').textContent.includes('X-Browser-Test')"
            )
            body = text_of(page, "#request-body pre")
            assert body == '{\n  "prompt": "a <b>bold</b> cat",\n  "steps": 20\n}'
            assert page.evaluate("document.querySelector('#request-body b')") is None
            assert "application/json" in text_of(page, "#response-headers")

            # Replay: the origin counts the request a second time.
            page.click("#replay")
            until(lambda: origin.stats().get(f"count:{key}") == 2, "the replay reached the origin")
            page.wait_for("document.querySelector('#notice').textContent.includes('Replayed as')")
            page.wait_for("document.querySelector('tr.entry.replay') !== null")
            assert f"replay of #{entry_id}" in text_of(page, "tr.entry.replay td.path")

            # Edit and replay, with another path: it reaches that path.
            page.click(f'tr.entry[data-id="{entry_id}"]')
            page.wait_for("document.querySelector('#detail-title').textContent.includes('#')")
            page.click("#edit")
            page.evaluate("document.querySelector('#edit-path').value = ''")
            page.type_into("#edit-path", f"/count?key={key}-edited")
            page.click("#send")
            until(
                lambda: origin.stats().get(f"count:{key}-edited") == 1,
                "the edited replay reached the origin",
            )
            page.wait_for("document.querySelector('#detail-title').textContent.includes('-edited')")

            # The filter hides what does not match.
            page.type_into("#filter", "edited")
            page.wait_for(
                "[...document.querySelectorAll('tr.entry')].filter(r => !r.hidden).length === 1"
            )
            page.evaluate("document.querySelector('#filter').value = ''")
            page.evaluate("document.querySelector('#filter').dispatchEvent(new Event('input'))")
            assert page.screenshot(SCREENSHOT).stat().st_size > 10_000
