"""ChunkFollower finds where a chunked body ends however the reads split it."""

from __future__ import annotations

import pytest

from llmctl.daemon.relay.chunked import ChunkFollower, FramingError

EVENTS = [b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n', b"data: [DONE]\n\n"]
BODY = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in EVENTS) + b"0\r\n\r\n"


def ends(pieces: list[bytes]) -> list[int]:
    follower = ChunkFollower()
    out = []
    for piece in pieces:
        buf = bytearray(piece) + b"\xff" * 7  # garbage beyond n must not be looked at
        out.append(follower.feed(buf, len(piece)))
    return out


def test_one_read_holding_the_whole_body_ends_at_its_last_byte() -> None:
    assert ends([BODY]) == [len(BODY)]


@pytest.mark.parametrize("cut", range(1, len(BODY)))
def test_a_split_anywhere_ends_at_the_same_byte(cut: int) -> None:
    assert ends([BODY[:cut], BODY[cut:]]) == [-1, len(BODY) - cut]


def test_byte_by_byte() -> None:
    result = ends([BODY[i:i + 1] for i in range(len(BODY))])
    assert result == [-1] * (len(BODY) - 1) + [1]


def test_bytes_after_the_body_are_not_part_of_it() -> None:
    assert ends([BODY + b"HTTP/1.1 200 OK\r\n"]) == [len(BODY)]


def test_extensions_and_trailers_are_followed() -> None:
    body = b"5;name=value\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"
    assert ends([body]) == [len(body)]


def test_boundary_between_chunks_is_known() -> None:
    follower = ChunkFollower()
    first = b"%x\r\n%s\r\n" % (len(EVENTS[0]), EVENTS[0])
    assert follower.feed(first[:-3], len(first) - 3) == -1
    assert not follower.at_boundary  # inside an event: nothing can be added in framing
    assert follower.feed(first[-3:], 3) == -1
    assert follower.at_boundary


@pytest.mark.parametrize("bad", [b"zz\r\nhello\r\n", b"-5\r\nhello\r\n", b"1" * 5000])
def test_what_is_not_chunked_encoding_is_refused(bad: bytes) -> None:
    with pytest.raises(FramingError):
        ChunkFollower().feed(bad, len(bad))
