"""Benchmark a cluster: the same link asked on its own node and across the hop, and
``--workers N`` against one relay process, in one run.

    python bench/cluster.py            # 3 runs per case (about 2 minutes)
    python bench/cluster.py --quick    # one short run of each (about 40 s)

Starts a mosquitto, the test origin, two relay nodes of one cluster and a ``tunnel``
on node 1, then measures, alternating so both sides see the same machine noise:

- **same node / cross node**: ``wrk`` on the link through node 1 (which holds it) and
  through node 2 (which forwards every request over the hop to node 1), at 1 and 64
  connections, and a 100 MiB download each way;
- **workers**: one relay process (a one-node cluster) against ``--workers N`` on one
  port (default: one per core), each with its own tunnel, ``wrk`` at 64 connections.
  With one link, (N-1)/N of the requests reach a worker that does not hold it and hop.

Needs mosquitto and wrk (``apt-get install -y mosquitto wrk``). JSON goes to
bench/results/cluster-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import secrets
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from run import MIB, RESULTS, Target, download, log, small_wrk, watch  # noqa: E402

from relay_server.leases import load_or_create_key  # noqa: E402
from tests.cluster.conftest import Broker, free_port, wait_for_mesh  # noqa: E402
from tests.processes import (  # noqa: E402
    RelayProcess,
    fetch,
    run_origin,
    scratch_dir,
    start_relay,
    start_tunnel,
)

CPU_KEYS = ("node1", "node2", "relay", "client", "origin")


@contextlib.contextmanager
def broker() -> Iterator[Broker]:
    running = Broker(free_port(), scratch_dir("mosquitto-"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


def cluster_args(broker: Broker, directory: Path, node_id: str) -> list[str]:
    return [
        "--cluster",
        broker.url,
        "--cluster-name",
        "bench",
        "--cluster-secret-file",
        str(directory / "cluster-secret"),
        "--lease-key",
        str(directory / "lease-key.pem"),
        "--node-id",
        node_id,
        "--public-port",
        "8080",
    ]


def worker_pids(parent: int) -> list[int]:
    """The relay workers among a supervisor's children (not multiprocessing's helpers)."""
    found = []
    with open(f"/proc/{parent}/task/{parent}/children") as children:
        for pid in map(int, children.read().split()):
            with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/cmdline", "rb") as cmd:
                if b"resource_tracker" not in cmd.read():
                    found.append(pid)
    return found


def until_200(port: int, host: str) -> None:
    deadline = time.monotonic() + 30
    while fetch(port, host, "/").status != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: the link never answered on port {port}")
        time.sleep(0.05)


def measure(
    runs: dict[str, list[dict[str, Any]]],
    name: str,
    pids: dict[str, int],
    job: Callable[[], dict[str, Any]],
) -> None:
    with watch(pids) as usage:
        result = job()
    if result.get("requests"):
        result["cpu_us_per_request"] = {
            k: v / result["requests"] * 1e6 for k, v in usage.cpu_s.items()
        }
    result["rss_peak_mib"] = {k: v / MIB for k, v in usage.rss_peak.items()}
    runs.setdefault(name, []).append(result)
    shown = ", ".join(
        f"{k}={result[k]:.4g}" for k in ("rps", "p50_ms", "p99_ms", "mbps") if k in result
    )
    log(f"  {name}: {shown}")


def med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def cpu(runs: list[dict[str, Any]]) -> str:
    per = {
        k: statistics.median(r["cpu_us_per_request"][k] for r in runs)
        for k in runs[0]["cpu_us_per_request"]
    }
    return ", ".join(f"{k} {v:.0f}" for k, v in per.items())


def hop_bench(
    args: argparse.Namespace, mq: Broker, origin_port: int, origin_pid: int
) -> dict[str, list[dict[str, Any]]]:
    directory = scratch_dir("bench-cluster-")
    (directory / "cluster-secret").write_text(secrets.token_hex(32))
    load_or_create_key(directory / "lease-key.pem")
    nodes: list[RelayProcess] = []
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        for i in (1, 2):
            nodes.append(start_relay(*cluster_args(mq, directory, f"node-{i}")))
        wait_for_mesh([n.port for n in nodes])
        tunnel = start_tunnel(origin_port, "--quiet", relay=nodes[0])
        try:
            for node in nodes:
                until_200(node.port, tunnel.host)
            pids = {"node1": nodes[0].proc.pid, "node2": nodes[1].proc.pid}
            pids |= {"client": tunnel.proc.pid, "origin": origin_pid}
            targets = [
                Target("same-node", nodes[0].port, tunnel.host),
                Target("cross-node", nodes[1].port, tunnel.host),
            ]
            for target in targets:  # warm up
                small_wrk(target, 8, 1)
            for _ in range(args.repeat):
                for conns in (1, 64):
                    for target in targets:
                        measure(
                            runs,
                            f"{target.name} c{conns}",
                            pids,
                            lambda t=target, c=conns: small_wrk(t, c, args.duration),  # type: ignore[misc]
                        )
                for target in targets:
                    measure(
                        runs,
                        f"{target.name} down",
                        pids,
                        lambda t=target: download(t, args.size_mib * MIB),  # type: ignore[misc]
                    )
        finally:
            tunnel.stop()
    finally:
        for node in nodes:
            node.stderr_text()
    return runs


def workers_bench(
    args: argparse.Namespace, mq: Broker, origin_port: int, origin_pid: int
) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {}
    count = args.workers or os.cpu_count() or 1
    for label, extra in (("1 process", []), (f"{count} workers", ["--workers", str(count)])):
        directory = scratch_dir("bench-workers-")
        (directory / "cluster-secret").write_text(secrets.token_hex(32))
        load_or_create_key(directory / "lease-key.pem")
        relay = start_relay(*cluster_args(mq, directory, "w"), *extra)
        try:
            tunnel = start_tunnel(origin_port, "--quiet", relay=relay)
            try:
                until_200(relay.port, tunnel.host)
                time.sleep(1)  # every worker sees the link
                target = Target(label, relay.port, tunnel.host)
                small_wrk(target, 8, 1)
                pids = {"relay": relay.proc.pid, "client": tunnel.proc.pid, "origin": origin_pid}
                for i, pid in enumerate(worker_pids(relay.proc.pid)):
                    pids[f"worker{i}"] = pid
                for _ in range(args.repeat):
                    measure(
                        runs, f"{label} c64", pids, lambda t=target: small_wrk(t, 64, args.duration)
                    )  # type: ignore[misc]
            finally:
                tunnel.stop()
        finally:
            relay.stderr_text()
    return runs


def render(runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| case | req/s | p50 ms | p99 ms | MB/s | CPU us/request |",
        "|---|---|---|---|---|---|",
    ]
    for name, results in runs.items():
        if "rps" in results[0]:
            row = f"| {name} | {med(results, 'rps'):.0f} | {med(results, 'p50_ms'):.2f} | "
            row += f"{med(results, 'p99_ms'):.2f} | | {cpu(results)} |"
        else:
            row = f"| {name} | | | | {med(results, 'mbps'):.0f} | |"
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--workers", type=int, default=0, help="0: one per core")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    for tool in ("wrk", "mosquitto"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"bench: {tool} is not installed (apt-get install -y {tool})")
    load_before = os.getloadavg()
    started = time.perf_counter()
    with broker() as mq, run_origin() as origin:
        log("hop: same node vs cross node")
        hop = hop_bench(args, mq, origin.port, origin.proc.pid)
        log("workers: one process vs several on one port")
        workers = workers_bench(args, mq, origin.port, origin.proc.pid)
    print(render({**hop, **workers}))
    print(
        f"\n{args.repeat} runs per case (medians), {args.duration:g} s per wrk run (wrk -t1); "
        f"load average before/after {load_before[0]:.2f}/{os.getloadavg()[0]:.2f} on "
        f"{os.cpu_count()} cores; wall time {time.perf_counter() - started:.0f} s"
    )
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"cluster-{stamp}.json"
    out.write_text(json.dumps({"args": vars(args), "hop": hop, "workers": workers}, indent=1))
    print(f"results: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
