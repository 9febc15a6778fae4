"""The activity log: a bounded ring of the proxy worker's most recent requests, in memory.

Each entry is one finished request (time, client kind, route, model, status, duration, time to
first byte, token figures, tokens/s, error) with a sequence number, so a follower can ask for
what came after the last entry it saw. The ring holds each entry as its recorder made it (the
observer's tuple) and turns it into a dict with `render` only when someone reads it: a request
nobody watches costs one tuple. The ring lives in the proxy worker and is not kept
across a proxy-worker restart (the durable totals are the metrics'); `seq` restarts at 1 then.

Followers (`GET /activity?follow=1`) park on an event that every append replaces, the way the
hub wakes its waiters; the ring itself never blocks or allocates beyond its size.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from gevent.event import Event

HEARTBEAT_SECONDS = 15.0  # a blank line this often tells a follower (and us) the link is alive


class ActivityLog:
    def __init__(self, size: int, render: Callable[[Any], dict[str, Any]] = dict):
        self._ring: deque[tuple[int, Any]] = deque(maxlen=size)  # (seq, entry)
        self._render = render
        self._seq = 0
        self._appended = Event()
        self._followers = 0  # parked on _appended: only then does an append need to wake it

    @property
    def size(self) -> int:
        return self._ring.maxlen or 0

    def append(self, entry: Any) -> None:
        self._seq += 1
        self._ring.append((self._seq, entry))
        if self._followers:
            appended, self._appended = self._appended, Event()
            appended.set()

    def since(self, seq: int, limit: int | None = None) -> list[dict[str, Any]]:
        """Entries after `seq`, oldest first; at most the newest `limit` of them. A `seq`
        from before a proxy-worker restart (beyond ours) means everything."""
        if seq > self._seq:
            seq = 0
        # only the newest entries are asked for, mostly: walk back from the end
        picked: list[tuple[int, Any]] = []
        for item in reversed(self._ring):
            if item[0] <= seq or (limit is not None and len(picked) >= limit):
                break
            picked.append(item)
        return [{**self._render(entry), "seq": n} for n, entry in reversed(picked)]

    def follow(self, seq: int, limit: int | None) -> Iterator[bytes]:
        """NDJSON: the entries after `seq` (the newest `limit`), then each new one as it
        comes, with a blank line after every quiet HEARTBEAT_SECONDS. Ends when the client
        goes away (the server's write fails and closes this generator)."""
        self._followers += 1
        try:
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
        finally:
            self._followers -= 1
