"""Fixtures for integration tests: real relay and tunnel processes on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.processes import (
    Origin,
    RelayProcess,
    Reply,
    TunnelProcess,
    fetch,
    run_relay,
    run_tunnel,
)


@dataclass(frozen=True)
class Link:
    """One relay, one tunnel to the session origin, and ways to ask both."""

    origin: Origin
    relay: RelayProcess
    tunnel: TunnelProcess

    @property
    def port(self) -> int:
        """The relay's port: where visitors connect."""
        return self.relay.port

    @property
    def host(self) -> str:
        """The link's Host header value (with port)."""
        return self.tunnel.host

    def fetch(self, path: str = "/", **kwargs: Any) -> Reply:
        """A request through the tunnel (see :func:`tests.processes.fetch`)."""
        return fetch(self.port, self.host, path, **kwargs)

    def direct(self, path: str = "/", **kwargs: Any) -> Reply:
        """The same request straight to the origin, with the same Host header."""
        return fetch(self.origin.port, self.host, path, **kwargs)


@pytest.fixture(scope="module")
def link(origin: Origin) -> Iterator[Link]:
    """A relay and a tunnel to the origin, shared by the tests of one module."""
    with run_relay() as relay, run_tunnel(origin.port, relay=relay) as tunnel:
        yield Link(origin, relay, tunnel)
