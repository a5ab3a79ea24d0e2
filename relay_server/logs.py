"""How the relay's log lines look: text for people, or one JSON object per line.

``tunnel-relay`` (the only place that sets up logging) installs these formatters on
stderr and, with ``--access-log``, on the access log's own handler.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["SERVER_LOGGER", "JsonFormatter", "TextFormatter", "formatter"]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def _iso(created: float) -> str:
    when = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``2026-11-25 02:15:04,123 INFO relay_server.app: message``; access lines start with
    the time in UTC (ISO 8601) and carry no level or logger name, as access logs do."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if "access" in record.__dict__:
            return f"{_iso(record.created)} {record.getMessage()}"
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's extras
    (an access line's fields at the top level)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key == "access" and isinstance(value, dict):
                entry.update(value)
            elif key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for ``--log-format`` (``text`` or ``json``)."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


class _NotHttpFilter(logging.Filter):
    """Drops aiohttp's traceback for a request that is not HTTP: the sender got its
    400, and a stranger's garbage is no event in the operator's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HttpProcessingError)


SERVER_LOGGER = logging.getLogger("relay_server.server")
"""The logger of the relay's aiohttp servers (its own host, the admin listener)."""
SERVER_LOGGER.addFilter(_NotHttpFilter())
