"""shared.units.parse_duration: the durations users type."""

from __future__ import annotations

import datetime as dt

import pytest

from careline.shared.errors import ConfigError
from careline.shared.units import parse_duration

S = dt.timedelta(seconds=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", 30 * S),
        ("5m", 5 * 60 * S),
        ("24h", 24 * 3600 * S),
        ("7d", dt.timedelta(days=7)),
        ("2w", dt.timedelta(weeks=2)),
        ("90", 90 * S),  # bare numbers are seconds
        ("0", dt.timedelta(0)),
        ("0s", dt.timedelta(0)),
        ("1.5h", dt.timedelta(minutes=90)),
        ("0.5s", dt.timedelta(milliseconds=500)),
        ("007m", 7 * 60 * S),
        (" 5 m ", 5 * 60 * S),
        ("10\tm", 10 * 60 * S),
        ("\n15d\n", dt.timedelta(days=15)),
        ("52w", dt.timedelta(weeks=52)),
    ],
)
def test_parse_duration(text: str, expected: dt.timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", " ", "m", "h5", "5x", "5 minutes", "5min", "5mm", "-5m", "+5m", "1e3", "1.h", ".5h",
     "5M", "5H", "5 m s", "1,5h", "inf", "nan", "5m30s"],
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["99999999999d", "1" * 400 + "s"])
def test_parse_duration_out_of_range_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)
