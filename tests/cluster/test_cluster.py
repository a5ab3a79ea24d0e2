"""A cluster of real relay processes and a real mosquitto: links answer on every node,
survive a dead node and a dead broker, and cannot be rerouted without the secret."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import socket
import threading
import time

import aiohttp
import pytest

from tests.cluster.conftest import CLUSTER_NAME, Broker, Cluster, wait_for_mesh, wait_status
from tests.faultproxy import fault_proxy
from tests.integration.test_backpressure import (
    MIB,
    RSS_HEADROOM,
    check_pattern,
    read_head,
    watch_rss,
)
from tests.origin import pattern_bytes
from tests.processes import Origin, fetch, rss_bytes, start_tunnel, stop_process

pytestmark = [pytest.mark.mqtt, pytest.mark.integration, pytest.mark.timeout(240)]

DOWNLOAD = 100 * MIB


def download(port: int, host: str, size: int) -> int:
    """Stream ``/bytes/size`` through ``port`` and check it, never holding it whole."""
    with socket.create_connection(("127.0.0.1", port), 15) as sock:
        sock.sendall(f"GET /bytes/{size} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        received = 0
        chunk = rest
        while True:
            if chunk:
                check_pattern(received, chunk)
                received += len(chunk)
            if received >= size:
                return received
            chunk = sock.recv(1 << 20)
            assert chunk, f"connection closed after {received} bytes"


async def ws_echo(port: int, host: str) -> list[str]:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{port}/ws", headers={"Host": host}) as ws,
    ):
        got = []
        for text in ("hello", "ünïcödé ✓"):
            await ws.send_str(text)
            got.append((await ws.receive()).data)
        big = pattern_bytes(3 * MIB)
        await ws.send_bytes(big)
        reply = await ws.receive()
        assert hashlib.sha256(reply.data).digest() == hashlib.sha256(big).digest()
        await ws.close(code=4001, message=b"bye")
        return got


async def sse_events(port: int, host: str, count: int, interval: float) -> list[float]:
    """When each event arrived, minus when the origin produced it."""
    lags = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{port}/sse?n={count}&interval={interval}", headers={"Host": host}
        ) as response,
    ):
        assert response.status == 200
        async for line in response.content:
            if line.startswith(b"data: "):
                lags.append(time.time() - json.loads(line[6:])["t"])
    return lags


def test_a_link_on_one_node_answers_on_every_node(cluster: Cluster, origin: Origin) -> None:
    nodes = cluster.start(3)
    wait_for_mesh([n.port for n in nodes])
    tunnel = start_tunnel(origin.port, relay=nodes[0])
    try:
        for node in nodes:
            wait_status(node.port, tunnel.host, 200, timeout=10)
            reply = fetch(node.port, tunnel.host, "/echo?x=1", method="POST", body=b"abc" * 1000)
            assert reply.status == 200
            echoed = json.loads(reply.body)
            assert echoed["length"] == 3000 and echoed["method"] == "POST"
            assert echoed["target"] == "/echo?x=1"
        # A 32 MiB upload through a hop arrives whole (streamed, under both windows).
        body = pattern_bytes(32 * MIB)
        reply = fetch(nodes[2].port, tunnel.host, "/upload", method="POST", body=body, timeout=60)
        assert reply.status == 200
        assert json.loads(reply.body)["sha256"] == hashlib.sha256(body).hexdigest()
        # Errors of the owner's machine read the same through a hop.
        assert fetch(nodes[1].port, tunnel.host, "/status/418").status == 418
        assert fetch(nodes[2].port, "nosuchlink.localhost", "/").status == 404

        # A 100 MiB download through a hop, memory bounded on every node.
        download(nodes[1].port, tunnel.host, 8 * MIB)  # warm every path up first
        baseline = {f"node{i + 1}": rss_bytes(n.proc.pid) for i, n in enumerate(nodes)}
        with watch_rss({name: n.proc.pid for name, n in zip(baseline, nodes, strict=True)}) as w:
            started = time.monotonic()
            assert download(nodes[1].port, tunnel.host, DOWNLOAD) == DOWNLOAD
            took = time.monotonic() - started
        print(f"\n100 MiB through node 2 from node 1: {DOWNLOAD / took / 1e6:.0f} MB/s")
        for name, base in baseline.items():
            grew = w.peaks[name] - base
            print(f"{name} RSS {base / MIB:.1f} -> peak {w.peaks[name] / MIB:.1f} MiB")
            assert grew < RSS_HEADROOM, f"{name} grew by {grew / MIB:.1f} MiB"

        # SSE, event by event, and a WebSocket, message by message, through each hop.
        for node in nodes[1:]:
            lags = asyncio.run(sse_events(node.port, tunnel.host, 4, 0.3))
            assert len(lags) == 4 and max(lags) < 0.25, lags
            assert asyncio.run(ws_echo(node.port, tunnel.host)) == ["hello", "ünïcödé ✓"]
    finally:
        tunnel.stop()


def test_a_killed_node_drops_out_and_its_link_comes_back_on_another(
    cluster: Cluster, origin: Origin
) -> None:
    nodes = cluster.start(3)
    wait_for_mesh([n.port for n in nodes])
    with fault_proxy(nodes[0].port) as proxy:
        # The client's way to "the relay" is a proxy, as a load balancer would be.
        tunnel = start_tunnel(origin.port, "--relay", f"ws://127.0.0.1:{proxy.port}")
        try:
            for node in nodes:
                wait_status(node.port, tunnel.host, 200, timeout=10)
            proxy.refuse()  # the client cannot come back at once: the will is what we see
            stop_process(nodes[0].proc, signal.SIGKILL)
            for node in nodes[1:]:
                forgot = wait_status(node.port, tunnel.host, 404, timeout=10)
                print(f"\nnode on {node.port} forgot the dead node's link after {forgot:.2f} s")
            proxy.target_port = nodes[1].port
            proxy.restore()
            started = time.monotonic()
            back = tunnel.wait_event("reconnected", timeout=20)
            assert back["url"] == tunnel.url
            for node in nodes[1:]:
                wait_status(node.port, tunnel.host, 200, timeout=10)
            took = time.monotonic() - started
            print(f"link back on every node {took:.2f} s after its client could reconnect")
            assert took < 10
            for _ in range(10):
                assert fetch(nodes[2].port, tunnel.host, "/echo").status == 200
        finally:
            tunnel.stop()


def test_a_client_given_every_node_moves_to_another_when_its_node_dies(
    cluster: Cluster, origin: Origin
) -> None:
    """No proxy: the client's own --relay list takes it to the next node, same link."""
    nodes = cluster.start(3)
    wait_for_mesh([n.port for n in nodes])
    relays = [arg for n in nodes for arg in ("--relay", n.url)]
    tunnel = start_tunnel(origin.port, *relays)
    try:
        for node in nodes:
            wait_status(node.port, tunnel.host, 200, timeout=10)
        started = time.monotonic()
        stop_process(nodes[0].proc, signal.SIGKILL)
        back = tunnel.wait_event("reconnected", timeout=30)
        assert back["url"] == tunnel.url
        for node in nodes[1:]:
            wait_status(node.port, tunnel.host, 200, timeout=10)
        took = time.monotonic() - started
        print(f"\nlink back on the surviving nodes {took:.2f} s after its node was killed")
        assert took < 15
    finally:
        tunnel.stop()


