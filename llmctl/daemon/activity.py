"""The activity log: a bounded ring of the proxy worker's most recent requests, in memory.

Each entry is one finished request (time, client kind, route, model, status, duration, time to
first byte, token figures, tokens/s, error) with a sequence number, so a follower can ask for
what came after the last entry it saw. The ring lives in the proxy worker and is not kept
across a proxy-worker restart (the durable totals are the metrics'); `seq` restarts at 1 then.

Followers (`GET /activity?follow=1`) park on an event that every append replaces, the way the
hub wakes its waiters; the ring itself never blocks or allocates beyond its size.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from typing import Any

from gevent.event import Event

HEARTBEAT_SECONDS = 15.0  # a blank line this often tells a follower (and us) the link is alive


class ActivityLog:
    def __init__(self, size: int):
        self._ring: deque[dict[str, Any]] = deque(maxlen=size)
        self._seq = 0
        self._appended = Event()

    @property
    def size(self) -> int:
        return self._ring.maxlen or 0

    def append(self, entry: dict[str, Any]) -> None:
        self._seq += 1
        entry["seq"] = self._seq
        self._ring.append(entry)
        appended, self._appended = self._appended, Event()
        appended.set()

    def since(self, seq: int, limit: int | None = None) -> list[dict[str, Any]]:
        """Entries after `seq`, oldest first; at most the newest `limit` of them. A `seq`
        from before a proxy-worker restart (beyond ours) means everything."""
        if seq > self._seq:
            seq = 0
        entries = [e for e in self._ring if e["seq"] > seq]
        if limit is None:
            return entries
        return entries[-limit:] if limit > 0 else []

    def follow(self, seq: int, limit: int | None) -> Iterator[bytes]:
        """NDJSON: the entries after `seq` (the newest `limit`), then each new one as it
        comes, with a blank line after every quiet HEARTBEAT_SECONDS. Ends when the client
        goes away (the server's write fails and closes this generator)."""
        appended = self._appended
        entries = self.since(seq, limit)
        while True:
            if entries:
                seq = entries[-1]["seq"]
                yield b"".join(json.dumps(e).encode() + b"\n" for e in entries)
            # an append while the write above was parked has set this event already
            if not appended.wait(HEARTBEAT_SECONDS):
                yield b"\n"
            appended = self._appended
            entries = self.since(seq)
