"""A repair of llama-server's streamed Anthropic Messages answers.

An Anthropic stream must open with a `message_start` event; the SDKs (and so Claude Code) build
the message from it and reject a stream without one. llama-server (b11434) leaves it out
when the first token it samples is an incomplete UTF-8 sequence (a byte of a multi-byte
character: emoji, CJK text, or any byte token of a small model): its first event is then
`content_block_start`. When the first event of a streamed POST /v1/messages answer is not a
`message_start`, this module puts one in front, naming the active model, with the usage
counts llama-server itself sends there at first (zero; the final `message_delta` carries
them).

Only the start of the stream is looked at; every byte after it is relayed untouched, and
closing this iterable closes the proxy's (which releases the request).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

MESSAGE_START = b"event: message_start"


def serve(proxy: Callable[[dict[str, Any], Any], Iterable[bytes]], environ: dict[str, Any],
          start_response: Any, model: Callable[[], str | None]) -> Iterable[bytes]:
    """Proxy a POST /v1/messages request, repairing the start of a streamed answer."""
    streamed = False

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        nonlocal streamed
        streamed = status.startswith("200") and any(
            k.lower() == "content-type" and v.startswith("text/event-stream")
            for k, v in headers)
        return start_response(status, headers, exc_info)

    body = proxy(environ, start)
    return Repaired(body, model) if streamed else body


class Repaired:
    def __init__(self, body: Iterable[bytes], model: Callable[[], str | None]):
        self.body, self.model = body, model

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self.body)
        head = b""
        for chunk in chunks:  # enough bytes to tell which event comes first
            head += chunk
            if len(head.lstrip()) >= len(MESSAGE_START):
                break
        if head and not head.lstrip().startswith(MESSAGE_START):
            yield self._message_start()
        if head:
            yield head
        yield from chunks

    def _message_start(self) -> bytes:
        message: dict[str, Any] = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                   "model": self.model() or "local", "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        data = json.dumps({"type": "message_start", "message": message}, separators=(",", ":"))
        return b"event: message_start\ndata: " + data.encode() + b"\n\n"

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()
