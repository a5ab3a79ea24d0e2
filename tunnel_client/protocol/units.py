"""Durations and sizes as people write them in flags and config files ("72h", "64KiB").

Shared by both command lines so that ``--ttl 90m`` means the same on both sides.
"""

from __future__ import annotations

import json
import re

__all__ = ["format_duration", "format_size", "parse_duration", "parse_size"]

MAX_DURATION_S = 10 * 365 * 86400.0
"""Longer durations are surely typos (and overflow timers)."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+)\s*(b|kb|kib|k|mb|mib|m|gb|gib|g)?", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1 << 20,
    "mb": 10**6,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 10**9,
    "gib": 1 << 30,
}


def parse_duration(text: str) -> float:
    """Seconds in ``"72h"``, ``"1h30m"``, ``"5s"``, ``"250ms"`` or a bare number of seconds.

    Raises:
        ValueError: with a message fit to show a user.
    """
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
        if pos != len(value) or not value:
            raise ValueError(
                f"{json.dumps(text)} is not a duration: use e.g. 72h, 90m, 30s, 1h30m or 250ms"
            ) from None
    if not 0 < seconds <= MAX_DURATION_S:
        raise ValueError(f"{json.dumps(text)} is not a duration between 1ms and 10 years")
    return seconds


def format_duration(seconds: float) -> str:
    """``259200`` -> ``"72h"``, ``5400`` -> ``"1h30m"``, ``3`` -> ``"3s"``."""
    whole = round(seconds)
    if whole < 1:
        return f"{seconds * 1000:.0f}ms"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if unit == "d" and whole < 7 * 86400:
            continue  # "72h" reads better than "3d"
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def parse_size(text: str) -> int:
    """Bytes in ``"64KiB"``, ``"10MB"``, ``"1g"`` or a bare number of bytes.

    Raises:
        ValueError: with a message fit to show a user.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{json.dumps(text)} is not a size: use e.g. 65536, 64KiB, 10MB or 1GiB")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()]


def format_size(size: int) -> str:
    """``262144`` -> ``"256KiB"``, ``1048576`` -> ``"1MiB"``, ``1000`` -> ``"1000"`` (exact)."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)
