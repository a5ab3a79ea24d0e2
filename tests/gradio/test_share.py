"""``tunnel_client.gradio.install()`` + ``launch(share=True)`` through a real relay.

One app (tests/gradio/app.py) is launched per module; ``gradio_client.Client`` talks to
it through the link exactly as a visitor would (``*.localhost`` resolves to loopback).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.gradio.conftest import GRADIO_WARNINGS, SharedApp, launched
from tests.processes import RelayProcess, fetch

pytestmark = [pytest.mark.integration, pytest.mark.gradio, GRADIO_WARNINGS]

PAYLOAD_BYTES = 3 * 1024 * 1024  # more than the stream windows: flow control takes part


def wait_status(relay: RelayProcess, host: str, status: int, timeout: float = 10) -> int:
    """Poll the link until it answers ``status`` (the relay drops a link asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        got = fetch(relay.port, host, "/config").status
        if got == status or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


@pytest.fixture
def client(shared_app: SharedApp) -> Iterator[Any]:
    from gradio_client import Client

    visitor = Client(shared_app.share_url, verbose=False, analytics_enabled=False)
    try:
        yield visitor
    finally:
        visitor.close()


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    data = os.urandom(PAYLOAD_BYTES)
    path = tmp_path_factory.mktemp("upload") / "payload.bin"
    path.write_bytes(data)
    return path, data


def test_launch_share_returns_our_link(
    gr: ModuleType, shared_app: SharedApp, relay: RelayProcess
) -> None:
    assert re.fullmatch(rf"http://[a-z0-9]+\.localhost:{relay.port}", shared_app.share_url)
    assert shared_app.demo.share_url == shared_app.share_url
    printed = shared_app.output
    assert f"* Running on public URL: {shared_app.share_url}" in printed
    assert re.search(r"expires \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in 7[12]h", printed), printed
    # Registered where Gradio's Ctrl-C handler looks.
    assert [t for t in gr.tunneling.CURRENT_TUNNELS if t.url == shared_app.share_url]
    # The relay serves it, and Gradio builds its root URL from the link.
    reply = fetch(relay.port, shared_app.host, "/config")
    assert reply.status == 200
    assert json.loads(reply.body)["root"] == shared_app.share_url


def test_predict_and_session_state(client: Any) -> None:
    assert client.predict("Ada", api_name="/greet") == "Hello, Ada!"
    assert client.predict(api_name="/tally") == 1
    assert client.predict(api_name="/tally") == 2  # the gr.State lives in this session


@pytest.mark.timeout(90)
def test_streamed_outputs_arrive_one_by_one_in_order(client: Any, shared_app: SharedApp) -> None:
    # The app makes step i+1 only after we acknowledged step i, so every intermediate
    # output must have crossed the relay on its own, before the job ended.
    while not shared_app.probe.acks.empty():
        shared_app.probe.acks.get_nowait()
    job = client.submit(5, api_name="/count")
    seen = []
    for output in job:
        seen.append(output)
        shared_app.probe.acks.put(output)
    assert seen == [f"step {i}" for i in range(5)]
    assert job.result() == "step 4"


@pytest.mark.timeout(90)
def test_upload_and_download_bytes_match(client: Any, payload: tuple[Path, bytes]) -> None:
    from gradio_client import handle_file

    path, data = payload
    result = client.predict(handle_file(str(path)), api_name="/echo_file")
    downloaded = Path(result)
    assert downloaded.name == "echo-payload.bin"
    assert downloaded.read_bytes() == data


@pytest.mark.timeout(90)
def test_range_request_on_an_output_file(
    shared_app: SharedApp, relay: RelayProcess, payload: tuple[Path, bytes]
) -> None:
    from gradio_client import Client, handle_file

    path, data = payload
    visitor = Client(
        shared_app.share_url, verbose=False, analytics_enabled=False, download_files=False
    )
    try:
        output = visitor.predict(handle_file(str(path)), api_name="/echo_file")
    finally:
        visitor.close()
    url = output["url"]
    # Gradio built the file's URL from the link (X-Forwarded-Host), not its local address.
    assert url.startswith(shared_app.share_url + "/gradio_api/file=")
    target = urlsplit(url).path
    middle = fetch(relay.port, shared_app.host, target, headers={"Range": "bytes=1000-1999"})
    assert middle.status == 206
    assert middle.header("Content-Range") == f"bytes 1000-1999/{len(data)}"
    assert middle.body == data[1000:2000]
    tail = fetch(relay.port, shared_app.host, target, headers={"Range": "bytes=-4096"})
    assert tail.status == 206
    assert tail.body == data[-4096:]


@pytest.mark.timeout(90)
def test_closing_a_visitor_session_fires_unload(shared_app: SharedApp, client: Any) -> None:
    assert client.predict(api_name="/tally") == 1
    session = client.session_hash
    assert session not in shared_app.probe.unloaded
    # close() ends the client's heartbeat stream; only if that disconnect crosses the
    # relay and the tunnel to the app does Gradio run the unload handler.
    client.close()
    assert shared_app.probe.wait_unloaded(session, timeout=30), shared_app.probe.unloaded


@pytest.mark.timeout(90)
def test_kill_closes_the_link(gr: ModuleType, relay: RelayProcess) -> None:
    from tests.gradio.app import Probe, build_demo
    from tunnel_client import gradio as tunnel_gradio

    tunnel_gradio.install(relay=relay.url)
    try:
        with launched(gr, build_demo(gr, Probe())) as (_, share_url, _output):
            host = urlsplit(share_url).netloc
            assert fetch(relay.port, host, "/config").status == 200
            (tunnel,) = [t for t in gr.tunneling.CURRENT_TUNNELS if t.url == share_url]
            tunnel.kill()  # what Gradio does on Ctrl-C
            assert not tunnel.alive
            assert wait_status(relay, host, 404) == 404
    finally:
        tunnel_gradio.uninstall()


@pytest.mark.timeout(90)
def test_one_expiry_line_ours_not_gradios(gr: ModuleType, relay: RelayProcess) -> None:
    from tests.gradio.app import Probe, build_demo
    from tunnel_client import gradio as tunnel_gradio

    tunnel_gradio.install(relay=relay.url)
    try:
        # Not quiet: Gradio prints everything it would print to a user.
        with launched(gr, build_demo(gr, Probe()), quiet=False) as (_, share_url, printed):
            assert share_url is not None, printed
    finally:
        tunnel_gradio.uninstall()
    assert f"* Running on public URL: {share_url}" in printed, printed
    expiry = [line for line in printed.splitlines() if re.search("expire|temporary|week", line)]
    assert len(expiry) == 1, printed
    assert expiry[0].startswith("* Share link by sharetunnel; it expires "), expiry
    # Uninstalled, Gradio's own print is back (ours was only ever a shadow of it).
    assert "print" not in vars(gr.blocks)
