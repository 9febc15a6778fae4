"""Token figures of one response, read from what llama-server (or an Ollama-style stream) puts
at its end: `usage` and `timings` in an OpenAI JSON body or in the last SSE events, the
`tokens_*`/`timings` of a native /completion answer, or the `*_count`/`*_duration` fields of
the last NDJSON line of an Ollama-style answer.

It only ever sees the bytes the observer kept (a whole small JSON body, or the bounded tail of
a stream), and never raises: a body it cannot read simply has no token figures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass
class Usage:
    prompt: int | None = None
    generated: int | None = None
    cached: int | None = None
    tokens_per_s: float | None = None  # llama-server's own generation rate, not wall time

    def empty(self) -> bool:
        return self.prompt is None and self.generated is None


def from_json(body: bytes) -> Usage:
    """A complete JSON response body."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return Usage()
    return _from_doc(doc) if isinstance(doc, dict) else Usage()


def from_sse_tail(tail: bytes) -> Usage:
    """The last bytes of a text/event-stream: the figures of the last events that carry them
    (with `stream_options.include_usage`, `usage` comes in its own chunk after the one with
    `timings`, so both are merged)."""
    usage = Usage()
    for line in reversed(tail.split(b"\n")):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if not payload.startswith(b"{"):
            continue
        found = from_json(payload)
        _fill(usage, found)
        if usage.prompt is not None and usage.generated is not None and \
                usage.tokens_per_s is not None:
            break
    return usage


def from_ndjson_tail(tail: bytes) -> Usage:
    """The last bytes of an NDJSON stream: its last complete line."""
    for line in reversed(tail.split(b"\n")):
        if line.strip():
            return from_json(line)
    return Usage()


def _fill(into: Usage, found: Usage) -> None:
    for name in ("prompt", "generated", "cached", "tokens_per_s"):
        if getattr(into, name) is None:
            setattr(into, name, getattr(found, name))


def _from_doc(doc: dict[str, Any]) -> Usage:
    usage = Usage()
    openai = doc.get("usage")
    if isinstance(openai, dict):
        usage.prompt = _int(openai.get("prompt_tokens", openai.get("input_tokens")))
        usage.generated = _int(openai.get("completion_tokens", openai.get("output_tokens")))
        details = openai.get("prompt_tokens_details") or openai.get("input_tokens_details")
        if isinstance(details, dict):
            usage.cached = _int(details.get("cached_tokens"))
    timings = doc.get("timings")
    if isinstance(timings, dict):
        # llama-server counts the prompt tokens it had to evaluate (prompt_n) apart from the
        # ones it reused from the KV cache (cache_n)
        cache_n, prompt_n = _int(timings.get("cache_n")), _int(timings.get("prompt_n"))
        if usage.cached is None:
            usage.cached = cache_n
        if usage.prompt is None and prompt_n is not None:
            usage.prompt = prompt_n + (cache_n or 0)
        if usage.generated is None:
            usage.generated = _int(timings.get("predicted_n"))
        usage.tokens_per_s = _float(timings.get("predicted_per_second"))
    if usage.generated is None and "tokens_predicted" in doc:  # native /completion
        usage.generated = _int(doc.get("tokens_predicted"))
        usage.prompt = _int(doc.get("tokens_evaluated"))
    if usage.generated is None and "eval_count" in doc:  # Ollama-style final line
        usage.generated = _int(doc.get("eval_count"))
        usage.prompt = _int(doc.get("prompt_eval_count"))
        duration = _float(doc.get("eval_duration"))
        if usage.generated and duration:
            usage.tokens_per_s = usage.generated / (duration / 1e9)
    return usage


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def _float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None
