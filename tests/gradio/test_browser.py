"""Headless Chromium opens the share link, renders the app, and a click gets an answer."""

from __future__ import annotations

import json

import pytest

from tests.cdp import Chromium
from tests.gradio.conftest import GRADIO_WARNINGS, SharedApp, greet_in_browser
from tests.processes import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.gradio, pytest.mark.browser, GRADIO_WARNINGS]

SCREENSHOT = ROOT / "tests" / "artifacts" / "gradio_share_link.png"


@pytest.mark.timeout(120)
def test_a_browser_uses_the_app_through_the_link(shared_app: SharedApp) -> None:
    unloads_before = len(shared_app.probe.unloaded)
    with Chromium() as browser:
        page = browser.open(shared_app.share_url)
        # The page rendered (Gradio's frontend mounted the app from the link's assets)
        # and a click gets an answer.
        assert greet_in_browser(page, "Ada") == "Hello, Ada!"
        assert page.evaluate("location.href").startswith(shared_app.share_url)
        title = page.evaluate("document.title")
        assert title == "sharetunnel gradio test"
        assert page.screenshot(SCREENSHOT).stat().st_size > 10_000
        # Every asset came through the link, none from a CDN (the page works offline).
        hosts = page.evaluate(
            "JSON.stringify([...new Set(performance.getEntriesByType('resource')"
            ".map(e => new URL(e.name).host))])"
        )
        assert set(json.loads(hosts)) <= {shared_app.host}
        # Closing the tab ends its heartbeat stream through the relay: the app unloads.
        page.close()
        assert shared_app.probe.wait_any_unload(unloads_before, timeout=30)
