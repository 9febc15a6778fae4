"""Durations as people write them in YAML (`30m`, `1h30m`, `90s`, `500ms`, `2.5h`, `never`) and
as people read them back (`12m 04s`).

One parser for every duration key (daemon.idle_unload and its per-model override,
daemon.queue_timeout); a bare number is seconds. This module only converts text; config.py
decides which keys are durations and what `0` or `never` mean for each.
"""

from __future__ import annotations

import math
import re
from typing import Any

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
NEVER = ("never", "off", "none")
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_WHOLE = re.compile(r"^(?:\s*\d+(?:\.\d+)?\s*(?:ms|s|m|h|d))+\s*$")


class DurationError(ValueError):
    """Text that is not a duration; the message says what would be."""


def parse_duration(value: Any) -> float | None:
    """Seconds, or None for `never` (also `off`, `none`, YAML's null and false). A bare
    number, or a string of digits, is seconds."""
    if value is None or value is False:
        return None
    if isinstance(value, bool):  # true has no length
        raise DurationError(f"expected a duration such as 30m, 90s or never, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise DurationError(f"a duration cannot be negative or infinite, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise DurationError(f"expected a duration such as 30m, 90s or never, got {value!r}")
    text = value.strip().lower()
    if text in NEVER:
        return None
    try:
        return parse_duration(float(text)) if text else _bad(value)
    except ValueError:
        pass
    if not _WHOLE.fullmatch(text):
        return _bad(value)
    return sum(float(number) * UNITS[unit] for number, unit in _PART.findall(text))


def _bad(value: Any) -> float:
    raise DurationError(f"{value!r} is not a duration: write a number with a unit (ms, s, m, h, "
                        "d), e.g. 30m, 1h30m, 90s, or never")


def format_duration(seconds: float, compact: bool = False) -> str:
    """`12m 04s`, `45s`, `2h 05m`, `3d 04h`: two units at most, for countdowns. `compact`
    drops a zero second unit, for settings (`30m`, `2h`). Rounded up, so a countdown drawn
    once a second from a fixed deadline shows every second (rounding or truncating the time
    left, taken at slightly uneven instants, skips one now and then)."""
    whole = max(0, int(math.ceil(seconds)))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    for big, unit, small, small_unit in ((days, "d", hours, "h"), (hours, "h", minutes, "m"),
                                         (minutes, "m", secs, "s")):
        if big:
            return f"{big}{unit}" if compact and not small else f"{big}{unit} {small:02d}{small_unit}"
    return f"{secs}s"
