"""sharetunnel's relay: hands out links and carries their traffic over tunnel WebSockets.

It imports nothing from ``tunnel_client`` but the sans-I/O protocol package.
"""

from .app import Relay
from .config import RelayConfig

__all__ = ["Relay", "RelayConfig"]
