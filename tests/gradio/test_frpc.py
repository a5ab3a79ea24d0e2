"""``tunnel gradio install``: stock Gradio runs our program as its frpc binary."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from tests.gradio.conftest import GRADIO_WARNINGS, PUBLIC_URL, free_port
from tests.processes import ROOT, RelayProcess, close_pipes, fetch, stop_process
from tunnel_client import cli, frpc_shim

pytestmark = [pytest.mark.integration, pytest.mark.gradio, GRADIO_WARNINGS]

# What Gradio 6 runs (gradio/tunneling.py, Tunnel._start_tunnel), with its real flags.
GRADIO_ARGV = [
    "http",
    "-n",
    "gradio-share-token",
    "-l",
    "7860",
    "-i",
    "0.0.0.0",
    "--uc",
    "--sd",
    "random",
    "--ue",
    "--server_addr",
    "relay.example:7000",
    "--disable_log_color",
]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNNEL_", "GRADIO_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        GRADIO_ANALYTICS_ENABLED="False",
        XDG_CONFIG_HOME=str(Path(extra["HF_HOME"]) / "config"),
    )
    env.update(extra)
    return env


def _invoke(*args: str, hf_home: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli.main, ["gradio", *args], env={"HF_HOME": str(hf_home)})
    return result.exit_code, result.output


class App:
    """A stock Gradio app process; its stdout lines are read by a thread."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.gradio.frpc_app", str(free_port())],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"the app exited ({self.proc.wait()}): {self.seen}")
            self.seen.append(line.rstrip("\n"))
            if found := pattern.search(line):
                return found
            if "Could not create share link" in line:
                raise RuntimeError(f"Gradio made no link: {self.seen}")
        raise TimeoutError(f"no {pattern.pattern!r} within {timeout} s: {self.seen}")

    def stop(self, sig: int) -> int:
        """Stop the app; everything it printed ends up in :attr:`seen`."""
        code = stop_process(self.proc, sig, timeout=30)
        self._reader.join(5)
        close_pipes(self.proc)
        while not self.lines.empty():
            line = self.lines.get_nowait()
            if line is not None:
                self.seen.append(line.rstrip("\n"))
        return code


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[Path]:
    hf_home = tmp_path / "hf"
    code, output = _invoke("install", hf_home=hf_home)
    assert code == 0, output
    path = frpc_shim.frpc_path({"HF_HOME": str(hf_home)})
    assert f"installed {path}" in output
    yield hf_home
    _invoke("uninstall", hf_home=hf_home)


@pytest.fixture
def stock_app(installed: Path, relay: RelayProcess) -> Iterator[tuple[App, str]]:
    """The app with TUNNEL_RELAY, and Gradio told the relay's address (no API lookup)."""
    env = _env(
        HF_HOME=str(installed),
        TUNNEL_RELAY=relay.url,
        GRADIO_SHARE_SERVER_ADDRESS=f"127.0.0.1:{relay.port}",
    )
    app = App(env)
    try:
        found = app.wait_for(PUBLIC_URL)
        yield app, urlsplit(found.group(1)).netloc
    finally:
        app.stop(signal.SIGKILL)


def _wait_gone(relay: RelayProcess, host: str, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while True:
        status = fetch(relay.port, host, "/config").status
        if status == 404 or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_the_path_is_the_one_gradio_computed(gr: ModuleType) -> None:
    assert str(frpc_shim.frpc_path()) == gr.tunneling.BINARY_PATH


def test_install_writes_a_launcher_at_gradios_frpc_path(installed: Path) -> None:
    path = frpc_shim.frpc_path({"HF_HOME": str(installed)})
    assert path.parent == installed / "gradio" / "frpc"
    assert re.fullmatch(r"frpc_[a-z]+_[a-z0-9_]+_v\d+(\.\d+)*", path.name)
    assert frpc_shim.is_ours(path)
    assert os.access(path, os.X_OK)
    assert len(path.read_text().splitlines()) == 3


def test_uninstall_removes_only_our_file(tmp_path: Path) -> None:
    hf_home = tmp_path / "hf"
    path = frpc_shim.frpc_path({"HF_HOME": str(hf_home)})
    path.parent.mkdir(parents=True)
    real = b"\x7fELF\x02\x01\x01 a real frpc binary"
    path.write_bytes(real)

    code, output = _invoke("uninstall", hf_home=hf_home)
    assert code == 1 and "not ours" in output
    code, output = _invoke("install", hf_home=hf_home)
    assert code == 1 and "--force" in output
    assert path.read_bytes() == real

    code, _ = _invoke("install", "--force", hf_home=hf_home)
    assert code == 0 and frpc_shim.is_ours(path)
    code, output = _invoke("uninstall", hf_home=hf_home)
    assert code == 0 and f"removed {path}" in output
    assert path.read_bytes() == real  # the binary we moved aside is back

    path.unlink()
    code, output = _invoke("uninstall", hf_home=hf_home)
    assert code == 0 and "nothing to remove" in output


def test_gradios_command_line_is_understood() -> None:
    args = frpc_shim.parse_frpc_args(
        [*GRADIO_ARGV, "--tls_enable", "--tls_trusted_ca_file", ".gradio/certificate.pem"]
    )
    assert args == frpc_shim.FrpcArgs(
        local_port=7860,
        local_host="0.0.0.0",
        server_addr="relay.example:7000",
        tls_enable=True,
        tls_ca_file=".gradio/certificate.pem",
    )


@pytest.mark.timeout(60)
def test_the_launcher_reports_a_dead_relay_the_way_gradio_reads_it(
    installed: Path, tmp_path: Path
) -> None:
    path = frpc_shim.frpc_path({"HF_HOME": str(installed)})
    env = _env(HF_HOME=str(installed), TUNNEL_RELAY="ws://127.0.0.1:9")
    done = subprocess.run(
        [str(path), *GRADIO_ARGV], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    # Gradio fails at once on this line (and echoes it), instead of waiting 30 s.
    assert done.stdout.startswith("login to server failed: sharetunnel")
    assert "cannot reach the relay at ws://127.0.0.1:9/_tunnel" in done.stdout


@pytest.mark.timeout(120)
def test_stock_gradio_share_gets_our_link(stock_app: tuple[App, str], relay: RelayProcess) -> None:
    from gradio_client import Client

    app, host = stock_app
    assert re.fullmatch(rf"[a-z0-9]+\.localhost:{relay.port}", host)
    reply = fetch(relay.port, host, "/config")
    assert reply.status == 200
    assert json.loads(reply.body)["root"] == f"http://{host}"
    # Gradio printed https:// (only the env var named the server, so it assumes TLS);
    # this relay serves plain http on loopback.
    visitor = Client(f"http://{host}", verbose=False, analytics_enabled=False)
    try:
        assert visitor.predict("Cy", api_name="/greet") == "Hello, Cy!"
    finally:
        visitor.close()
    # Ctrl-C: Gradio SIGTERMs its tunnels; our program frees the link on the way out.
    app.stop(signal.SIGINT)
    assert any(line.startswith("Killing tunnel") for line in app.seen), app.seen
    assert _wait_gone(relay, host) == 404


@pytest.mark.timeout(120)
def test_a_killed_app_does_not_leave_the_link_behind(
    stock_app: tuple[App, str], relay: RelayProcess
) -> None:
    app, host = stock_app
    assert fetch(relay.port, host, "/config").status == 200
    app.stop(signal.SIGKILL)  # no atexit, no SIGTERM to the tunnel: it must notice alone
    assert _wait_gone(relay, host) == 404
