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


# --- strictness: what int(x, 16) would take is not a chunk size -----------------------------


@pytest.mark.parametrize("size", [b"0x1a", b"1_0", b"+1a", b" 1a", b"1a ", b"\t1a", b"-0",
                                  b"", b"1" * 17])
def test_a_size_is_hex_digits_and_nothing_else(size: bytes) -> None:
    body = size + b"\r\n" + b"x" * 26 + b"\r\n0\r\n\r\n"
    with pytest.raises(FramingError, match="bad chunk-size line"):
        ends([body])


@pytest.mark.parametrize("cut", range(1, 12))
def test_a_bad_size_is_refused_however_the_reads_split_it(cut: int) -> None:
    body = b"5\r\nhello\r\n0x5\r\nhello\r\n0\r\n\r\n"
    follower = ChunkFollower()
    with pytest.raises(FramingError):
        for piece in (body[:cut], body[cut:]):
            follower.feed(piece, len(piece))


def test_sixteen_hex_digits_and_extensions_are_fine() -> None:
    body = b"0000000000000005;a=b;c\r\nhello\r\n0;last\r\n\r\n"
    assert ends([body]) == [len(body)]


@pytest.mark.parametrize("after", [b"XX", b"\n\n", b"lo\r\n", b" \r\n"])
def test_chunk_data_must_be_followed_by_crlf(after: bytes) -> None:
    body = b"3\r\nhel" + after + b"0\r\n\r\n"
    with pytest.raises(FramingError, match="not followed by CRLF"):
        ends([body])


@pytest.mark.parametrize("cut", range(1, 15))
def test_the_crlf_after_data_is_checked_across_reads(cut: int) -> None:
    good = b"5\r\nhello\r\n0\r\n\r\n"
    assert ends([good[:cut], good[cut:]]) == [-1, len(good) - cut]
    bad = b"5\r\nhello\rX0\r\n\r\n"
    follower = ChunkFollower()
    with pytest.raises(FramingError):
        for piece in (bad[:cut], bad[cut:]):
            follower.feed(piece, len(piece))


def test_a_size_line_is_bounded_even_when_it_arrives_whole() -> None:
    body = b"5;" + b"e" * 5000 + b"\r\nhello\r\n0\r\n\r\n"
    with pytest.raises(FramingError, match="longer than 4096"):
        ends([body])


def test_bare_lf_line_ends_are_tolerated() -> None:
    body = b"5\nhello\r\n0\n\n"
    assert ends([body]) == [len(body)]
