"""Parsers of setting values (tunnel_client/protocol/parsers.py): text, TOML and Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tunnel_client.protocol.parsers import (
    Choice,
    Duration,
    FilePath,
    Flag,
    Many,
    Number,
    Parser,
    Size,
    Text,
    Whole,
    shown,
)


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("abc", '"abc"'),
        ('say "hi"', '"say \\"hi\\""'),
        (8080, "8080"),
        (1.5, "1.5"),
        (True, "true"),
        (["a", 1], '["a", 1]'),
        ({"x": 1}, "{x = 1}"),
        (None, "None"),
    ],
)
def test_raw_values_are_shown_as_toml_writes_them(raw: object, text: str) -> None:
    assert shown(raw) == text


@pytest.mark.parametrize(
    ("parser", "raw", "value"),
    [
        (Text(), "x", "x"),
        (Whole(0, 65535), "8080", 8080),
        (Whole(0, 65535), " +80 ", 80),
        (Whole(0, 65535), 0, 0),
        (Whole(1), 10**9, 10**9),
        (Whole(high=5), "-3", -3),
        (Number(0), "2.5", 2.5),
        (Number(0), 3, 3.0),
        (Duration(), "90m", 5400.0),
        (Duration(), 30, 30.0),
        (Duration(low_s=1), 1.5, 1.5),
        (Size(), "64KiB", 65536),
        (Size(), 1000, 1000),
        (Choice("debug", "info"), " INFO ", "info"),
        (FilePath(), "a/b.pem", Path("a/b.pem")),
        (FilePath(), Path("c"), Path("c")),
        (Flag(), "yes", True),
        (Flag(), "0", False),
        (Flag(), False, False),
        (Many(Whole()), "1, 2 3", (1, 2, 3)),
        (Many(Whole()), [4, "5"], (4, 5)),
        (Many(Text()), (), ()),
    ],
)
def test_good_values(parser: Parser[Any], raw: object, value: object) -> None:
    assert parser.parse(raw) == value


@pytest.mark.parametrize(
    ("parser", "raw", "message"),
    [
        (Text(), 5, "5 is not text: put it in quotes"),
        (Text(), "  ", '"  " is empty'),
        (Text(check=lambda t: "too short" if len(t) < 3 else None), "ab", "too short"),
        (Whole(), "abc", '"abc" is not a whole number'),
        (Whole(), "1.5", '"1.5" is not a whole number'),
        (Whole(), 1.0, "1.0 is not a whole number"),
        (Whole(), True, "true is not a whole number"),
        (Whole(1, 10), 11, "11 is not in 1..10"),
        (Whole(1), 0, "0 is below the minimum 1"),
        (Whole(high=5), 6, "6 is above the maximum 5"),
        (Number(0), "many", '"many" is not a number'),
        (Number(0), "nan", '"nan" is not a number'),
        (Number(0), float("inf"), "Infinity is not a number"),
        (Number(0), False, "false is not a number"),
        (Number(0), -0.5, "-0.5 is below the minimum 0"),
        (Duration(), "soon", '"soon" is not a duration: use e.g. 72h'),
        (Duration(), True, "true is not a duration: use e.g. 72h, 90m or 30s"),
        (Duration(), 0, '"0" is not a duration between 1ms and 10 years'),
        (Duration(low_s=1), "500ms", "500ms is below the minimum 1s"),
        (Size(), "big", '"big" is not a size'),
        (Size(), -1, "-1 is not a size: use e.g. 65536, 64KiB or 10MB"),
        (Size(), 1.5, "1.5 is not a size"),
        (Size(1024), "1000", "1000 is below the minimum 1KiB (1024 bytes)"),
        (Size(0, 2048, why="it must fit"), "4KiB", "4KiB (4096 bytes) is above the maximum "),
        (Choice("a", "b"), "c", '"c" is not one of a, b'),
        (Choice("a", "b"), 1, "1 is not one of a, b"),
        (FilePath(), "", '"" is not a file name'),
        (FilePath(), 7, "7 is not a file name"),
        (Flag(), "maybe", '"maybe" is not true or false'),
        (Flag(), 1, "1 is not true or false"),
        (Many(Whole()), 5, "5 is not a list"),
        (Many(Whole()), "1,x,y", '"x" is not a whole number; "y" is not a whole number'),
    ],
)
def test_bad_values_say_why_quoting_the_value(
    parser: Parser[Any], raw: object, message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        parser.parse(raw)
    assert str(caught.value).startswith(message)


def test_a_size_limit_says_why(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"above the maximum 2KiB \(2048 bytes\): it must fit"):
        Size(0, 2048, why="it must fit").parse("4KiB")


def test_an_existing_file_must_be_a_file(tmp_path: Path) -> None:
    there = tmp_path / "ca.pem"
    there.write_text("x")
    assert FilePath(exists=True).parse(str(there)) == there
    for path in (tmp_path / "missing.pem", tmp_path):
        with pytest.raises(ValueError, match="does not exist or is not a file"):
            FilePath(exists=True).parse(str(path))


@pytest.mark.parametrize(
    ("parser", "value", "text"),
    [
        (Text(), "x", "x"),
        (Whole(), 5, "5"),
        (Number(), 2.0, "2"),
        (Number(), 0.25, "0.25"),
        (Duration(), 5400.0, "1h30m"),
        (Duration(), 1.5, "1.5s"),
        (Size(), 262144, "256KiB"),
        (Size(), 1000, "1000"),
        (Flag(), True, "true"),
        (Flag(), False, "false"),
        (FilePath(), Path("/a/b"), "/a/b"),
        (Many(Duration()), (60.0, 7200.0), "1m, 2h"),
        (Many(Text()), (), "none"),
    ],
)
def test_values_are_formatted_as_a_user_writes_them(
    parser: Parser[Any], value: object, text: str
) -> None:
    assert parser.format(value) == text


def test_metavars() -> None:
    assert Choice("a", "b").metavar == "[a|b]"
    assert Many(Duration()).metavar == "DURATION"
    assert Text().metavar == "TEXT"


def test_the_base_parser_is_abstract() -> None:
    with pytest.raises(NotImplementedError):
        Parser().parse("x")
