"""Token figures (and the error message) of one response, read from its last bytes.

llama-server ends every answer with what it counted: `usage` and `timings` at the end of an
OpenAI JSON body or in the last SSE events, `tokens_predicted`/`tokens_evaluated` and
`timings` in a native /completion answer; an Ollama-style NDJSON stream ends with a line of
`eval_count`/`prompt_eval_count`/`eval_duration`. So the observer keeps only a response's
tail, and this module finds the last occurrence of each field in it and decodes just that
small object, never the whole body: it runs once per request and must be cheap.

It never raises: a tail it cannot read has no figures (a stream cut off before its end has
none, and that is the truth).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_DECODER = json.JSONDecoder()
# the four numbers of llama-server's `timings` object, read without decoding it (this runs
# once per request; a regex over its bytes costs a fraction of json)
_TIMINGS = re.compile(rb'"(cache_n|prompt_n|predicted_n|predicted_per_second)"\s*:\s*'
                      rb'([0-9][0-9.eE+]*)')
# ... and in one match, in the order llama-server writes them (anything else goes the long way)
_TIMINGS_AS_WRITTEN = re.compile(
    rb'"timings":\{"cache_n":(\d+),"prompt_n":(\d+),[^{}]*?"predicted_n":(\d+),[^{}]*?'
    rb'"predicted_per_second":([0-9][0-9.eE+]*)')
_SCALARS = {name: re.compile(rb'"' + name.encode() + rb'"\s*:\s*([0-9.eE+]+)') for name in (
    "tokens_predicted", "tokens_evaluated", "eval_count", "prompt_eval_count", "eval_duration")}


@dataclass
class Usage:
    prompt: int | None = None
    generated: int | None = None
    cached: int | None = None
    tokens_per_s: float | None = None  # llama-server's own generation rate, not wall time

    def empty(self) -> bool:
        return self.prompt is None and self.generated is None


NONE = Usage()  # the figures of a response without any (shared: never changed)


def from_tail(tail: bytes) -> Usage:
    at = tail.rfind(b'"timings":')
    if at >= 0:  # llama-server's own counts: everything there is to know
        written = _TIMINGS_AS_WRITTEN.match(tail, at)
        if written is not None:
            cache_n, prompt_n, predicted_n, speed = written.groups()
            cached = int(cache_n)
            return Usage(prompt=int(prompt_n) + cached, generated=int(predicted_n),
                         cached=cached, tokens_per_s=_number(speed))
        found: dict[bytes, bytes] = {}
        for name, number in _TIMINGS.findall(tail, at):
            found.setdefault(name, number)
        if b"predicted_n" in found:
            cache_n = _number(found.get(b"cache_n"))
            prompt_n = _number(found.get(b"prompt_n"))
            speed = _number(found.get(b"predicted_per_second"))
            return Usage(
                prompt=int(prompt_n + (cache_n or 0)) if prompt_n is not None else None,
                generated=_int_of(found[b"predicted_n"]),
                cached=int(cache_n) if cache_n is not None else None,
                tokens_per_s=speed)
    return _from_fields(tail)


def _from_fields(tail: bytes) -> Usage:
    """Without llama-server's `timings`: OpenAI-style `usage`, or the native and Ollama-style
    counters."""
    figures = Usage()
    openai = _last_object(tail, b'"usage":')
    if openai is not None:
        figures.prompt = _int(openai.get("prompt_tokens", openai.get("input_tokens")))
        figures.generated = _int(openai.get("completion_tokens", openai.get("output_tokens")))
        details = openai.get("prompt_tokens_details") or openai.get("input_tokens_details")
        if isinstance(details, dict):
            figures.cached = _int(details.get("cached_tokens"))
    timings = _last_object(tail, b'"timings":')
    if timings is not None:
        # llama-server counts the prompt tokens it evaluated (prompt_n) apart from those it
        # reused from its cache (cache_n); OpenAI's prompt_tokens is their sum
        cache_n, prompt_n = _int(timings.get("cache_n")), _int(timings.get("prompt_n"))
        if figures.cached is None:
            figures.cached = cache_n
        if figures.prompt is None and prompt_n is not None:
            figures.prompt = prompt_n + (cache_n or 0)
        if figures.generated is None:
            figures.generated = _int(timings.get("predicted_n"))
        figures.tokens_per_s = _float(timings.get("predicted_per_second"))
    if figures.generated is None:  # native /completion
        figures.generated = _int(_last_scalar(tail, "tokens_predicted"))
        if figures.prompt is None:
            figures.prompt = _int(_last_scalar(tail, "tokens_evaluated"))
    if figures.generated is None:  # an Ollama-style last line
        figures.generated = _int(_last_scalar(tail, "eval_count"))
        figures.prompt = _int(_last_scalar(tail, "prompt_eval_count"))
        nanoseconds = _float(_last_scalar(tail, "eval_duration"))
        if figures.generated and nanoseconds:
            figures.tokens_per_s = figures.generated / (nanoseconds / 1e9)
    return figures


def error_message(tail: bytes) -> str | None:
    """The message of the last `"error": {...}` (or `"error": "..."`) in the tail."""
    found = _last_value(tail, b'"error":')
    if isinstance(found, dict):
        message = found.get("message") or found.get("type")
        return str(message) if message is not None else None
    return found if isinstance(found, str) else None


def _last_value(tail: bytes, key: bytes) -> Any:
    at = tail.rfind(key)
    if at < 0:
        return None
    try:
        text = tail[at + len(key):].decode("utf-8", "replace").lstrip()
        value, _ = _DECODER.raw_decode(text)
    except ValueError:
        return None
    return value


def _last_object(tail: bytes, key: bytes) -> dict[str, Any] | None:
    value = _last_value(tail, key)
    return value if isinstance(value, dict) else None


def _last_scalar(tail: bytes, name: str) -> float | int | None:
    matches = _SCALARS[name].findall(tail)
    if not matches:
        return None
    text = matches[-1]
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return None


def _number(text: bytes | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _int_of(text: bytes) -> int | None:
    value = _number(text)
    return int(value) if value is not None and value == int(value) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def _float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None
