"""The request inspector: a local page listing every request, with bodies and replay.

``tunnel 7860`` serves it on http://127.0.0.1:4040 (ngrok's port); ``--no-inspect``
turns it off, and then the forwarder has no tap at all. :mod:`.capture` is what the
forwarder feeds (cheap, bounded), :mod:`.render` how entries look in the API, and
:mod:`.web` the server: page, JSON API, live updates and replay.
"""

from __future__ import annotations

from .capture import Capture, Entry
from .web import Inspector, InspectorUnavailable

__all__ = ["Capture", "Entry", "Inspector", "InspectorUnavailable"]
