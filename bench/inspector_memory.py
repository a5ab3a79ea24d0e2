"""The client's memory with the request inspector on, over many requests.

    python bench/inspector_memory.py                    # 100,000 requests, inspector on and off
    python bench/inspector_memory.py --requests 20000 --only on

Starts the test origin, a relay and ``tunnel --json`` (once with the inspector, once with
``--no-inspect``), sends a mix of requests through the link from 32 connections (19 in
20 small pages, then alternately a 2 KiB JSON POST and a 200 kB download, both bigger
or smaller than the 64 KiB body limit), and prints the client's RSS (VmRSS) every tenth
of the run. With the inspector on it must level off once 500 requests are kept: the
inspector holds at most 500 entries and 32 MiB of bodies, whatever the traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from tests.processes import (  # noqa: E402
    TunnelProcess,
    fetch,
    rss_bytes,
    run_origin,
    run_relay,
    run_tunnel,
)

MIB = 1 << 20
POST_BODY = json.dumps({"prompt": "x" * 2000, "steps": 20}).encode()


async def load(port: int, host: str, total: int, connections: int, tunnel: TunnelProcess) -> None:
    """``total`` requests through the link; RSS printed at every tenth."""
    sent = 0
    checkpoints = {total * k // 10 for k in range(1, 11)}
    started = time.perf_counter()
    base = f"http://127.0.0.1:{port}"
    headers = {"Host": host}

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal sent
        while sent < total:
            sent += 1
            n = sent
            if n % 40 == 0:
                request = http.get(f"{base}/bytes/200000", headers=headers)
            elif n % 40 == 20:
                request = http.post(f"{base}/echo?i={n}", data=POST_BODY, headers=headers)
            else:
                request = http.get(f"{base}/?i={n}", headers=headers)
            async with request as response:
                await response.read()
                assert response.status == 200, response.status
            if n in checkpoints:
                rate = n / (time.perf_counter() - started)
                rss = rss_bytes(tunnel.proc.pid) / MIB
                print(f"  {n:>7} requests: client RSS {rss:6.1f} MiB  ({rate:,.0f} req/s)")

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(worker(http) for _ in range(connections)))


def phase(name: str, args: argparse.Namespace, *client_args: str) -> dict[str, float]:
    with (
        run_origin() as origin,
        run_relay() as relay,
        run_tunnel(origin.port, "--quiet", *client_args, relay=relay) as tunnel,
    ):
        fetch(relay.port, tunnel.host, "/")
        idle = rss_bytes(tunnel.proc.pid) / MIB
        print(f"{name}: client RSS idle {idle:.1f} MiB")
        asyncio.run(load(relay.port, tunnel.host, args.requests, args.connections, tunnel))
        after = rss_bytes(tunnel.proc.pid) / MIB
        ready = tunnel.events[0]
        if "inspect" in ready:
            port = int(ready["inspect"].rsplit(":", 1)[1])
            listing = json.loads(fetch(port, f"127.0.0.1:{port}", "/api/requests").body)
            kept = listing["requests"]
            print(f"{name}: the inspector lists {len(kept)} requests (ids {kept[-1]['id']}..)")
        print(f"{name}: client RSS after {args.requests:,} requests {after:.1f} MiB")
        return {"idle_mib": idle, "after_mib": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--only", choices=("on", "off"), default=None)
    args = parser.parse_args()
    results = {}
    if args.only in (None, "on"):
        results["inspector on"] = phase("inspector on", args)
    if args.only in (None, "off"):
        results["inspector off"] = phase("--no-inspect", args, "--no-inspect")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
