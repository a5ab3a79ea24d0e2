"""Fixtures for the Gradio tests: gradio imported once, a relay, and a shared app.

Gradio is imported by the session fixture ``gr``, not at module level, so collecting
the rest of the suite never pays for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.cdp import Page
from tests.gradio.app import Probe, build_demo
from tests.processes import RelayProcess, run_relay

PUBLIC_URL = re.compile(r"^\* Running on public URL: (\S+)$", re.MULTILINE)

GRADIO_WARNINGS = pytest.mark.filterwarnings(
    # Gradio's queue analytics (after every event, in its server thread) still sets a
    # pandas option that pandas deprecates; under filterwarnings=error that kills the
    # bookkeeping task. It is Gradio's, not ours, and touches no response.
    "ignore:'future.no_silent_downcasting' is deprecated"
)


def free_port() -> int:
    """A port free right now, for ``launch(server_port=...)``.

    Without one Gradio probes 7860, 7861, ... and leaks the probe socket of every busy
    port (a ResourceWarning, an error here); other test runs may hold 7860.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def gr() -> Iterator[ModuleType]:
    """The gradio module, with analytics off and a 1 s session heartbeat.

    The heartbeat interval (a documented Gradio setting, read per heartbeat request)
    only shortens how long ``gradio_client.Client.close()`` takes to drop its session:
    the client notices ``close()`` at the next heartbeat line.

    Gradio's ``safe_get_lock()``/``safe_get_stop_event()`` make a new event loop and set
    it as the thread's current loop each time they run outside a loop, abandoning the
    previous one unclosed (a ResourceWarning, an error under ``filterwarnings = error``).
    On Python >= 3.10 a Lock or Event binds to a loop only when first used, so the
    plain constructors do the same job without the leak.
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    previous_interval = os.environ.get("GRADIO_HEARTBEAT_INTERVAL")
    os.environ["GRADIO_HEARTBEAT_INTERVAL"] = "1"
    import gradio
    import gradio.queueing
    import gradio.utils

    saved = (gradio.utils.safe_get_lock, gradio.utils.safe_get_stop_event)
    gradio.utils.safe_get_lock = gradio.queueing.safe_get_lock = asyncio.Lock
    gradio.utils.safe_get_stop_event = asyncio.Event
    try:
        yield gradio
    finally:
        gradio.utils.safe_get_lock, gradio.utils.safe_get_stop_event = saved
        gradio.queueing.safe_get_lock = saved[0]
        if previous_interval is None:
            os.environ.pop("GRADIO_HEARTBEAT_INTERVAL", None)
        else:
            os.environ["GRADIO_HEARTBEAT_INTERVAL"] = previous_interval


@pytest.fixture(scope="module")
def relay() -> Iterator[RelayProcess]:
    """A real ``tunnel-relay`` process on 127.0.0.1 (links: http://<sub>.localhost:<port>)."""
    with run_relay() as process:
        yield process


@dataclass
class SharedApp:
    """The test app launched with ``share=True`` through our relay."""

    demo: Any
    probe: Probe
    local_url: str
    share_url: str
    output: str
    """What ``launch()`` printed."""

    @property
    def host(self) -> str:
        return urlsplit(self.share_url).netloc


def kill_links(gr: ModuleType) -> None:
    """Close every link made in this process, as Gradio does on Ctrl-C."""
    for tunnel in list(gr.tunneling.CURRENT_TUNNELS):
        tunnel.kill()
    gr.tunneling.CURRENT_TUNNELS.clear()


@contextlib.contextmanager
def launched(gr: ModuleType, demo: Any, **launch_args: Any) -> Iterator[tuple[str, str, str]]:
    """``demo.launch(share=True, prevent_thread_lock=True)``; yields (local, share, printed).

    The share URL is None when Gradio could not make a link. Closes the app and its
    links afterwards, whatever happened.
    """
    printed = io.StringIO()
    options = {"quiet": True, **launch_args}  # quiet=False: all that Gradio prints
    try:
        with contextlib.redirect_stdout(printed):
            _, local_url, share_url = demo.launch(
                share=True, prevent_thread_lock=True, server_port=free_port(), **options
            )
        yield local_url, share_url, printed.getvalue()
    finally:
        with contextlib.redirect_stdout(io.StringIO()):
            demo.close()
            kill_links(gr)


@pytest.fixture(scope="module")
def shared_app(gr: ModuleType, relay: RelayProcess) -> Iterator[SharedApp]:
    """One launch for the module: ``install(relay)`` then ``launch(share=True)``."""
    from tunnel_client import gradio as tunnel_gradio

    tunnel_gradio.install(relay=relay.url)
    probe = Probe()
    try:
        demo = build_demo(gr, probe)
        with launched(gr, demo) as (local_url, share_url, output):
            assert share_url is not None, output
            yield SharedApp(demo, probe, local_url, share_url, output)
    finally:
        tunnel_gradio.uninstall()


def greet_in_browser(page: Page, name: str) -> str:
    """Wait until the app's components are mounted, greet ``name``, return the greeting."""
    # Gradio mounts components progressively: wait for all three we use.
    page.wait_for(
        "['#name textarea', '#submit', '#greeting textarea']"
        ".every(s => document.querySelector(s) !== null)",
        timeout=60,
    )
    page.type_into("#name textarea", name)
    page.click("#submit")
    return str(
        page.wait_for(
            "(() => { const t = document.querySelector('#greeting textarea');"
            " return t && t.value; })()",
            timeout=30,
        )
    )
