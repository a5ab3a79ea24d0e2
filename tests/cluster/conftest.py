"""A cluster on loopback: a mosquitto broker the tests start themselves, relay nodes sharing
one lease key and one cluster secret, and ways to wait for them to see each other."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from relay_server.leases import load_or_create_key
from tests.processes import RelayProcess, fetch, scratch_dir, start_relay, stop_process

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
CLUSTER_NAME = "tests"
PUBLIC_PORT = "8080"
"""Every node hands out the same URL for a link, as behind one load balancer."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@dataclass
class Broker:
    """A mosquitto on 127.0.0.1, started and stopped by the test."""

    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        conf = self.directory / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        log = (self.directory / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + 10
        while not _accepts(self.port):
            assert self.proc.poll() is None, (self.directory / "mosquitto.log").read_text()
            assert time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGKILL)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@pytest.fixture
def broker() -> Iterator[Broker]:
    if not os.path.exists(MOSQUITTO):
        pytest.skip("mosquitto is not installed (bash .ci/install installs it)")
    running = Broker(free_port(), scratch_dir("mosquitto-"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@dataclass
class Cluster:
    """Relay nodes of one cluster; the test stops them (or they are stopped at teardown)."""

    broker: Broker
    directory: Path
    nodes: list[RelayProcess] = field(default_factory=list)

    @property
    def secret_file(self) -> Path:
        return self.directory / "cluster-secret"

    @property
    def lease_key(self) -> Path:
        return self.directory / "lease-key.pem"

    def args(self, node_id: str) -> list[str]:
        return [
            "--cluster",
            self.broker.url,
            "--cluster-name",
            CLUSTER_NAME,
            "--cluster-secret-file",
            str(self.secret_file),
            "--lease-key",
            str(self.lease_key),
            "--node-id",
            node_id,
            "--public-port",
            PUBLIC_PORT,
            "--keepalive",
            "2s",
        ]

    def start(self, count: int, *extra: str) -> list[RelayProcess]:
        started = [
            start_relay(*self.args(f"node-{len(self.nodes) + i + 1}"), *extra) for i in range(count)
        ]
        self.nodes.extend(started)
        return started

    def stop(self) -> None:
        for node in self.nodes:
            node.stderr_text()


@pytest.fixture
def cluster(broker: Broker) -> Iterator[Cluster]:
    made = Cluster(broker, scratch_dir("cluster-"))
    made.secret_file.write_text(secrets.token_hex(32) + "\n")
    load_or_create_key(made.lease_key)
    try:
        yield made
    finally:
        made.stop()


def health(port: int) -> dict[str, Any]:
    return json.loads(fetch(port, "relay", "/_health", timeout=5).body)  # type: ignore[no-any-return]


def wait_for_mesh(ports: list[int], timeout: float = 30.0) -> None:
    """Until every node sees the broker, every other node, and has a hop to each."""
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            info = health(port)["cluster"]
            if info["synced"] and len(info["hops"]) >= len(ports) - 1:
                break
            assert time.monotonic() < deadline, f"node on {port} never joined: {info}"
            time.sleep(0.05)


def wait_status(port: int, host: str, status: int, timeout: float = 15.0, path: str = "/") -> float:
    """Poll until a request answers ``status``; returns how long that took."""
    started = time.monotonic()
    seen: list[int] = []
    while True:
        reply = fetch(port, host, path, timeout=5)
        if reply.status == status:
            return time.monotonic() - started
        seen.append(reply.status)
        assert time.monotonic() - started < timeout, f"never {status} on {port}: {seen[-10:]}"
        time.sleep(0.05)