def test_links_outlive_the_broker_and_cross_node_requests_come_back(
    cluster: Cluster, origin: Origin
) -> None:
    broker: Broker = cluster.broker
    nodes = cluster.start(2)
    wait_for_mesh([n.port for n in nodes])
    tunnel = start_tunnel(origin.port, relay=nodes[0])
    home, away = nodes
    statuses: list[int] = []
    done = threading.Event()

    def keep_asking_home() -> None:
        while not done.is_set():
            statuses.append(fetch(home.port, tunnel.host, "/echo", timeout=5).status)
            time.sleep(0.02)

    watcher = threading.Thread(target=keep_asking_home, daemon=True)
    try:
        wait_status(away.port, tunnel.host, 200, timeout=10)
        watcher.start()
        broker.kill()
        wait_status(away.port, tunnel.host, 503, timeout=10)
        for _ in range(5):
            asked = time.monotonic()
            assert fetch(away.port, tunnel.host, timeout=5).status == 503
            assert time.monotonic() - asked < 1, "a visitor waited on the missing broker"
        time.sleep(1)
        broker.start()
        back = wait_status(away.port, tunnel.host, 200, timeout=20)
        print(f"\ncross-node requests back {back:.2f} s after the broker restarted")
        for _ in range(10):
            assert fetch(away.port, tunnel.host, "/echo").status == 200
    finally:
        done.set()
        if watcher.is_alive():
            watcher.join(10)
        tunnel.stop()
    assert statuses and set(statuses) == {200}, "the link's own node must serve it throughout"
    home.wait_logged("WARNING relay_server.cluster.broker: cluster: lost the broker")


