"""anthropic_stream: a streamed Messages answer that does not open with message_start gets
one; everything else passes untouched, and closing reaches the proxy's iterable."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from llmctl.daemon.relay.anthropic_stream import serve

BLOCK_START = (b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
               b'"content_block":{"type":"text","text":""}}\n\n')
MESSAGE_START = b'event: message_start\ndata: {"type":"message_start","message":{}}\n\n'


class Upstream:
    def __init__(self, chunks: list[bytes], status: str = "200 OK",
                 content_type: str = "text/event-stream"):
        self.chunks, self.status, self.content_type = chunks, status, content_type
        self.closed = False

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response(self.status, [("Content-Type", self.content_type)])
        return self

    def __iter__(self) -> Any:
        return iter(self.chunks)

    def close(self) -> None:
        self.closed = True


def run(upstream: Upstream) -> bytes:
    started: list[str] = []
    body = serve(upstream, {}, lambda status, headers, exc=None: started.append(status),
                 lambda: "qwen3")
    try:
        return b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()


def test_a_missing_message_start_is_put_first() -> None:
    upstream = Upstream([BLOCK_START, b"event: message_stop\ndata: {}\n\n"])
    out = run(upstream)
    first, _, rest = out.partition(b"\n\n")
    assert first.startswith(b"event: message_start\ndata: ")
    message = json.loads(first.split(b"data: ", 1)[1])["message"]
    assert message["model"] == "qwen3" and message["role"] == "assistant"
    assert message["content"] == [] and message["usage"] == {"input_tokens": 0,
                                                             "output_tokens": 0}
    assert rest == BLOCK_START + b"event: message_stop\ndata: {}\n\n"
    assert upstream.closed


def test_a_whole_stream_is_untouched_even_split_mid_event_name() -> None:
    chunks = [b"eve", b"nt: message_sta", MESSAGE_START[len(b"event: message_sta"):],
              BLOCK_START]
    assert run(Upstream(chunks)) == b"".join(chunks)


def test_errors_and_plain_answers_are_untouched() -> None:
    error = b'{"error":{"code":400,"message":"bad","type":"invalid_request_error"}}'
    assert run(Upstream([error], status="400 Bad Request",
                        content_type="application/json")) == error
    assert run(Upstream([b'{"type":"message"}'], content_type="application/json")) == \
        b'{"type":"message"}'
    assert run(Upstream([])) == b""
