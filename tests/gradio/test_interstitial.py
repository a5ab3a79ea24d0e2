"""A Gradio app shared with ``share=True`` through a relay with ``--interstitial``: a
browser sees the warning page, continues, and uses the app (its fetches, queue stream
and heartbeats pass with the cookie); ``gradio_client`` never sees the page."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cdp import Chromium
from tests.gradio.conftest import GRADIO_WARNINGS, SharedApp, greet_in_browser
from tests.processes import RelayProcess, run_relay

pytestmark = [pytest.mark.integration, pytest.mark.gradio, GRADIO_WARNINGS]


@pytest.fixture(scope="module")
def relay() -> Iterator[RelayProcess]:
    """This module's relay shows the warning page (overrides conftest's ``relay``)."""
    with run_relay("--interstitial") as process:
        yield process


@pytest.mark.browser
@pytest.mark.timeout(120)
def test_a_browser_continues_past_the_warning_and_uses_the_app(shared_app: SharedApp) -> None:
    with Chromium() as browser:
        page = browser.open(shared_app.share_url)
        page.wait_for("document.querySelector('#continue') !== null")
        assert page.evaluate("document.querySelector('#greeting') === null")
        page.click("#continue")
        assert greet_in_browser(page, "Grace") == "Hello, Grace!"


@pytest.mark.timeout(120)
def test_gradio_client_passes_straight_through(shared_app: SharedApp) -> None:
    from gradio_client import Client

    visitor = Client(shared_app.share_url, verbose=False, analytics_enabled=False)
    try:
        assert visitor.predict("Alan", api_name="/greet") == "Hello, Alan!"
    finally:
        visitor.close()
