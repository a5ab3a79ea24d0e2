"""The wire protocol's own cost per request, in one process, with no I/O.

A relay multiplexer and a client one exchange what a small GET costs on the tunnel:
OPEN (with FIN), REPLY, the body and its end, each side encoding what it sends and
decoding what it gets. No socket and no event loop take part, so the figure moves far
less with the machine's load than bench/run.py's: it is the one to compare two versions
of the protocol code by (run it in each checkout, one after the other).

    python bench/mux.py                 # best of 7 rounds of 20,000 requests
    python bench/mux.py --profile       # and where the time goes (cProfile)
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunnel_client.protocol.heads import RequestHead, ResponseHead
from tunnel_client.protocol.mux import Mux, Role

# What the relay forwards for `curl https://abc.share.example/index.html`, and a small
# answer: the heads most requests have.
REQUEST = RequestHead(
    "GET",
    "/index.html",
    (
        ("Host", "abc.share.example"),
        ("User-Agent", "curl/8.5.0"),
        ("Accept", "*/*"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "abc.share.example"),
    ),
)
RESPONSE = ResponseHead(
    200,
    (
        ("Server", "uvicorn"),
        ("Date", "Tue, 08 Dec 2026 00:00:00 GMT"),
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", "13"),
    ),
)
BODY = b"Hello, world!"


def one_round(requests: int) -> float:
    """Microseconds per request through both multiplexers."""
    relay, client = Mux(Role.RELAY), Mux(Role.CLIENT)
    started = time.perf_counter()
    for _ in range(requests):
        stream_id = relay.open_stream(REQUEST, end_stream=True)
        for message in relay.data_to_send():
            client.receive_message(message)
        client.events_received()
        client.send_reply(stream_id, RESPONSE)
        client.send_data(stream_id, BODY)
        client.send_data(stream_id, b"", end_stream=True)
        for message in client.data_to_send():
            relay.receive_message(message)
        relay.events_received()
    elapsed = time.perf_counter() - started
    if relay.open_streams or client.open_streams:
        raise SystemExit("bench/mux.py: streams were left open: the exchange is not whole")
    return elapsed / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="per round (20,000)")
    parser.add_argument("--rounds", type=int, default=7, help="the best one counts (7)")
    parser.add_argument("--profile", action="store_true", help="cProfile one more round")
    args = parser.parse_args()
    if args.requests < 1 or args.rounds < 1:
        parser.error("--requests and --rounds must be at least 1")
    times = [one_round(args.requests) for _ in range(args.rounds)]
    print(
        f"both multiplexers, one small GET: {min(times):.2f} us per request "
        f"(best of {args.rounds} rounds of {args.requests:,}; worst {max(times):.2f})"
    )
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(one_round, args.requests)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
