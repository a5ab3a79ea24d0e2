"""How long ``demo.launch(share=True)`` takes until the link answers, through our relay.

    python bench/gradio_launch.py            # 7 launches of each kind, medians
    python bench/gradio_launch.py --runs 3

Starts a ``tunnel-relay`` on 127.0.0.1, calls ``tunnel_client.gradio.install()``, then
for each run builds a small Blocks app and measures, in this process:

- ``launch(share=False)``: Gradio's own start (the baseline);
- ``launch(share=True)``: the same plus our link, and how much of it ``setup_tunnel``
  (connect, HELLO/WELCOME) took;
- launch to the first ``200`` for ``GET /`` through the link (sent to the relay's port
  with the link's Host header, so no DNS is involved);
- the frpc path: from starting the program ``tunnel gradio install`` writes (with
  Gradio's own arguments) to its ``start proxy success`` line, which is what stock
  Gradio waits for.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from tests.processes import fetch, run_relay  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _app(gr: Any) -> Any:
    with gr.Blocks() as demo:
        box = gr.Textbox()
        box.submit(lambda text: text[::-1], box, box)
    return demo


def _ms(values: list[float]) -> str:
    return (
        f"median {statistics.median(values) * 1000:7.1f} ms  "
        f"(min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f}, n={len(values)})"
    )


def _frpc_path_runs(relay_url: str, runs: int) -> list[float]:
    from tunnel_client import frpc_shim

    launcher = frpc_shim.install(Path(tempfile.mkdtemp(prefix="st-bench-frpc-")) / "frpc")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNNEL_")}
    env["TUNNEL_RELAY"] = relay_url
    argv = [str(launcher), "http", "-n", "x", "-l", str(_free_port()), "-i", "127.0.0.1"]
    times = []
    for _ in range(runs):
        begin = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        times.append(time.perf_counter() - begin)
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
        if "start proxy success" not in line:
            raise SystemExit(f"the frpc program said {line!r}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs

    started = time.perf_counter()
    import gradio as gr

    import_s = time.perf_counter() - started
    from tunnel_client import gradio as tunnel_gradio

    plain: list[float] = []
    shared: list[float] = []
    tunnel: list[float] = []
    answered: list[float] = []
    with run_relay() as relay:
        tunnel_gradio.install(relay=relay.url)
        setup = gr.networking.setup_tunnel

        def timed_setup(**kwargs: Any) -> str:
            begin = time.perf_counter()
            try:
                return str(setup(**kwargs))
            finally:
                tunnel.append(time.perf_counter() - begin)

        gr.networking.setup_tunnel = timed_setup
        quiet = io.StringIO()
        for _ in range(runs):
            for share in (False, True):
                demo = _app(gr)
                with contextlib.redirect_stdout(quiet):
                    begin = time.perf_counter()
                    _, _, url = demo.launch(
                        share=share, prevent_thread_lock=True, quiet=True, server_port=_free_port()
                    )
                    launched = time.perf_counter()
                    if share:
                        host = urlsplit(url).netloc
                        deadline = begin + 60
                        while fetch(relay.port, host, "/").status != 200:
                            # In practice never taken: the link answers once launch returns.
                            if time.perf_counter() > deadline:
                                raise SystemExit(f"{url} did not answer within 60 s")
                        answered.append(time.perf_counter() - begin)
                        shared.append(launched - begin)
                    else:
                        plain.append(launched - begin)
                    demo.close()
                    for live in tunnel_gradio.live_tunnels():
                        live.kill()
        gr.networking.setup_tunnel = setup
        tunnel_gradio.uninstall()
        frpc = _frpc_path_runs(relay.url, runs)

    print(f"import gradio:                      {import_s * 1000:7.1f} ms (once)")
    print(f"launch(share=False):                {_ms(plain)}")
    print(f"launch(share=True):                 {_ms(shared)}")
    print(f"  of which setup_tunnel (our link): {_ms(tunnel)}")
    print(f"launch(share=True) -> link answers: {_ms(answered)}")
    print(f"frpc path: program start -> link:   {_ms(frpc)}")


if __name__ == "__main__":
    main()
