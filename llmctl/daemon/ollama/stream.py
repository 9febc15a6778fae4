"""llama-server's SSE stream as Ollama's NDJSON stream, without buffering.

Each `data: {...}` event is turned into its NDJSON line(s) as soon as the event is complete
(only a partial event waits for its next bytes). The exception is a tool call: Ollama sends a
call whole, with its arguments as an object, while llama-server streams the arguments' text in
pieces, so those pieces are gathered and the calls sent when the model finishes.

The NDJSON iterable owns the upstream Relay: closing it (end of stream, client gone) closes
the relay, which releases the in-flight count and aborts an unfinished generation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from llmctl.daemon.ollama.translate import done_reason, metrics, now_iso, tool_calls
from llmctl.daemon.relay.openai_proxy import Relay

log = logging.getLogger("llmctld.ollama")


MAX_EVENT = 16 * 1024 * 1024  # bytes one SSE event may take before the stream is given up
_SEPARATORS = (b"\n\n", b"\r\n\r\n")


def sse_events(chunks: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON payloads of an SSE byte stream, each as soon as its event is complete.
    Comments (`:` keep-alives), `[DONE]` and non-JSON data are skipped; the stream is read to
    its end, so that the upstream connection can be reused.

    Linear in the stream's length: each byte is searched for an event's end once (the last
    three again, for an end split between two reads), and only the incomplete event is kept.
    One event larger than MAX_EVENT ends the stream with an `error` payload."""
    pending = bytearray()
    for chunk in chunks:
        searched = max(0, len(pending) - 3)  # what came before had no complete event
        pending += chunk
        start = 0
        while (end := _event_end(pending, max(start, searched))) is not None:
            event = bytes(pending[start:end[0]])
            start = end[1]
            payload = _payload(event)
            if payload is not None:
                yield payload
        if start:
            del pending[:start]
        if len(pending) > MAX_EVENT:
            yield {"error": f"llama-server sent an event larger than {MAX_EVENT // 2**20} "
                            "MiB; the stream was cut off there"}
            return


def _payload(event: bytes) -> dict[str, Any] | None:
    data = b"\n".join(line[5:].strip() for line in event.splitlines()
                      if line.startswith(b"data:"))
    if not data or data == b"[DONE]":
        return None
    try:
        payload = json.loads(data)
    except ValueError:
        log.warning("skipping an SSE event that is not JSON: %r", data[:200])
        return None
    return payload if isinstance(payload, dict) else None


def _event_end(buffer: bytearray, start: int) -> tuple[int, int] | None:
    """Where the first event ending at or after `start` ends and the next begins (events end
    with a blank line)."""
    ends = [(i, i + len(sep)) for sep in _SEPARATORS if (i := buffer.find(sep, start)) >= 0]
    return min(ends) if ends else None


class Translation:
    """Turns llama-server stream events into Ollama stream objects for one request."""

    def __init__(self, kind: str, shape: str, name: str, started: float,
                 think: bool | str | None, waited: float = 0.0):
        self.kind, self.shape, self.name = kind, shape, name  # kind: "chat" or "generate"
        self.started, self.think = started, think
        self.waited = waited  # seconds the request waited for a model load
        self.calls: dict[int, dict[str, Any]] = {}
        self.finished = False

    def _object(self, text: str, thinking: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.name, "created_at": now_iso()}
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            out["message"] = message
        else:
            out["response"] = text
            if thinking:
                out["thinking"] = thinking
        return out

    def event(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        if "error" in event:
            error = event["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            self.finished = True
            return [{"error": message or "llama-server reported an error"}]
        if self.shape == "native":
            return self._native(event)
        return self._chat(event)

    def _native(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        if event.get("content"):
            out.append({**self._object(event["content"]), "done": False})
        if event.get("stop"):
            out.append(self._final(event.get("stop_type"), event.get("timings"), None))
        return out

    def _chat(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            thinking = delta.get("reasoning_content") if self.think is not False else None
            if delta.get("content") or thinking:
                out.append({**self._object(delta.get("content") or "", thinking),
                            "done": False})
            for piece in delta.get("tool_calls") or []:
                call = self.calls.setdefault(int(piece.get("index", len(self.calls))),
                                             {"id": None, "function": {"name": "",
                                                                       "arguments": ""}})
                call["id"] = piece.get("id") or call["id"]
                function = piece.get("function") or {}
                call["function"]["name"] += function.get("name") or ""
                call["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                if self.calls:
                    out.append(self._calls())
                out.append(self._final(choice["finish_reason"], event.get("timings"),
                                       event.get("usage")))
        return out

    def _calls(self) -> dict[str, Any]:
        calls = tool_calls([self.calls[i] for i in sorted(self.calls)])
        self.calls = {}
        out = self._object("")
        target = out["message"] if self.kind == "chat" else out
        target["tool_calls"] = calls
        return {**out, "done": False}

    def _final(self, reason: str | None, timings: dict[str, Any] | None,
               usage: dict[str, Any] | None) -> dict[str, Any]:
        self.finished = True
        return {**self._object(""), "done": True, "done_reason": done_reason(reason),
                **metrics(timings, usage, self.started, self.waited)}

    def end(self) -> list[dict[str, Any]]:
        """After the last event: an error line when the stream stopped before its end."""
        if self.finished:
            return []
        self.finished = True
        return [{"error": "llama-server ended the stream before the answer was complete; see "
                          "`llmctl logs`"}]


class NDJSON:
    """The WSGI response iterable of a translated stream."""

    def __init__(self, relay: Relay, translation: Translation):
        self.relay, self.translation = relay, translation

    def __iter__(self) -> Iterator[bytes]:
        translation = self.translation
        for event in sse_events(iter(self.relay)):
            if translation.finished:  # e.g. a usage event after the last one: read past it
                continue
            lines = translation.event(event)
            if lines:
                yield b"".join(_line(obj) for obj in lines)
        for obj in translation.end():
            yield _line(obj)

    def close(self) -> None:
        self.relay.close()


_encode = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per line


def _line(obj: dict[str, Any]) -> bytes:
    return _encode(obj).encode() + b"\n"
