"""Following HTTP/1.1 chunked framing without decoding it.

When llama-server streams (chunked) and the client is answered chunked too, the proxy can
forward llama-server's bytes exactly as they arrive: re-encoding each event would cost a
decode, a copy and an extra Python call chain per SSE event for nothing. What the proxy still
has to know is where the body ends (the last chunk and its trailer), since the upstream
connection stays open after it. `ChunkFollower` tracks that across reads that split the
framing anywhere, looking only at the size lines and the CRLF after each chunk's data.

It is strict, as RFC 9112 §7.1 has it: a size is 1 to 16 hex digits and nothing else (no
`0x`, `_`, sign or blank, which Python's `int(x, 16)` would take), optionally followed by
chunk extensions after `;`; each line ends in CRLF (a bare LF is tolerated, as most servers
do); the data of each chunk is followed by CRLF. Anything else is a FramingError that says
what was wrong: bytes that disagree about where a chunk ends must not be forwarded as if
they were a body.
"""

from __future__ import annotations

MAX_LINE = 4096  # a chunk-size line (or a trailer line) longer than this is not HTTP
MAX_SIZE_DIGITS = 16  # a 64-bit size; more digits is a flood, not a chunk
_HEX = frozenset(b"0123456789abcdefABCDEF")


class FramingError(ValueError):
    """The bytes are not valid chunked encoding."""


class ChunkFollower:
    """Feed it the body bytes in order (`feed(buf, n)` for buf[:n]); it answers where the body
    ends in that piece, or -1 while it goes on."""

    def __init__(self) -> None:
        self.owed = 0  # bytes of the current chunk's data not yet seen
        self.crlf_owed = b""  # what is still due of the CRLF after that data
        self.partial = b""  # the start of a size or trailer line cut off by the last piece
        self.in_trailer = False  # after the last (zero-size) chunk: lines until an empty one
        self.at_boundary = True  # between chunks: an event can be added here in framing

    def feed(self, buf: bytes | bytearray, n: int) -> int:
        pos = self.owed
        if pos >= n:  # all of it is chunk data
            self.owed = pos - n
            self.at_boundary = False
            return -1
        self.owed = 0
        pos = self._crlf(buf, pos, n)
        partial = self.partial
        while pos < n:
            eol = buf.find(b"\n", pos, n)
            if eol < 0:
                partial += buf[pos:n]
                if len(partial) > MAX_LINE:
                    raise FramingError(f"chunk-size line longer than {MAX_LINE} bytes")
                self.partial, self.at_boundary = partial, False
                return -1
            line = partial + buf[pos:eol] if partial else buf[pos:eol]
            partial = b""
            if len(line) > MAX_LINE:
                raise FramingError(f"chunk-size line longer than {MAX_LINE} bytes")
            pos = eol + 1
            if self.in_trailer:
                if line in (b"", b"\r"):
                    self.partial = b""
                    return pos
                continue
            size = chunk_size(line)
            if not size:
                self.in_trailer = True
                continue
            if pos + size > n:  # the data runs on into the next piece
                self.partial, self.owed = b"", pos + size - n
                self.crlf_owed, self.at_boundary = b"\r\n", False
                return -1
            pos = self._crlf(buf, pos + size, n, due=b"\r\n")
        self.partial = b""
        self.at_boundary = not self.owed and not self.crlf_owed and not self.in_trailer
        return -1

    def _crlf(self, buf: bytes | bytearray, pos: int, n: int, due: bytes | None = None) -> int:
        """Check the CRLF that must follow a chunk's data (`due`, else what an earlier piece
        left owing); returns the position after what of it this piece holds."""
        want = self.crlf_owed if due is None else due
        if not want:
            return pos
        got = bytes(buf[pos:min(n, pos + len(want))])
        if got != want[:len(got)]:
            raise FramingError(f"chunk data not followed by CRLF (found {got!r}): the chunk "
                               "is longer than its size line says")
        self.crlf_owed = want[len(got):]
        return pos + len(got)


def chunk_size(line: bytes | bytearray) -> int:
    """The size a chunk-size line (without its LF) announces; FramingError unless it is
    1-16 hex digits, optionally followed by `;extensions`, and a CR."""
    if line.endswith(b"\r"):
        line = line[:-1]
    digits, _, _extensions = bytes(line).partition(b";")  # extensions mean nothing to us
    if not digits or len(digits) > MAX_SIZE_DIGITS or not _HEX.issuperset(digits):
        what = "too long" if len(digits) > MAX_SIZE_DIGITS else "not hex digits"
        raise FramingError(f"bad chunk-size line {bytes(line[:40])!r}: the size is {what} "
                           f"(1 to {MAX_SIZE_DIGITS} hex digits, nothing else)")
    return int(digits, 16)
