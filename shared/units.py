"""Durations as users type them: '30s', '5m', '24h', '7d', '2w' (bare numbers: seconds)."""

from __future__ import annotations

import datetime as dt
import re

from careline.shared.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(text: str) -> dt.timedelta:
    match = _PATTERN.match(text)
    if not match:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 30s, 5m, 24h, 7d)")
    value, unit = match.groups()
    try:
        return dt.timedelta(seconds=float(value) * _UNITS[unit or "s"])
    except OverflowError:
        raise ConfigError(f"duration {text!r} is too long") from None
