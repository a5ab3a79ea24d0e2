"""When no link can be made, Gradio prints our reason and the app goes on locally."""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest

from tests.gradio.conftest import GRADIO_WARNINGS, launched
from tests.processes import run_relay

pytestmark = [pytest.mark.integration, pytest.mark.gradio, GRADIO_WARNINGS]


def _plain_app(gr: ModuleType) -> object:
    with gr.Blocks() as demo:
        box = gr.Textbox()
        box.submit(lambda text: text.upper(), box, box, api_name="upper")
    return demo


def _answers_locally(local_url: str) -> bool:
    with urllib.request.urlopen(local_url + "config", timeout=10) as reply:
        return bool(reply.status == 200)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.timeout(60)
def test_relay_down_prints_our_reason_and_the_app_runs_locally(gr: ModuleType) -> None:
    from tunnel_client import gradio as tunnel_gradio

    port = _closed_port()
    tunnel_gradio.install(relay=f"ws://127.0.0.1:{port}")
    try:
        with launched(gr, _plain_app(gr)) as (local_url, share_url, printed):
            assert share_url is None
            assert (
                "Could not create share link. sharetunnel: cannot reach the relay at "
                f"ws://127.0.0.1:{port}/_tunnel: connection refused"
            ) in printed
            assert "frpc" not in printed  # not Gradio's misleading "Missing file" text
            assert _answers_locally(local_url)
    finally:
        tunnel_gradio.uninstall()


@pytest.mark.timeout(60)
def test_relay_refusing_the_token_prints_why(gr: ModuleType, tmp_path: Path) -> None:
    from tunnel_client import gradio as tunnel_gradio

    tokens = tmp_path / "tokens"
    tokens.write_text("the-right-token\n")
    with run_relay("--tokens-file", str(tokens)) as relay:
        tunnel_gradio.install(relay=relay.url, token="a-wrong-token")
        try:
            with launched(gr, _plain_app(gr)) as (local_url, share_url, printed):
                assert share_url is None
                assert re.search(
                    r"Could not create share link\. sharetunnel: the relay at \S+ refused the "
                    r"link: the token was not accepted by this relay",
                    printed,
                ), printed
                assert _answers_locally(local_url)
        finally:
            tunnel_gradio.uninstall()


def test_uninstall_gives_share_back_to_gradio(gr: ModuleType) -> None:
    from tunnel_client import gradio as tunnel_gradio

    originals = (gr.networking.setup_tunnel, gr.blocks.Blocks.launch)
    tunnel_gradio.install(relay="ws://127.0.0.1:9")
    assert tunnel_gradio.installed()
    assert gr.networking.setup_tunnel is not originals[0]
    assert "TemplateResponse" in vars(gr.routes.templates)
    tunnel_gradio.uninstall()
    assert not tunnel_gradio.installed()
    assert (gr.networking.setup_tunnel, gr.blocks.Blocks.launch) == originals
    assert "TemplateResponse" not in vars(gr.routes.templates)


def test_a_bad_relay_url_fails_at_install(gr: ModuleType) -> None:
    from tunnel_client import gradio as tunnel_gradio
    from tunnel_client.protocol.errors import ConfigError

    with pytest.raises(ConfigError, match="must start with ws://"):
        tunnel_gradio.install(relay="ftp://relay.example")
    assert not tunnel_gradio.installed()
