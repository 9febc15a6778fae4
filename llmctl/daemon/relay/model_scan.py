"""The top-level `model` of a JSON object body too large to parse (over overrides.PARSE_LIMIT),
found without parsing it: a scan of the top-level object's keys that skips every value but
`model`'s.

Routing by model needs the name; parsing a 60 MiB body (a base64 image) would stall every
other request of the gevent worker and cost several times its size in memory. The scan keeps
nothing but positions: strings are skipped with `find` (memchr speed, so a long base64 string
costs next to nothing), nested objects and arrays by counting brackets outside strings. It
works on anything with `find` and byte indexing: bytes, or a spooled body's mmap
(bodies.SpooledBody.view).

As with json.loads, the last `model` key wins. A body that is not a JSON object, or breaks off,
names no model (llama-server then answers it with its own error).
"""

from __future__ import annotations

import json
import re
from typing import Any

_SPACE = re.compile(rb"[ \t\r\n]*")
_STRUCTURE = re.compile(rb'["{}\[\]]')  # what matters inside a nested value
_SCALAR_END = re.compile(rb"[,}\] \t\r\n]")
_BACKSLASH = 0x5C
MAX_NAME = 4096  # a longer `model` string is not a name (and is not decoded)


class _Broken(Exception):
    """Not a JSON object, or it breaks off."""


def top_level_model(buf: Any) -> str | None:
    """The value of the top-level `model` key when it is a string, else None."""
    try:
        return _scan(buf)
    except _Broken:
        return None


def _scan(buf: Any) -> str | None:
    size = len(buf)
    pos = _skip_space(buf, 0)
    if pos >= size or buf[pos] != ord("{"):
        raise _Broken
    pos = _skip_space(buf, pos + 1)
    if pos < size and buf[pos] == ord("}"):
        return None
    found: str | None = None
    while True:
        if pos >= size or buf[pos] != ord('"'):
            raise _Broken
        end = _string_end(buf, pos + 1)
        is_model = end - pos - 2 <= 32 and _decode(buf[pos:end]) == "model"
        pos = _skip_space(buf, end)
        if pos >= size or buf[pos] != ord(":"):
            raise _Broken
        pos = _skip_space(buf, pos + 1)
        if pos >= size:
            raise _Broken
        start = pos
        pos = _value_end(buf, pos)
        if is_model:
            found = None
            if buf[start] == ord('"') and pos - start <= MAX_NAME + 2:
                value = _decode(buf[start:pos])
                found = value if isinstance(value, str) else None
        pos = _skip_space(buf, pos)
        if pos >= size:
            raise _Broken
        if buf[pos] == ord("}"):
            return found
        if buf[pos] != ord(","):
            raise _Broken
        pos = _skip_space(buf, pos + 1)


def _skip_space(buf: Any, pos: int) -> int:
    match = _SPACE.match(buf, pos)
    return match.end() if match else pos


def _string_end(buf: Any, pos: int) -> int:
    """The index after the closing quote of a string whose text starts at `pos`."""
    while True:
        quote = buf.find(b'"', pos)
        if quote < 0:
            raise _Broken
        back = quote - 1
        while back >= pos and buf[back] == _BACKSLASH:
            back -= 1
        if (quote - 1 - back) % 2 == 0:  # an even run of backslashes: the quote is not escaped
            return quote + 1
        pos = quote + 1


def _value_end(buf: Any, pos: int) -> int:
    """The index after the value starting at `pos`."""
    first = buf[pos]
    if first == ord('"'):
        return _string_end(buf, pos + 1)
    if first in (ord("{"), ord("[")):
        depth = 0
        while True:
            match = _STRUCTURE.search(buf, pos)
            if match is None:
                raise _Broken
            at = match.start()
            char = buf[at]
            if char == ord('"'):
                pos = _string_end(buf, at + 1)
                continue
            depth += 1 if char in (ord("{"), ord("[")) else -1
            pos = at + 1
            if depth == 0:
                return pos
    match = _SCALAR_END.search(buf, pos)  # a number, true, false or null
    if match is None or match.start() == pos:
        raise _Broken
    return match.start()


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _Broken from None
