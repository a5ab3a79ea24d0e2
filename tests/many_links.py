"""Hold many links in one process (the Python API), for scale tests and benches.

``python -m tests.many_links --relay ws://... --port 8000 --count 100`` prints one JSON
line per event: ``{"event": "ready", "url": ...}`` for each link, then
``{"event": "reconnected", "url": ...}`` whenever one comes back after a drop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys

from tunnel_client.api import AsyncShare, build_config
from tunnel_client.client import ClientEvent, Ready, Reconnected


def _emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _on_event(event: ClientEvent) -> None:
    if isinstance(event, Ready):
        _emit("ready", url=event.link.url)
    elif isinstance(event, Reconnected):
        _emit("reconnected", url=event.link.url)


async def main(relay: str, port: int, count: int) -> None:
    config = build_config(port, relay=relay, use_environment=False)
    shares = [AsyncShare(config, _on_event) for _ in range(count)]
    # Open in small batches so the relay sees a realistic arrival rate.
    for start in range(0, count, 10):
        await asyncio.gather(*(s.start() for s in shares[start : start + 10]))
    _emit("all-ready", count=count)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--relay", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.relay, args.port, args.count))
