"""Following HTTP/1.1 chunked framing without decoding it.

When llama-server streams (chunked) and the client is answered chunked too, the proxy can
forward llama-server's bytes exactly as they arrive: re-encoding each event would cost a
decode, a copy and an extra Python call chain per SSE event for nothing. What the proxy still
has to know is where the body ends (the last chunk and its trailer), since the upstream
connection stays open after it. `ChunkFollower` tracks that across reads that split the
framing anywhere, looking only at the size lines.
"""

from __future__ import annotations

MAX_LINE = 4096  # a chunk-size line (or a trailer line) longer than this is not HTTP


class FramingError(ValueError):
    """The bytes are not valid chunked encoding."""


class ChunkFollower:
    """Feed it the body bytes in order (`feed(buf, n)` for buf[:n]); it answers where the body
    ends in that piece, or -1 while it goes on."""

    def __init__(self) -> None:
        self.owed = 0  # bytes of the current chunk's data (and its CRLF) not yet seen
        self.partial = b""  # the start of a size or trailer line cut off by the last piece
        self.in_trailer = False  # after the last (zero-size) chunk: lines until an empty one
        self.at_boundary = True  # between chunks: an event can be added here in framing

    def feed(self, buf: bytes | bytearray, n: int) -> int:
        pos = self.owed
        if pos >= n:  # all of it is chunk data
            self.owed = pos - n
            self.at_boundary = not self.owed
            return -1
        partial = self.partial
        while pos < n:
            eol = buf.find(b"\n", pos, n)
            if eol < 0:
                partial += buf[pos:n]
                if len(partial) > MAX_LINE:
                    raise FramingError("chunk-size line too long")
                self.partial, self.owed, self.at_boundary = partial, 0, False
                return -1
            line = partial + buf[pos:eol] if partial else buf[pos:eol]
            partial = b""
            pos = eol + 1
            if self.in_trailer:
                if not line.strip():
                    self.partial, self.owed = b"", 0
                    return pos
                continue
            size = _chunk_size(line)
            if size:
                pos += size + 2
            else:
                self.in_trailer = True
        self.partial, self.owed = b"", pos - n
        self.at_boundary = not self.owed and not self.in_trailer
        return -1


def _chunk_size(line: bytes | bytearray) -> int:
    if b";" in line:  # chunk extensions (";name=value") are allowed and mean nothing to us
        line = line.split(b";", 1)[0]
    try:
        size = int(line, 16)  # int() ignores the CR (whitespace) before the LF
    except ValueError:
        raise FramingError(f"bad chunk-size line {bytes(line[:40])!r}") from None
    if size < 0:
        raise FramingError(f"negative chunk size {size}")
    return size
