"""Durations and sizes as people write them (tunnel_client/protocol/units.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.protocol.helpers import examples
from tunnel_client.protocol.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("72h", 259200.0),
        ("90m", 5400.0),
        ("1h30m", 5400.0),
        ("5s", 5.0),
        ("250ms", 0.25),
        ("2d", 172800.0),
        ("1d12h", 129600.0),
        ("0.5m", 30.0),
        ("1.5", 1.5),
        ("30", 30.0),
        ("  10S ", 10.0),
        ("1m30s500ms", 90.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "1h 30m", "h1", "1h-5m", "5 s", "1y", "abc"])
def test_parse_duration_refuses_non_durations(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration: use e\.g\. 72h"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0", "0s", "-1", "nan", "inf", "-inf", "0h0m", "1e300", "11000d"])
def test_parse_duration_refuses_durations_out_of_range(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration between 1ms and 10 years"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (259200, "72h"),
        (5400, "1h30m"),
        (3, "3s"),
        (60, "1m"),
        (3661, "1h1m1s"),
        (0.25, "250ms"),
        (59.6, "1m"),
        (7 * 86400, "7d"),
        (8 * 86400 + 3600, "8d1h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("65536", 65536),
        ("0", 0),
        ("10b", 10),
        ("64KiB", 65536),
        ("64k", 65536),
        ("64kb", 64000),
        ("10MB", 10_000_000),
        ("10MiB", 10 << 20),
        ("10m", 10 << 20),
        ("1g", 1 << 30),
        ("1GB", 10**9),
        ("1 GiB", 1 << 30),
        (" 2K ", 2048),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "k", "-1", "1.5m", "1 tb", "10 MB extra", "0x10"])
def test_parse_size_refuses_non_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@examples(200)
@given(st.integers(1, 10**7))
def test_property_formatted_durations_parse_back(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@examples(200)
@given(st.text(max_size=12))
def test_property_parsers_raise_only_value_error(text: str) -> None:
    for parse in (parse_duration, parse_size):
        try:
            value = parse(text)
        except ValueError:
            continue
        assert value >= 0


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0"),
        (1000, "1000"),
        (1024, "1KiB"),
        (262144, "256KiB"),
        (3 << 20, "3MiB"),
        (1 << 30, "1GiB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size
