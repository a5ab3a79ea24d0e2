"""The relay's own exceptions, under the protocol's :class:`TunnelError` root."""

from __future__ import annotations

import datetime

from tunnel_client.protocol.errors import TunnelError

__all__ = ["LeaseError", "LeaseExpired", "LeaseInvalid"]


class LeaseError(TunnelError):
    """A lease cannot give its link back."""


class LeaseInvalid(LeaseError):
    """Forged, corrupted, or presented by a client that does not hold its secret."""


class LeaseExpired(LeaseError):
    """A genuine lease whose link has expired; it will never be handed out again."""

    def __init__(self, subdomain: str, expires_at: float) -> None:
        when = datetime.datetime.fromtimestamp(expires_at, datetime.UTC)
        super().__init__(f"the link {subdomain} expired at {when:%Y-%m-%d %H:%M:%S} UTC")
        self.subdomain = subdomain
        self.expires_at = expires_at
