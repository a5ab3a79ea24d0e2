"""An operator's revocation through the admin API holds on every node, and after restarts."""

from __future__ import annotations

import json
import time

import pytest

from tests.cluster.conftest import Cluster, wait_for_mesh, wait_status
from tests.processes import Origin, fetch, start_tunnel

pytestmark = [pytest.mark.mqtt, pytest.mark.integration, pytest.mark.timeout(180)]


def test_a_link_revoked_on_one_node_is_gone_on_every_node_and_after_a_restart(
    cluster: Cluster, origin: Origin
) -> None:
    nodes = cluster.start(2, "--admin-port", "0")
    wait_for_mesh([n.port for n in nodes])
    holder, other = nodes
    tunnel = start_tunnel(origin.port, relay=holder)
    try:
        sub = tunnel.host.split(".")[0]
        for node in nodes:
            wait_status(node.port, tunnel.host, 200, timeout=10)
        # The other node forwarded those requests over the hop, and counts them.
        assert other.admin_port is not None
        metrics = fetch(other.admin_port, f"127.0.0.1:{other.admin_port}", "/metrics").body
        forwards = [
            float(line.split()[-1])
            for line in metrics.decode().splitlines()
            if line.startswith("sharetunnel_cross_node_forwards")
        ]
        assert forwards and forwards[0] >= 1, metrics[:2000]
        # Revoked through the node that does NOT hold the link.
        reply = fetch(
            other.admin_port, f"127.0.0.1:{other.admin_port}", f"/api/links/{sub}", method="DELETE"
        )
        assert reply.status in (200, 202, 204), reply
        for node in nodes:
            wait_status(node.port, tunnel.host, 410, timeout=10)
        # Its client was told why and stopped, without coming back.
        assert tunnel.proc.wait(20) != 0
        said = "\n".join(tunnel.stderr_lines) + json.dumps(tunnel.events)
        assert "took this link down" in said or "revoked" in said, said
    finally:
        tunnel.stop()
    # Every node restarted (same broker, same lease key): still 410 everywhere.
    cluster.stop()
    restarted = cluster.start(2)
    wait_for_mesh([n.port for n in restarted])
    deadline = time.monotonic() + 15
    for node in restarted:
        wait_status(node.port, tunnel.host, 410, timeout=max(1.0, deadline - time.monotonic()))
