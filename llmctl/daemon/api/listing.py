"""A long listing as JSON without holding up the proxy's event loop.

Summarising and encoding a thousand models is tens of milliseconds of Python on the loop that
also relays every stream; done in one go, each stream in flight pauses for all of it. Here the
items are summarised and encoded in batches with a yield to the loop after each, so a stream's
next chunk waits at most for one batch. (An encoder thread would not help: the JSON encoder
holds the GIL for the whole call.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import gevent

BATCH = 64  # items summarised and encoded between two yields to the loop
# sleep(0) may resume this greenlet before the loop polls for I/O again; any positive
# delay waits for the next loop iteration, in which the streams' sockets are read
YIELD = 0.0001


def encode_items(items: Iterable[Any], summarise: Callable[[Any], Any]) -> str:
    """`[summarise(item), ...]` as JSON text, yielding to the loop every BATCH items."""
    parts: list[str] = []
    for n, item in enumerate(items, 1):
        parts.append(json.dumps(summarise(item)))
        if n % BATCH == 0:
            gevent.sleep(YIELD)  # the streams go on
    return "[" + ", ".join(parts) + "]"


def encode_object(fields: dict[str, Any], encoded: dict[str, str]) -> str:
    """A JSON object of `fields` (encoded here) and `encoded` (JSON text already), in that
    order: a listing that appears under two keys is encoded once."""
    parts = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in fields.items()]
    parts += [f"{json.dumps(k)}: {text}" for k, text in encoded.items()]
    return "{" + ", ".join(parts) + "}\n"
