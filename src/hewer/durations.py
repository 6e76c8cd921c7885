"""Go-style duration strings ("1m", "90s", "1h30m", "250ms"), as the Hatchet wire uses them."""

from __future__ import annotations

import math
import re
from datetime import timedelta

from hewer.errors import HewerError

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")


# Longer than any timeout or interval anyone means; beyond it is a typo or an attack.
MAX_SECONDS = 10 * 365 * 86400.0


class InvalidDuration(HewerError, ValueError):
    """A duration string could not be parsed, or is out of range."""


def _bounded(seconds: float, text: str) -> timedelta:
    if not math.isfinite(seconds) or abs(seconds) > MAX_SECONDS:
        raise InvalidDuration(f"duration {text!r} is out of range (at most 10 years)")
    return timedelta(seconds=seconds)


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration such as ``"1h30m"``; a bare number means seconds."""
    s = text.strip()
    if not s:
        raise InvalidDuration("empty duration")
    try:
        number = float(s)
    except ValueError:
        pass
    else:
        return _bounded(number, text)
    pos = 0
    total = 0.0
    for match in _PART.finditer(s):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(s):
        raise InvalidDuration(f"invalid duration {text!r} (expected e.g. '30s', '5m', '1h30m')")
    return _bounded(total, text)


def format_duration(value: timedelta) -> str:
    """Render a timedelta the way the Hatchet SDK does: whole ``h``, ``m`` or ``s``."""
    seconds = value.total_seconds()
    if seconds < 0:
        raise InvalidDuration("negative duration")
    if seconds != int(seconds):
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    if whole and whole % 3600 == 0:
        return f"{whole // 3600}h"
    if whole and whole % 60 == 0:
        return f"{whole // 60}m"
    return f"{whole}s"
