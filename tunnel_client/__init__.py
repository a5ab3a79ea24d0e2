"""sharetunnel's client: share a local HTTP server through a relay.

``from tunnel_client import share`` gives the Python API. Importing the package itself
loads nothing else, so that :mod:`tunnel_client.protocol` stays light for the relay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import AsyncShare, Share, async_share, share

__all__ = ["AsyncShare", "Share", "__version__", "async_share", "share"]

__version__: str


def __getattr__(name: str) -> Any:
    if name == "__version__":  # from the distribution's metadata, read on first use
        from .protocol.version import package_version

        return package_version()
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
