"""``--workers``: several relay processes on one port, each a node of the cluster."""

from __future__ import annotations

import re
import signal
import time

import pytest

from tests.cluster.conftest import Cluster, health, wait_status
from tests.processes import Origin, fetch, start_relay, start_tunnel, stop_process

pytestmark = [pytest.mark.mqtt, pytest.mark.integration, pytest.mark.timeout(180)]

_CREATED = re.compile(r"\[(node-1-w\d)\] relay_server\.endpoint: link (\w+) created")


def test_links_made_through_either_worker_answer_through_both(
    cluster: Cluster, origin: Origin
) -> None:
    relay = start_relay(*cluster.args("node-1"), "--workers", "2")
    cluster.nodes.append(relay)
    tunnels = []
    try:
        holders: dict[str, str] = {}
        # The kernel picks a worker per connection: make links until both hold some.
        while len(set(holders.values())) < 2:
            assert len(tunnels) < 16, f"every link landed on one worker: {holders}"
            tunnel = start_tunnel(origin.port, relay=relay)
            tunnels.append(tunnel)
            sub = tunnel.host.split(".")[0]
            deadline = time.monotonic() + 10
            while sub not in holders:
                assert time.monotonic() < deadline, relay.lines[-20:]
                holders.update({s: w for w, s in _CREATED.findall("\n".join(relay.lines))})
                time.sleep(0.05)
        print(f"\nlinks by worker: {holders}")
        for tunnel in tunnels:
            wait_status(relay.port, tunnel.host, 200, timeout=15)
            # Each request is a new connection, so lands on either worker.
            for i in range(12):
                reply = fetch(relay.port, tunnel.host, f"/echo?i={i}")
                assert reply.status == 200, reply.body
        nodes = {health(relay.port)["cluster"]["node"] for _ in range(20)}
        assert nodes == {"node-1-w0", "node-1-w1"}, nodes
    finally:
        for tunnel in tunnels:
            tunnel.stop()
    assert relay.proc.send_signal(signal.SIGTERM) is None
    assert relay.proc.wait(30) == 0


def test_a_dead_worker_is_restarted(cluster: Cluster) -> None:
    import os

    relay = start_relay(*cluster.args("node-1"), "--workers", "2")  # ready: both workers up
    cluster.nodes.append(relay)
    pids = _worker_pids(relay.proc.pid)
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not any("restarting it" in line for line in relay.lines):
        assert time.monotonic() < deadline, relay.lines[-10:]
        time.sleep(0.05)
    while len(_worker_pids(relay.proc.pid)) < 2 or pids[0] in _worker_pids(relay.proc.pid):
        assert time.monotonic() < deadline, relay.lines[-10:]
        time.sleep(0.05)
    wait_status(relay.port, "relay", 200, path="/_health")
    stop_process(relay.proc)
    assert relay.proc.returncode == 0


def _worker_pids(parent: int) -> list[int]:
    """The relay workers among a process's children (not multiprocessing's helpers)."""
    children = []
    with open(f"/proc/{parent}/task/{parent}/children") as f:
        for pid in map(int, f.read().split()):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmd:
                    if b"resource_tracker" not in cmd.read():
                        children.append(pid)
            except FileNotFoundError:
                continue
    return children


def test_workers_stop_when_their_supervisor_is_killed(cluster: Cluster) -> None:
    import os

    relay = start_relay(*cluster.args("node-1"), "--workers", "2")
    cluster.nodes.append(relay)
    pids = _worker_pids(relay.proc.pid)
    assert len(pids) == 2
    stop_process(relay.proc, signal.SIGKILL)
    deadline = time.monotonic() + 30
    for pid in pids:
        while os.path.exists(f"/proc/{pid}") and b"Z" not in _state(pid):
            assert time.monotonic() < deadline, f"worker {pid} outlived its supervisor"
            time.sleep(0.05)


def _state(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return b"Z"
