"""Benchmark: the same origin, direct and through a real relay + client, in one run.

    python bench/run.py            # the full run (about 3 minutes)
    python bench/run.py --quick    # one short pass of everything (about 40 s)
    python bench/run.py --inspect --cases small64   # request inspector on vs --no-inspect

Starts the test origin (tests/origin.py), a ``tunnel-relay`` and a ``tunnel`` process on
127.0.0.1, then measures every case against the origin directly and through the link,
alternating the two so that both see the same machine noise, and prints medians. See
bench/README.md for what each figure means; JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from tests.processes import (  # noqa: E402
    Origin,
    RelayProcess,
    TunnelProcess,
    fetch,
    run_origin,
    run_relay,
    start_tunnel,
)

BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
HOOKS = BENCH / "hooks"
WRK_SCRIPT = BENCH / "wrk_report.lua"
MIB = 1 << 20
MB = 1_000_000  # throughput is reported in MB/s = 10^6 bytes per second
CLK_TCK = os.sysconf("SC_CLK_TCK")
SMALL_PATH = "/"  # the origin's small fixed page (22 bytes)

# What the issue says the alternatives reach on this kind of machine (2 cores, loopback,
# small responses at 64 connections as a ratio to the same aiohttp origin). Quoted, not
# measured here.
REFERENCE = [
    # name, req/s ratio @64, p99 @64 ms, p99 @1 ms, down MB/s, up MB/s
    ("frp (what Gradio uses)", 0.084, 65.0, None, 205.0, None),
    ("localtunnel", 0.085, 65.0, None, 379.0, 71.0),
    ("OpenSSH ssh -R", 0.63, None, 40.0, 385.0, 298.0),
    ("one nginx hop", 0.89, None, None, None, None),
]
GOALS = {
    # "beat frp and localtunnel at least twice over on request rate and p99"
    "rps_ratio_64": 2 * max(0.084, 0.085),
    "p99_64_ms": 65.0 / 2,
    # "and ssh -R on bulk MB/s both ways"
    "down_mbps": 385.0,
    "up_mbps": 298.0,
}

ALL_CASES = ("small1", "small64", "down", "up", "sse", "ws", "startup")


@dataclass(frozen=True)
class Target:
    """Where requests go: a port on 127.0.0.1 and the Host header to send."""

    name: str
    port: int
    host: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# -- process probes ----------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """Core-seconds the whole machine spent busy since boot (all processes)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


@dataclass
class Usage:
    """CPU seconds and peak RSS of our processes over one phase."""

    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    rss_peak: dict[str, int] = field(default_factory=dict)
    machine_busy_s: float = 0.0


