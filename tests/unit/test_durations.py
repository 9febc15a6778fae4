"""llmctl.core.durations: the one parser for duration keys, and the countdown text."""

from __future__ import annotations

import pytest

from llmctl.core.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize("text, seconds", [
    ("30m", 1800.0), ("90s", 90.0), ("1h30m", 5400.0), ("1h 30m", 5400.0), ("2.5h", 9000.0),
    ("500ms", 0.5), ("2s", 2.0), ("1d", 86400.0), ("45", 45.0), ("0", 0.0), (" 10M ", 600.0),
    (120, 120.0), (0.25, 0.25), (0, 0.0),
])
def test_durations_parse_to_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["never", "Never", "off", "none", None, False])
def test_never_is_none(text: object) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize("text", ["", "soon", "30 minutes", "m30", "-5s", "1h-30m", "5x", True,
                                  -1, float("inf"), [30]])
def test_bad_durations_say_what_would_do(text: object) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(text)
    assert "30m" in str(info.value) or "negative" in str(info.value)


@pytest.mark.parametrize("seconds, text", [
    (724, "12m 04s"), (45, "45s"), (44.2, "45s"), (0, "0s"), (3600, "1h 00m"), (7500, "2h 05m"),
    (90000, "1d 01h"),
])
def test_countdown_text(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds, text", [(1800, "30m"), (2, "2s"), (5400, "1h 30m"),
                                           (7200, "2h")])
def test_compact_setting_text(seconds: float, text: str) -> None:
    assert format_duration(seconds, compact=True) == text
