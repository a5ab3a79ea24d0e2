"""Parsers for setting values, whether typed on a command line or written in TOML.

A parser turns one raw value into the value a program uses, or raises
:class:`ValueError` with a message fit to show a user. Raw values are text from a flag
or an environment variable, a TOML value from a config file (``port = 8080``,
``ttl = "72h"``, ``trusted_proxy = ["10.0.0.0/8"]``), or a Python value given to the
API (``ttl=600.0``). Text is accepted everywhere, so a file may quote any value.

Messages quote a raw value as TOML would (``"abc" is not a whole number``): the
settings engine puts where the value came from in front (:mod:`.settings`).
Durations and sizes are read by :mod:`.units`, so ``90m`` means the same everywhere.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from .units import format_duration, format_size, parse_duration, parse_size

__all__ = [
    "Choice",
    "Duration",
    "FilePath",
    "Flag",
    "Many",
    "Number",
    "Parser",
    "Size",
    "Text",
    "Whole",
    "shown",
]

T = TypeVar("T")

# click's spellings, so a RELAY_SELF_SIGNED that worked before still does.
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


def shown(raw: object) -> str:
    """A raw value as TOML writes it: ``"abc"``, ``8080``, ``true``, ``["a"]``, ``{a = 1}``."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str | int | float):
        return json.dumps(raw)
    if isinstance(raw, Sequence):
        return "[" + ", ".join(shown(item) for item in raw) + "]"
    if isinstance(raw, Mapping):
        return "{" + ", ".join(f"{k} = {shown(v)}" for k, v in raw.items()) + "}"
    return str(raw)


def _range_problem(
    value: float, low: float | None, high: float | None, fmt: Callable[[Any], str], why: str
) -> str | None:
    if low is not None and value < low:
        problem = f"{fmt(value)} is below the minimum {fmt(low)}"
    elif high is not None and value > high:
        problem = f"{fmt(value)} is above the maximum {fmt(high)}"
    else:
        return None
    return f"{problem}: {why}" if why else problem


class Parser(Generic[T]):
    """Reads one raw value; subclasses say how."""

    metavar = "TEXT"

    def parse(self, raw: object) -> T:
        """The value ``raw`` stands for.

        Raises:
            ValueError: with a message that quotes ``raw``.
        """
        raise NotImplementedError

    def format(self, value: T) -> str:
        """``value`` as a user would write it (check-config, ``--help``)."""
        return str(value)


class Text(Parser[str]):
    """Any non-empty text; ``check`` returns a problem or None."""

    def __init__(self, check: Callable[[str], str | None] | None = None) -> None:
        self.check = check

    def parse(self, raw: object) -> str:
        if not isinstance(raw, str):
            raise ValueError(f"{shown(raw)} is not text: put it in quotes")
        if not raw.strip():
            raise ValueError(f"{shown(raw)} is empty")
        problem = self.check(raw) if self.check is not None else None
        if problem is not None:
            raise ValueError(problem)
        return raw


class Whole(Parser[int]):
    """A whole number, optionally within ``low..high``."""

    metavar = "N"

    def __init__(self, low: int | None = None, high: int | None = None) -> None:
        self.low, self.high = low, high

    def parse(self, raw: object) -> int:
        value: int | None = None
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and re.fullmatch(r"\s*[+-]?\d+\s*", raw):
            value = int(raw)
        if value is None:
            raise ValueError(f"{shown(raw)} is not a whole number")
        if self.low is not None and self.high is not None:
            if not self.low <= value <= self.high:
                raise ValueError(f"{value} is not in {self.low}..{self.high}")
        elif problem := _range_problem(value, self.low, self.high, str, ""):
            raise ValueError(problem)
        return value


class Number(Parser[float]):
    """A finite number, at least ``low`` when given."""

    metavar = "NUMBER"

    def __init__(self, low: float | None = None) -> None:
        self.low = low

    def parse(self, raw: object) -> float:
        value = math.nan
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            value = float(raw)
        elif isinstance(raw, str):
            with contextlib.suppress(ValueError):
                value = float(raw)
        if not math.isfinite(value):
            raise ValueError(f"{shown(raw)} is not a number")
        if problem := _range_problem(value, self.low, None, self.format, ""):
            raise ValueError(problem)
        return value

    def format(self, value: float) -> str:
        return f"{value:g}"


