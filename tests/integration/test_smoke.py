"""The shortest path through everything: relay, client and origin processes, one request."""

from __future__ import annotations

import pytest

from tests.processes import Origin, fetch, run_relay, run_tunnel

pytestmark = pytest.mark.integration


def test_a_page_comes_back_through_the_tunnel(origin: Origin) -> None:
    with run_relay() as relay, run_tunnel(origin.port, relay=relay) as tunnel:
        reply = fetch(relay.port, tunnel.host, "/")
        assert reply.status == 200
        assert reply.body == b"hello from the origin\n"