@contextlib.contextmanager
def watch(pids: dict[str, int]) -> Iterator[Usage]:
    """Measure CPU time and sample RSS (every 20 ms) of ``pids`` while the body runs."""
    usage = Usage(rss_peak={name: rss_bytes(pid) for name, pid in pids.items()})
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    busy0 = machine_busy_seconds()
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            for name, pid in pids.items():
                with contextlib.suppress(OSError):
                    usage.rss_peak[name] = max(usage.rss_peak[name], rss_bytes(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        yield usage
    finally:
        usage.wall_s = time.perf_counter() - started
        stop.set()
        sampler.join()
        usage.cpu_s = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
        usage.machine_busy_s = machine_busy_seconds() - busy0


# -- small responses: wrk, or a Python fallback -----------------------------------------


def small_wrk(target: Target, conns: int, duration: float) -> dict[str, Any]:
    argv = [
        "wrk",
        "-t1",  # one wrk thread does far more than the origin: it is never the bottleneck
        f"-c{conns}",
        f"-d{duration:g}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        "-H",
        f"Host: {target.host}",
        target.base + SMALL_PATH,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON "))
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(
        raw[k]
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "requests": raw["requests"],
        "errors": errors,
    }


async def _small_python(target: Target, conns: int, duration: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=conns, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as http:
        url = target.base + SMALL_PATH
        headers = {"Host": target.host}
        started = time.perf_counter()
        deadline = started + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                async with http.get(url, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(conns)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": latencies[-1] * 1000,
        "requests": len(latencies),
        "errors": errors,
    }


def small_python(target: Target, conns: int, duration: float) -> dict[str, Any]:
    return asyncio.run(_small_python(target, conns, duration))


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(p / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


# -- bulk transfers over a plain socket (the reader is never the bottleneck) -------------


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed before the response head")
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def _connect(target: Target) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", target.port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def download(target: Target, size: int) -> dict[str, Any]:
    buffer = memoryview(bytearray(MIB))
    with _connect(target) as sock:
        started = time.perf_counter()
        request = f"GET /bytes/{size} HTTP/1.1\r\nHost: {target.host}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        status, headers, rest = _read_head(sock)
        first_byte = time.perf_counter() - started
        if status != 200 or int(headers.get("content-length", -1)) != size:
            raise RuntimeError(f"download via {target.name}: {status} {headers}")
        got = len(rest)
        while got < size:
            n = sock.recv_into(buffer)
            if n == 0:
                raise RuntimeError(f"download via {target.name} broke off at {got} bytes")
            got += n
        elapsed = time.perf_counter() - started
    return {"mbps": size / elapsed / MB, "seconds": elapsed, "first_byte_ms": first_byte * 1000}


def upload(target: Target, size: int) -> dict[str, Any]:
    chunk = bytes(range(256)) * 4096  # 1 MiB
    with _connect(target) as sock:
        started = time.perf_counter()
        request = (
            f"POST /upload HTTP/1.1\r\nHost: {target.host}\r\nContent-Length: {size}\r\n"
            "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(request.encode())
        left = size
        while left:
            piece = chunk[: min(left, len(chunk))]
            sock.sendall(piece)
            left -= len(piece)
        status, headers, rest = _read_head(sock)
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            data = sock.recv(65536)
            if not data:
                break
            rest += data
        elapsed = time.perf_counter() - started
    if status != 200 or json.loads(rest)["length"] != size:
        raise RuntimeError(f"upload via {target.name}: {status} {rest[:200]!r}")
    return {"mbps": size / elapsed / MB, "seconds": elapsed}


# -- SSE and WebSocket --------------------------------------------------------------------


async def _sse(target: Target, events: int, interval: float) -> list[float]:
    """Per event: when the visitor got it minus when the origin produced it (ms)."""
    latencies = []
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{target.base}/sse?n={events}&interval={interval}", headers={"Host": target.host}
        ) as response,
    ):
        if response.status != 200:
            raise RuntimeError(f"SSE via {target.name}: {response.status}")
        async for line in response.content:
            if line.startswith(b"data: "):
                received = time.time()
                latencies.append((received - json.loads(line[6:])["t"]) * 1000)
    if len(latencies) != events:
        raise RuntimeError(f"SSE via {target.name}: {len(latencies)} of {events} events")
    return latencies


async def _ws(target: Target, messages: int) -> list[float]:
    """Round trip of one small text message at a time (ms); the first 20 warm up."""
    rtts = []
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{target.base}/ws", headers={"Host": target.host}) as ws,
    ):
        for i in range(messages + 20):
            text = f"message {i:06d}"
            t0 = time.perf_counter()
            await ws.send_str(text)
            reply = await ws.receive()
            if reply.data != text:
                raise RuntimeError(f"WebSocket via {target.name}: {reply!r}")
            if i >= 20:
                rtts.append((time.perf_counter() - t0) * 1000)
    return rtts


# -- profiling ----------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    file = Path(match["file"])
    return f"{match['func']} ({'/'.join(file.parts[-2:])})"


def summarize_collapsed(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample counts per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return {
        "samples": total,
        "self": [(name, n / total) for name, n in own.most_common(top)] if total else [],
        "inclusive": [(name, n / total) for name, n in inclusive.most_common(top)] if total else [],
    }


# -- the run -------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    origin: Origin
    relay: RelayProcess
    tunnel: TunnelProcess
    generator: str
    stamp: str
    plain: TunnelProcess | None = None
    """With --inspect: a second client with --no-inspect, on the same relay."""
    runs: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def targets(self) -> list[Target]:
        return [
            Target("direct", self.origin.port, f"127.0.0.1:{self.origin.port}"),
            Target("tunnel", self.relay.port, self.tunnel.host),
        ]

    @property
    def pids(self) -> dict[str, int]:
        pids = {
            "relay": self.relay.proc.pid,
            "client": self.tunnel.proc.pid,
            "origin": self.origin.proc.pid,
        }
        if self.plain is not None:
            pids["client --no-inspect"] = self.plain.proc.pid
        return pids

    def small(self, target: Target, conns: int, duration: float) -> dict[str, Any]:
        run = small_wrk if self.generator == "wrk" else small_python
        return run(target, conns, duration)

    def record(self, case: str, target: Target, result: dict[str, Any]) -> None:
        self.runs.setdefault(case, {}).setdefault(target.name, []).append(result)

    def repeated(self, case: str, measure: Callable[[Target], dict[str, Any]]) -> None:
        """Run a case ``--repeat`` times, direct and tunnel alternating."""
        for rep in range(self.args.repeat):
            for target in self.targets:
                try:
                    with watch(self.pids) as usage:
                        result = measure(target)
                except Exception as exc:  # report a broken case, measure the others
                    self.failures.append(f"{case} via {target.name}: {exc!r}"[:300])
                    log(f"  {case} {target.name} #{rep + 1}: FAILED {exc!r}")
                    continue
                result["usage"] = usage.__dict__
                self.record(case, target, result)
                log(f"  {case} {target.name} #{rep + 1}: {brief(result)}")


def brief(result: dict[str, Any]) -> str:
    keys = ("rps", "p50_ms", "p99_ms", "mbps", "median_ms", "errors")
    return ", ".join(f"{k}={result[k]:.4g}" for k in keys if k in result)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def product_env(args: argparse.Namespace, role: str, stamp: str) -> dict[str, str]:
    """Environment for the relay/client: the hooks first on the path (see hooks/)."""
    env = {"PYTHONPATH": os.pathsep.join([str(HOOKS), str(ROOT)])}
    if (args.asyncio and role != "client") or (args.client_loop == "asyncio" and role != "relay"):
        env["BENCH_ASYNCIO"] = "1"
    if args.cprofile:
        env["BENCH_CPROFILE"] = str(RESULTS / f"{stamp}-{role}")
    return env


def pick_generator(choice: str) -> str:
    if choice in ("auto", "wrk") and shutil.which("wrk"):
        return "wrk"
    if choice == "wrk":
        raise SystemExit("bench: wrk is not installed (Debian: apt-get install -y wrk)")
    if choice == "auto":
        log(
            "bench: wrk not found (Debian: apt-get install -y wrk); using the Python aiohttp "
            "load generator, which tops out far below wrk: request rates are then lower bounds"
        )
    return "python"


def run_cases(bench: Bench) -> None:
    args = bench.args
    cases = set(args.cases)
    size = args.size_mib * MIB
    tunnel = bench.targets[1]
    # Warm-up: open the client's pooled connections to the origin, fill caches.
    for target in bench.targets:
        bench.small(target, 8, 1)

    if "small1" in cases:
        bench.repeated("small1", lambda t: bench.small(t, 1, args.duration))
    if "small64" in cases:
        bench.repeated("small64", lambda t: bench.small(t, 64, args.duration))
    if "down" in cases:
        bench.repeated("down", lambda t: download(t, size))
    if "up" in cases:
        bench.repeated("up", lambda t: upload(t, size))
    if "sse" in cases:

        def sse(t: Target) -> dict[str, Any]:
            latencies = asyncio.run(_sse(t, args.sse_events, 0.005))
            return {"latencies_ms": latencies, "median_ms": statistics.median(latencies)}

        bench.repeated("sse", sse)
    if "ws" in cases:

        def ws(t: Target) -> dict[str, Any]:
            rtts = asyncio.run(_ws(t, args.ws_messages))
            return {"rtts_ms": rtts, "median_ms": statistics.median(rtts)}

        bench.repeated("ws", ws)
    if args.inspect:
        inspector_cost(bench)
    if args.profile:
        profile(bench, tunnel)
    # Memory once the load is gone (what the processes keep).
    bench.runs["rss_after"] = {"tunnel": [{k: rss_bytes(v) for k, v in bench.pids.items()}]}


def inspector_cost(bench: Bench) -> None:
    """64 connections through the client with its inspector on, and through one with
    ``--no-inspect`` (same relay, same origin), alternating, ``--repeat`` times each."""
    assert bench.plain is not None
    targets = [
        (Target("inspector on", bench.relay.port, bench.tunnel.host), "client"),
        (Target("--no-inspect", bench.relay.port, bench.plain.host), "client --no-inspect"),
    ]
    for target, _ in targets:  # warm-up: pooled connections to the origin
        bench.small(target, 8, 1)
    for rep in range(bench.args.repeat):
        for target, role in targets:
            with watch(bench.pids) as usage:
                result = bench.small(target, 64, bench.args.duration)
            result["usage"] = usage.__dict__
            result["client_cpu_us"] = usage.cpu_s[role] / max(result["requests"], 1) * 1e6
            bench.record("inspect", target, result)
            log(f"  inspect {target.name} #{rep + 1}: {brief(result)}")


def render_inspector_cost(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    on, off = runs.get("inspector on"), runs.get("--no-inspect")
    if not on or not off:
        return []
    rps_on, rps_off = med(on, "rps"), med(off, "rps")
    cpu_on, cpu_off = med(on, "client_cpu_us"), med(off, "client_cpu_us")
    return [
        f"inspector on vs --no-inspect, small responses @64: {rps_on:,.0f} vs {rps_off:,.0f} "
        f"req/s, ratio {rps_on / rps_off:.3f} (medians of {len(on)}); client CPU per request "
        f"{cpu_on:.0f} vs {cpu_off:.0f} us, p99 {med(on, 'p99_ms'):.1f} vs "
        f"{med(off, 'p99_ms'):.1f} ms"
    ]


def profile(bench: Bench, tunnel: Target) -> None:
    """One more tunnel run at 64 connections with py-spy sampling relay and client."""
    duration = max(math.ceil(bench.args.duration), 5)  # py-spy takes whole seconds only
    spies = {}
    for role in ("relay", "client"):
        out = RESULTS / f"{bench.stamp}-{role}.collapsed.txt"
        argv = ["py-spy", "record", "--pid", str(bench.pids[role]), "--duration", str(duration)]
        argv += ["--rate", "200", "--nonblocking", "--format", "raw", "-o", str(out)]
        spies[role] = (
            subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
            out,
        )
    time.sleep(0.5)  # let py-spy attach; only the sampling window matters, not readiness
    result = bench.small(tunnel, 64, duration)
    log(f"  profiled run: {brief(result)}")
    profiles = {}
    for role, (proc, out) in spies.items():
        _, err = proc.communicate(timeout=duration + 60)
        if proc.returncode != 0 or not out.exists():
            why = err.decode(errors="replace")[-500:]
            log(f"  py-spy on the {role} failed ({proc.returncode}): {why}")
            continue
        profiles[role] = summarize_collapsed(out)
        profiles[role]["file"] = str(out)
    bench.runs["profile"] = {"tunnel": [{"result": result, "profiles": profiles}]}


def startup_times(
    args: argparse.Namespace, origin: Origin, relay: RelayProcess, env: dict[str, str]
) -> list[dict[str, float]]:
    """Seconds from starting ``tunnel`` to its ready event, and to a first 200 via the link."""
    times = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        tunnel = start_tunnel(origin.port, *args.client_args, relay=relay, env=env, wait=False)
        try:
            tunnel.wait_event("ready", timeout=60)
            ready = time.perf_counter() - started
            while fetch(relay.port, tunnel.host, SMALL_PATH).status != 200:
                pass
            first = time.perf_counter() - started
        finally:
            tunnel.stop()
        times.append({"ready_s": ready, "first_200_s": first})
        log(f"  startup: ready {ready:.3f} s, first 200 {first:.3f} s")
    return times


# -- report ---------------------------------------------------------------------------------


def med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def pooled(runs: list[dict[str, Any]], key: str, p: float) -> float:
    values = sorted(v for r in runs for v in r[key])
    return percentile(values, p)


def cpu_per_request_us(runs: list[dict[str, Any]], role: str) -> float:
    return statistics.median(r["usage"]["cpu_s"][role] / r["requests"] * 1e6 for r in runs)


def summarize(
    runs: dict[str, dict[str, list[Any]]], size_mib: int = 100
) -> dict[str, dict[str, float]]:
    """Median figures per metric and target."""
    out: dict[str, dict[str, float]] = {}

    def put(metric: str, target: str, value: float) -> None:
        out.setdefault(metric, {})[target] = value

    both = ("direct", "tunnel")
    for conns in (1, 64):
        cases = runs.get(f"small{conns}", {})
        for label, key in (("req/s", "rps"), ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms")):
            for target in both:
                if case := cases.get(target):
                    put(f"small responses, {conns} conn: {label}", target, med(case, key))
        for role in ("origin", "relay", "client"):
            for target in both:
                if (case := cases.get(target)) and (target == "tunnel" or role == "origin"):
                    metric = f"  CPU per request @{conns}, {role} (us)"
                    put(metric, target, cpu_per_request_us(case, role))
    for case_name, label in (("down", "download"), ("up", "upload")):
        for target in both:
            if case := runs.get(case_name, {}).get(target):
                put(f"{label} MB/s ({size_mib} MiB)", target, med(case, "mbps"))
    for target in both:
        if case := runs.get("sse", {}).get(target):
            put("SSE event latency p50 ms", target, pooled(case, "latencies_ms", 50))
            put("SSE event latency p99 ms", target, pooled(case, "latencies_ms", 99))
    for target in both:
        if case := runs.get("ws", {}).get(target):
            put("WebSocket echo RTT median ms", target, pooled(case, "rtts_ms", 50))
            put("WebSocket echo RTT p99 ms", target, pooled(case, "rtts_ms", 99))

    def peak(role: str, cases: tuple[str, ...]) -> float | None:
        values = [
            r["usage"]["rss_peak"][role] for c in cases for r in runs.get(c, {}).get("tunnel", [])
        ]
        return max(values) / MIB if values else None

    if idle := runs.get("rss_idle"):
        for role in ("relay", "client"):
            put(f"{role} RSS idle MiB", "tunnel", idle["tunnel"][0][role] / MIB)
            for label, cases in (
                ("under small-request load", ("small1", "small64")),
                ("under bulk load", ("down", "up")),
                ("under SSE/WS", ("sse", "ws")),
            ):
                value = peak(role, cases)
                if value is not None:
                    put(f"{role} RSS peak {label} MiB", "tunnel", value)
            if after := runs.get("rss_after"):
                put(f"{role} RSS after the load MiB", "tunnel", after["tunnel"][0][role] / MIB)
    if start := runs.get("startup"):
        put("start tunnel -> ready event s", "tunnel", med(start["tunnel"], "ready_s"))
        put("start tunnel -> first 200 s", "tunnel", med(start["tunnel"], "first_200_s"))
    return out


def render(summary: dict[str, dict[str, float]]) -> str:
    def fmt(value: float | None) -> str:
        if value is None:
            return "-"
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if value < 10 else f"{value:.1f}"

    width = max(len(m) for m in summary) + 2
    lines = [f"{'measured':<{width}}{'direct':>11}{'tunnel':>11}{'tunnel/direct':>15}"]
    lines.append("-" * len(lines[0]))
    for metric, values in summary.items():
        direct, tunnel = values.get("direct"), values.get("tunnel")
        ratio = f"{tunnel / direct:.3f}" if direct and tunnel is not None else "-"
        lines.append(f"{metric:<{width}}{fmt(direct):>11}{fmt(tunnel):>11}{ratio:>15}")
    lines.append("")
    lines.append(
        "reference (quoted from the issue, NOT measured here; req/s as tunnel/direct @64):"
    )
    header = f"{'':<{width}}{'req/s ratio':>12}{'p99@64 ms':>11}{'p99@1 ms':>10}"
    header += f"{'down MB/s':>11}{'up MB/s':>9}"
    lines.append(header)
    for name, ratio, p99_64, p99_1, down, up in REFERENCE:
        lines.append(
            f"{'  ' + name:<{width}}{fmt(ratio):>12}{fmt(p99_64):>11}{fmt(p99_1):>10}"
            f"{fmt(down):>11}{fmt(up):>9}"
        )
    lines.append("")
    checks = [
        ("small responses, 64 conn: req/s", "rps_ratio_64", True, "req/s ratio @64"),
        ("small responses, 64 conn: p99 ms", "p99_64_ms", False, "p99 @64 ms"),
        ("download MB/s", "down_mbps", True, "download MB/s"),
        ("upload MB/s", "up_mbps", True, "upload MB/s"),
    ]
    lines.append("the issue's aims (2x frp/localtunnel on req/s and p99, ssh -R on MB/s):")
    for metric, goal_key, higher, label in checks:
        values = next((v for k, v in summary.items() if k.startswith(metric)), None)
        if not values or "tunnel" not in values:
            continue
        value = values["tunnel"]
        if goal_key == "rps_ratio_64":
            if not values.get("direct"):
                continue
            value = values["tunnel"] / values["direct"]
        goal = GOALS[goal_key]
        met = value >= goal if higher else value <= goal
        sign = ">=" if higher else "<="
        lines.append(
            f"  {label:<18} {fmt(value):>9}  aim {sign} {fmt(goal):<7} {'met' if met else 'MISSED'}"
        )
    return "\n".join(lines)


def render_profile(profiles: dict[str, Any]) -> str:
    lines = []
    for role, prof in profiles.items():
        lines.append(f"\nprofile of the {role} (py-spy, {prof['samples']} busy samples):")
        lines.append("  self time:")
        lines += [f"    {share:6.1%}  {name}" for name, share in prof["self"][:15]]
        lines.append("  inclusive:")
        lines += [f"    {share:6.1%}  {name}" for name, share in prof["inclusive"][:25]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=None, help="runs per case (medians; 3)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per req/s run (5)")
    parser.add_argument("--size-mib", type=int, default=100, help="bulk transfer size")
    parser.add_argument("--sse-events", type=int, default=200)
    parser.add_argument("--ws-messages", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="defaults --repeat 1 --duration 2")
    parser.add_argument(
        "--cases",
        type=lambda s: s.split(","),
        default=list(ALL_CASES),
        help=f"comma-separated subset of {','.join(ALL_CASES)}",
    )
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--asyncio",
        action="store_true",
        help="run the relay on asyncio's own loop, not uvloop (to compare)",
    )
    parser.add_argument(
        "--client-loop",
        choices=("default", "asyncio"),
        default="default",
        help="asyncio: hide uvloop from the client (to compare; default: what it picks)",
    )
    parser.add_argument(
        "--quiet-client", action="store_true", help="tunnel --quiet (no per-request lines)"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy relay and client @64")
    parser.add_argument("--cprofile", action="store_true", help="cProfile relay and client")
    parser.add_argument(
        "--inspect",
        action="store_true",
        help="also compare the client with its request inspector on (the default) and with "
        "--no-inspect at 64 connections",
    )
    parser.add_argument("--relay-arg", action="append", default=[], dest="relay_args")
    parser.add_argument("--client-arg", action="append", default=[], dest="client_args")
    parser.add_argument("--label", default="", help="a note stored with the results")
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.duration is None:
        args.duration = 2.0 if args.quick else 5.0
    if args.quiet_client:
        args.client_args.append("--quiet")
    unknown = set(args.cases) - set(ALL_CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    generator = pick_generator(args.generator)
    if args.profile and shutil.which("py-spy") is None:
        raise SystemExit("bench: --profile needs py-spy (pip install py-spy)")
    load_before = os.getloadavg()
    log(f"bench: load generator {generator}; load average {load_before[0]:.2f} (1 min)")
    relay_env = product_env(args, "relay", stamp)
    client_env = product_env(args, "client", stamp)
    started = time.perf_counter()
    with (
        run_origin() as origin,
        run_relay(*args.relay_args, env=relay_env) as relay,
    ):
        tunnel = start_tunnel(origin.port, *args.client_args, relay=relay, env=client_env)
        bench = Bench(args, origin, relay, tunnel, generator, stamp)
        try:
            if args.inspect:
                bench.plain = start_tunnel(
                    origin.port, *args.client_args, "--no-inspect", relay=relay, env=client_env
                )
            bench.runs["rss_idle"] = {"tunnel": [{k: rss_bytes(v) for k, v in bench.pids.items()}]}
            run_cases(bench)
        finally:
            tunnel.stop()
            if bench.plain is not None:
                bench.plain.stop()
        if "startup" in args.cases:
            startup_env = product_env(args, "startup", stamp)
            startup_env.pop("BENCH_CPROFILE", None)
            bench.runs["startup"] = {"tunnel": startup_times(args, origin, relay, startup_env)}
    load_after = os.getloadavg()
    summary = summarize(bench.runs, args.size_mib)
    table = render(summary)
    profiles = bench.runs.get("profile", {}).get("tunnel", [{}])[0].get("profiles", {})
    notes = [
        f"load generator: {generator}"
        + (" (wrk -t1, keep-alive)" if generator == "wrk" else " (Python aiohttp, slower)"),
        f"runs per case: {args.repeat} (medians), {args.duration:g} s per req/s run; "
        f"relay on {'asyncio' if args.asyncio else 'uvloop'}, client on "
        f"{'asyncio' if args.client_loop == 'asyncio' else 'its default loop'}; "
        f"client {'--quiet' if args.quiet_client else 'logs every request (--json)'}",
        f"load average before/after: {load_before[0]:.2f}/{load_after[0]:.2f} "
        f"on {os.cpu_count()} cores; wall time {time.perf_counter() - started:.0f} s",
    ]
    notes.append(
        "client: request inspector "
        + ("off" if "--no-inspect" in args.client_args else "on (the CLI's default)")
    )
    notes += render_inspector_cost(bench.runs.get("inspect", {}))
    notes += [f"FAILED {failure}" for failure in dict.fromkeys(bench.failures)]
    if args.relay_args or args.client_args:
        notes.append(f"relay args {args.relay_args}, client args {args.client_args}")
    print(table)
    print()
    print("\n".join(notes))
    if profiles:
        print(render_profile(profiles))
    out = RESULTS / f"{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "stamp": stamp,
                "label": args.label,
                "args": vars(args),
                "generator": generator,
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_before": load_before,
                    "load_after": load_after,
                },
                "summary": summary,
                "failures": bench.failures,
                "runs": bench.runs,
            },
            indent=1,
        )
    )
    print(f"\nresults: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
