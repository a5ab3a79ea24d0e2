"""``--interstitial`` in a cluster: the node a browser reaches shows the warning page for
a link another node holds, takes that link's bypass token, and its cookie holds on
every node (they share the lease key it is derived from)."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import Cluster, wait_for_mesh, wait_status
from tests.processes import Origin, fetch, start_tunnel

pytestmark = [pytest.mark.mqtt, pytest.mark.integration, pytest.mark.timeout(120)]

TOKEN = "cluster-demo-token"
BROWSER = {"Accept": "text/html,*/*;q=0.8"}


def test_the_warning_page_and_its_bypass_on_a_node_that_does_not_hold_the_link(
    cluster: Cluster, origin: Origin
) -> None:
    nodes = cluster.start(2, "--interstitial")
    wait_for_mesh([n.port for n in nodes])
    holder, other = nodes
    tunnel = start_tunnel(origin.port, "--bypass-token", TOKEN, relay=holder)
    try:
        host = tunnel.host
        for node in nodes:
            wait_status(node.port, host, 200, timeout=10)  # programs pass on every node
        page = fetch(other.port, host, "/echo", headers=BROWSER)
        assert page.status == 200 and page.header("X-Sharetunnel-Warning") == "interstitial"
        bypass = fetch(other.port, host, f"/echo?st_bypass={TOKEN}", headers=BROWSER)
        assert bypass.status == 303 and bypass.header("Location") == "/echo", bypass
        mark = (bypass.header("Set-Cookie") or "").split(";")[0]
        for node in nodes:
            reply = fetch(node.port, host, "/echo", headers={**BROWSER, "Cookie": mark})
            assert reply.status == 200 and reply.header("X-Sharetunnel-Warning") is None
            assert b'"target": "/echo"' in reply.body
        wrong = fetch(other.port, host, "/?st_bypass=not-the-token", headers=BROWSER)
        assert wrong.header("X-Sharetunnel-Warning") == "interstitial"
    finally:
        tunnel.stop()
