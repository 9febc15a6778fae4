"""Stall detection for a load (server.stallTimeoutMs): a load whose progress has not moved for
that long has failed, whatever server.readyTimeoutMs still allows.

Progress is the bytes llama-server has read of the model file (what the load percentage is
made of). Only a load that reports that number can be judged: with mmap on, or before the
first byte is read, only the ready deadline applies. A percentage that reaches 100 is not a
stall either: the warm-up after reading has no progress signal of its own.

Pure: the lifecycle feeds observations in; this module keeps no clock and does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StallDetector:
    timeout: float  # seconds; 0 turns detection off
    _value: int | None = None
    _since: float = 0.0
    _percent: float | None = None

    def observe(self, now: float, read_bytes: int | None, percent: float | None) -> str | None:
        """Feed the latest progress; returns why the load stalled, or None while it moves."""
        if not self.timeout or read_bytes is None or percent is None or percent >= 99.0:
            self._value = None
            return None
        if read_bytes != self._value:
            self._value, self._since, self._percent = read_bytes, now, percent
            return None
        stalled_for = now - self._since
        if stalled_for < self.timeout:
            return None
        return (f"stalled at {self._percent:.0f}% for {stalled_for:.0f} s "
                "(server.stallTimeoutMs)")
