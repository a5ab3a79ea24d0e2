"""An https relay: the printed link keeps https (and an http relay's keeps http)."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest

from tests.gradio.app import Probe, build_demo
from tests.gradio.conftest import GRADIO_WARNINGS, launched
from tests.processes import run_relay

pytestmark = [pytest.mark.integration, pytest.mark.gradio, GRADIO_WARNINGS]


@pytest.mark.timeout(90)
def test_an_https_relay_gives_an_https_link(gr: ModuleType, tmp_path: Path) -> None:
    from gradio_client import Client

    from relay_server.tls import make_self_signed
    from tunnel_client import gradio as tunnel_gradio

    cert, key = make_self_signed("localhost", tmp_path)
    with run_relay("--tls-cert", str(cert), "--tls-key", str(key)) as relay:
        assert relay.url.startswith("wss://")
        tunnel_gradio.install(relay=relay.url, ca_file=cert)
        try:
            demo = build_demo(gr, Probe())
            with launched(gr, demo) as (_, share_url, printed):
                assert re.fullmatch(rf"https://[a-z0-9]+\.localhost:{relay.port}", share_url)
                assert f"Running on public URL: {share_url}" in printed
                assert demo.share_server_protocol == "https"
                visitor = Client(
                    share_url, verbose=False, analytics_enabled=False, ssl_verify=False
                )
                try:
                    assert visitor.predict("Bo", api_name="/greet") == "Hello, Bo!"
                finally:
                    visitor.close()
        finally:
            tunnel_gradio.uninstall()
