"""Instructions the client spends per small request, counted by valgrind (callgrind).

    python bench/client_instructions.py                      # inspector on vs --no-inspect
    python bench/client_instructions.py --client-arg=--stream-window=2MiB --variants off

On a shared machine request rates move by 25% between runs, which hides a cost of a few
percent; an instruction count does not move. Each variant runs the ``tunnel`` client
under callgrind twice, with ``--small`` and ``--large`` requests (``GET /``, 16 at a
time, through a real relay), and reports the difference divided by the difference in
requests, so that start-up and shutdown cancel out. Under valgrind the client runs about
50 times slower: the default run takes a few minutes. Needs valgrind (Debian: apt-get
install valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from tests.processes import TunnelProcess, _env, run_origin, run_relay  # noqa: E402

VARIANTS = {"on": [], "off": ["--no-inspect"]}


async def load(port: int, host: str, total: int, connections: int = 16) -> None:
    sent = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as http:

        async def worker() -> None:
            nonlocal sent
            while sent < total:
                sent += 1
                async with http.get(f"http://127.0.0.1:{port}/", headers={"Host": host}) as r:
                    await r.read()
                    assert r.status == 200, r.status

        await asyncio.gather(*(worker() for _ in range(connections)))


def count(origin_port: int, relay_url: str, relay_port: int, args: list[str], n: int) -> int:
    """Instructions of one client run that serves ``n`` requests."""
    with tempfile.TemporaryDirectory(prefix="st-callgrind-") as scratch:
        out = Path(scratch) / "callgrind.out"
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
        argv += ["-m", "tunnel_client", str(origin_port), "--json", "--quiet"]
        argv += ["--relay", relay_url, *args]
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        tunnel = TunnelProcess(proc)
        tunnel._threads = [threading.Thread(target=tunnel._read, daemon=True)]
        tunnel._threads[0].start()
        try:
            tunnel.wait_event("ready", timeout=600)
            asyncio.run(load(relay_port, tunnel.host, n))
        finally:
            tunnel.stop(signal.SIGINT)
        for line in out.read_text().splitlines():
            if line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no summary")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=1800)
    parser.add_argument("--variants", default="on,off", help="comma-separated: on, off")
    parser.add_argument("--client-arg", action="append", default=[], dest="client_args")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("client_instructions: needs valgrind (apt-get install valgrind)")
    variants = args.variants.split(",")
    per_request = {}
    with run_origin() as origin, run_relay() as relay:
        for variant in variants:
            extra = [*VARIANTS[variant], *args.client_args]
            small = count(origin.port, relay.url, relay.port, extra, args.small)
            large = count(origin.port, relay.url, relay.port, extra, args.large)
            per_request[variant] = (large - small) / (args.large - args.small)
            print(f"{variant}: {per_request[variant]:,.0f} instructions per request", flush=True)
    if "on" in per_request and "off" in per_request:
        ratio = per_request["on"] / per_request["off"]
        print(f"inspector on / --no-inspect: {ratio:.3f}")


if __name__ == "__main__":
    main()
