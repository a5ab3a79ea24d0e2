"""The embedded local relay: the one place the client imports ``relay_server``.

With no relay configured, ``tunnel 7860`` runs a relay in its own process on
127.0.0.1 and hands out ``http://<sub>.localhost:<port>/`` links: browsers and curl
resolve ``*.localhost`` to loopback, so the whole path works on one machine with
nothing to set up (and nothing reachable from elsewhere).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay_server.app import Relay

__all__ = ["start_local_relay"]


async def start_local_relay(
    *, port: int = 0, ttl_s: float | None = None, response_timeout_s: float | None = None
) -> Relay:
    """Start a relay on 127.0.0.1 in this event loop; stop it with ``await relay.shutdown(0)``."""
    from relay_server.app import Relay
    from relay_server.config import RelayConfig

    defaults = RelayConfig()
    relay = Relay(
        RelayConfig(
            host="127.0.0.1",
            port=port,
            domain="localhost",
            ttl_s=ttl_s or defaults.ttl_s,
            response_timeout_s=response_timeout_s or defaults.response_timeout_s,
        )
    )
    await relay.start()
    return relay
