"""What one HTTP client of llmctld may hold, read from the `daemon.` keys of the global config.

The proxy worker reads these at every new connection and every request body (a reload applies
them to what comes next): a deadline for a request's line and headers, one for each piece of a
body, how long a kept-alive connection may sit idle, how many connections and how many large
bodies may be open at once, and how large a body may be.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmctl.core.config import GlobalConfig
from llmctl.core.durations import parse_duration

MIB = 1024 * 1024
LARGE_BODY = MIB  # bodies over this count against max_large_bodies (and are spooled to disk)
BODY_PIECE = 64 * 1024  # a body is read in pieces of this size, each within body_timeout


@dataclass(frozen=True)
class ClientLimits:
    header_timeout: float = 10.0
    keepalive_timeout: float = 60.0
    body_timeout: float = 30.0
    max_connections: int = 512
    max_body: int = 64 * MIB
    max_large_bodies: int = 8

    @classmethod
    def of(cls, config: GlobalConfig) -> ClientLimits:
        daemon = config.data["daemon"]
        return cls(
            header_timeout=parse_duration(daemon["header_timeout"]) or cls.header_timeout,
            keepalive_timeout=parse_duration(daemon["keepalive_timeout"]) or
            cls.keepalive_timeout,
            body_timeout=parse_duration(daemon["body_timeout"]) or cls.body_timeout,
            max_connections=int(daemon["max_connections"]),
            max_body=int(daemon["max_body"]) * MIB,
            max_large_bodies=int(daemon["max_large_bodies"]),
        )