class Duration(Parser[float]):
    """Seconds, written ``72h``, ``90m``, ``5s``, ``250ms`` (a bare number is seconds)."""

    metavar = "DURATION"

    def __init__(self, low_s: float | None = None) -> None:
        self.low_s = low_s

    def parse(self, raw: object) -> float:
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise ValueError(f"{shown(raw)} is not a duration: use e.g. 72h, 90m or 30s")
        seconds = parse_duration(str(raw))
        if problem := _range_problem(seconds, self.low_s, None, self.format, ""):
            raise ValueError(problem)
        return seconds

    def format(self, value: float) -> str:
        text = format_duration(value)
        # format_duration rounds to whole seconds: show what is really used.
        return text if parse_duration(text) == value else f"{value:g}s"


class Size(Parser[int]):
    """Bytes, written ``64KiB``, ``10MB``, ``1g`` or a bare number, within ``low..high``."""

    metavar = "SIZE"

    def __init__(self, low: int | None = None, high: int | None = None, why: str = "") -> None:
        self.low, self.high, self.why = low, high, why

    def parse(self, raw: object) -> int:
        if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
            size = raw
        elif isinstance(raw, str):
            size = parse_size(raw)
        else:
            raise ValueError(f"{shown(raw)} is not a size: use e.g. 65536, 64KiB or 10MB")
        if problem := _range_problem(size, self.low, self.high, self._bytes, self.why):
            raise ValueError(problem)
        return size

    def format(self, value: int) -> str:
        return format_size(value)

    @staticmethod
    def _bytes(value: int) -> str:
        text = format_size(value)
        return text if text == str(value) else f"{text} ({value} bytes)"


class Choice(Parser[str]):
    """One of a few words, in any case."""

    def __init__(self, *options: str) -> None:
        self.options = options
        self.metavar = "[" + "|".join(options) + "]"

    def parse(self, raw: object) -> str:
        if isinstance(raw, str) and raw.strip().lower() in self.options:
            return raw.strip().lower()
        raise ValueError(f"{shown(raw)} is not one of {', '.join(self.options)}")


class FilePath(Parser[Path]):
    """A file name; with ``exists`` the file must be there now."""

    metavar = "FILE"

    def __init__(self, *, exists: bool = False) -> None:
        self.exists = exists

    def parse(self, raw: object) -> Path:
        if not isinstance(raw, str | os.PathLike) or not str(raw).strip():
            raise ValueError(f"{shown(raw)} is not a file name")
        path = Path(raw)
        if self.exists and not path.is_file():
            raise ValueError(f"{shown(str(path))} does not exist or is not a file")
        return path


class Flag(Parser[bool]):
    """On or off: ``true``/``false`` in TOML, ``1``/``0``, ``yes``/``no``, ``on``/``off``."""

    metavar = "BOOL"

    def parse(self, raw: object) -> bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise ValueError(f"{shown(raw)} is not true or false")

    def format(self, value: bool) -> str:
        return "true" if value else "false"


class Many(Parser[tuple[Any, ...]]):
    """Several values (a repeated flag, a TOML list, or text split at commas and spaces).

    Text is split wherever it comes from, a flag's value or a list's item included:
    ``--relay "A,B"`` is two relays, as the same text in an environment variable is.
    """

    def __init__(self, item: Parser[Any]) -> None:
        self.item = item
        self.metavar = item.metavar

    def parse(self, raw: object) -> tuple[Any, ...]:
        if isinstance(raw, str):
            raw = [raw]
        elif not isinstance(raw, list | tuple):
            raise ValueError(f"{shown(raw)} is not a list")
        items: list[object] = []
        for entry in raw:
            if isinstance(entry, str):
                items.extend(part for part in re.split(r"[,\s]+", entry) if part)
            else:
                items.append(entry)
        values, problems = [], []
        for item in items:
            try:
                values.append(self.item.parse(item))
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        return tuple(values)

    def format(self, value: tuple[Any, ...]) -> str:
        return ", ".join(self.item.format(item) for item in value) if value else "none"
