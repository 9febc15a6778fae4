"""llmctl.daemon.backend.stall: a load whose read progress stops for stallTimeoutMs has stalled."""

from __future__ import annotations

from llmctl.daemon.backend.stall import StallDetector


def test_progress_that_stops_is_a_stall_after_the_timeout() -> None:
    detector = StallDetector(60.0)
    assert detector.observe(0.0, 100, 10.0) is None
    assert detector.observe(5.0, 430, 43.0) is None
    assert detector.observe(64.9, 430, 43.0) is None
    assert detector.observe(65.0, 430, 43.0) == "stalled at 43% for 60 s (server.stallTimeoutMs)"


def test_progress_that_moves_is_never_a_stall() -> None:
    detector = StallDetector(1.0)
    for second in range(100):
        assert detector.observe(float(second), second * 10, 1.0) is None


def test_no_signal_no_judgement() -> None:
    detector = StallDetector(1.0)
    assert detector.observe(0.0, None, None) is None  # spawning, or mmap: nothing is read
    assert detector.observe(100.0, None, None) is None
    assert detector.observe(0.0, 900, 99.0) is None  # read all: warming up
    assert detector.observe(100.0, 900, 99.0) is None


def test_the_clock_restarts_when_the_signal_comes_back() -> None:
    detector = StallDetector(10.0)
    detector.observe(0.0, 5, 5.0)
    detector.observe(8.0, None, None)
    assert detector.observe(12.0, 5, 5.0) is None
    assert detector.observe(22.0, 5, 5.0) is not None


def test_zero_turns_it_off() -> None:
    detector = StallDetector(0.0)
    detector.observe(0.0, 5, 5.0)
    assert detector.observe(1e6, 5, 5.0) is None