def test_a_forged_announcement_does_not_reroute_a_link(cluster: Cluster, origin: Origin) -> None:
    import aiomqtt

    nodes = cluster.start(3)
    wait_for_mesh([n.port for n in nodes])
    tunnel = start_tunnel(origin.port, relay=nodes[0])
    try:
        wait_status(nodes[1].port, tunnel.host, 200, timeout=10)
        sub = tunnel.host.split(".")[0]
        topic = f"sharetunnel/{CLUSTER_NAME}/links/{sub}"
        forged = {
            "v": 1,
            "subdomain": sub,
            "node": "node-3",
            "incarnation": "x",
            "peer_url": f"http://127.0.0.1:{nodes[2].port}",
            "state": "live",
            "expires_at": time.time() + 3600,
            "key_hash": "0" * 64,
            "token_id": None,
            "claimed_at": time.time() + 3600,  # "newer" than any real claim
        }
        unsigned = json.dumps(forged).encode()
        badly_signed = json.dumps({**forged, "mac": "00" * 32}).encode()

        async def publish() -> None:
            async with aiomqtt.Client("127.0.0.1", cluster.broker.port) as client:
                for payload in (unsigned, badly_signed):
                    await client.publish(topic, payload, qos=1, retain=True)

        asyncio.run(publish())
        for node in nodes[1:]:  # each has read a forgery (and said so) before we look
            node.wait_logged("WARNING relay_server.cluster.directory: ignoring a cluster message")
        time.sleep(0.5)
        for node in nodes:
            for _ in range(5):
                assert fetch(node.port, tunnel.host, "/echo").status == 200
        assert not [e for e in tunnel.events if e.get("event") == "reconnecting"]
    finally:
        tunnel.stop()
    for node in nodes[1:]:
        logs = "\n".join(node.lines)
        assert "WARNING relay_server.cluster.directory: ignoring a cluster message" in logs


def test_the_hop_wants_the_cluster_secret(cluster: Cluster) -> None:
    (node,) = cluster.start(1)
    wait_for_mesh([node.port])

    async def knock() -> aiohttp.WSMsgType:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://127.0.0.1:{node.port}/_peer") as ws,
        ):
            hello = {"peer": 1, "node": "intruder", "to": "node-1", "nonce": "ab", "window": 65536}
            await ws.send_bytes(json.dumps(hello).encode())
            answer = json.loads((await ws.receive()).data)
            assert answer["node"] == "node-1" and len(answer["mac"]) == 64
            await ws.send_bytes(json.dumps({"mac": "00" * 32}).encode())
            # Then an OPEN, as if the proof had passed: it must never be served.
            await ws.send_bytes(b"\x03\x00\x00\x00\x00\x02\x00\x00\x00\x02{}")
            return (await ws.receive(timeout=10)).type

    assert asyncio.run(knock()) in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    deadline = time.monotonic() + 5
    while not any("refused a hop" in line for line in node.lines):
        assert time.monotonic() < deadline, node.lines[-5:]
        time.sleep(0.05)
