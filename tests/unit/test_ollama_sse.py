"""The Ollama facade's SSE re-parser (ollama/stream.py sse_events): each event once, wherever
the reads break, and one event's size bounded."""

from __future__ import annotations

from collections.abc import Iterator

from llmctl.daemon.ollama import stream
from llmctl.daemon.ollama.stream import MAX_EVENT, sse_events

STREAM = (b': keep-alive\n\ndata: {"a": 1}\r\n\r\ndata: {"b": "x\\ny"}\n\ndata: [DONE]\n\n'
          b'data: not json\n\ndata: {"c": [1, 2]}\n\n')
EVENTS = [{"a": 1}, {"b": "x\ny"}, {"c": [1, 2]}]


def test_every_split_into_two_reads() -> None:
    for cut in range(len(STREAM) + 1):
        assert list(sse_events(iter([STREAM[:cut], STREAM[cut:]]))) == EVENTS, cut


def test_byte_by_byte_and_all_at_once() -> None:
    assert list(sse_events(iter([STREAM[i:i + 1] for i in range(len(STREAM))]))) == EVENTS
    assert list(sse_events(iter([STREAM]))) == EVENTS


def test_each_byte_is_searched_about_once(monkeypatch) -> None:
    """A long event arriving in small reads: the searches cover each byte a bounded number of
    times (the old parser searched the whole pending buffer again after every read)."""
    searched = 0
    real = stream._event_end

    def counting(buffer: bytearray, start: int) -> tuple[int, int] | None:
        nonlocal searched
        searched += len(buffer) - start
        return real(buffer, start)

    monkeypatch.setattr(stream, "_event_end", counting)
    event = b'data: {"t": "' + b"x" * 200_000 + b'"}\n\n'
    reads = [event[i:i + 100] for i in range(0, len(event), 100)]
    assert list(sse_events(iter(reads * 3))) == [{"t": "x" * 200_000}] * 3
    assert searched < 3 * len(event) * 2  # linear; quadratic would be ~1000x this


def test_an_event_past_the_cap_ends_the_stream_with_an_error() -> None:
    read = 0

    def endless() -> Iterator[bytes]:
        nonlocal read
        yield b'data: {"ok": 1}\n\n'
        while True:
            read += 1
            yield b"data: " + b"x" * 65536

    events = list(sse_events(endless()))
    assert events[0] == {"ok": 1}
    assert len(events) == 2 and "larger than 16 MiB" in events[1]["error"]
    assert read * 65536 <= MAX_EVENT + 2 * 65536  # it stopped reading at the cap
