"""Ollama requests to llama-server requests, and whole llama-server answers back.

Pure functions over parsed JSON (no I/O), so every mapping is unit-tested on its own:

- /api/chat -> POST /v1/chat/completions (messages with images as data URLs, tools and tool
  calls in OpenAI's shape, `format` as response_format, `think` as chat_template_kwargs);
- /api/generate -> the same chat route with a system and a user message; with `raw` the
  prompt goes untouched to the native POST /completion, with `suffix` to POST /infill;
- /api/embed and /api/embeddings -> POST /v1/embeddings;
- `options` -> llama-server's sampling parameters (OPTION_NAMES); options that configure the
  load (num_gpu, num_thread, ...) are set in the model's config instead and are ignored here,
  as Ollama ignores options it does not know;
- `keep_alive` -> seconds (math.inf pins).

Invalid input raises BadRequest with a message that says what to send instead.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

# Ollama option -> llama-server parameter (the same meaning; the names mostly match)
OPTION_NAMES = {
    "temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
    "typical_p": "typical_p", "seed": "seed", "stop": "stop",
    "repeat_penalty": "repeat_penalty", "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
    "mirostat": "mirostat", "mirostat_tau": "mirostat_tau", "mirostat_eta": "mirostat_eta",
    "num_keep": "n_keep",
}
INTEGER_OPTIONS = frozenset(("top_k", "seed", "repeat_last_n", "mirostat", "num_keep",
                             "num_predict", "num_ctx"))
THINK_LEVELS = ("low", "medium", "high", "max")
DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop",
                "eos": "stop", "word": "stop", "limit": "length"}

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0}


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upstream:
    """One translated request: where it goes on llama-server and how to read the answer."""

    path: str
    body: dict[str, Any]
    shape: str  # "chat" (OpenAI chat chunks), "native" (/completion), "embed"
    stream: bool
    num_ctx: int | None = None  # asked for by the client: checked against the loaded context
    think: bool | str | None = None
    dimensions: int | None = None  # embeddings: truncate (and renormalise) to this many
    legacy: bool = False  # embeddings: /api/embeddings (one `embedding`) not /api/embed


# --- fields shared by every request ---------------------------------------------------------

def model_name(request: dict[str, Any]) -> str:
    name = request.get("model") or request.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("model is required (e.g. \"model\": \"local\")")
    return name.strip()


def bare_name(name: str) -> str:
    """`local:latest` and `local` name the same model: Ollama clients add the default tag."""
    return name[:-len(":latest")] if name.endswith(":latest") else name


def parse_keep_alive(value: Any) -> float | None:
    """Seconds the model stays loaded after the request, math.inf to pin, None when not given.

    As Ollama reads it: a number is seconds, a string is a Go duration (`5m`, `1h30m`,
    `300ms`, `0`), and anything negative pins the model; a string of digits is seconds too."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest(f"keep_alive must be a duration such as \"5m\", a number of seconds, "
                         f"0 or -1, not {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise BadRequest(f"keep_alive must be finite, not {value!r}")
        return math.inf if value < 0 else float(value)
    if not isinstance(value, str):
        raise BadRequest(f"keep_alive must be a duration string or a number, not {value!r}")
    text = value.strip()
    try:
        return parse_keep_alive(float(text))
    except ValueError:
        pass
    sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.lstrip("+"))
    parts = _DURATION_PART.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise BadRequest(f"keep_alive {value!r} is not a duration: use e.g. \"30s\", \"5m\", "
                         "\"1h30m\", 0 (unload after the request) or -1 (keep loaded)")
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    return math.inf if sign < 0 and seconds > 0 else seconds


def stream_wanted(request: dict[str, Any]) -> bool:
    stream = request.get("stream", True)
    if stream is None:
        return True
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be true or false, not {stream!r}")
    return stream


def options(request: dict[str, Any], *, tokens_field: str) -> tuple[dict[str, Any], int | None]:
    """llama-server sampling parameters from `options`, and num_ctx when it was given."""
    given = request.get("options")
    if given is None:
        return {}, None
    if not isinstance(given, dict):
        raise BadRequest("options must be an object, e.g. {\"temperature\": 0.2}")
    out: dict[str, Any] = {}
    for key, value in given.items():
        if value is None:
            continue
        if key == "stop":
            stops = [value] if isinstance(value, str) else value
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise BadRequest("options.stop must be a string or a list of strings")
            out["stop"] = stops
            continue
        if key not in OPTION_NAMES and key not in ("num_predict", "num_ctx"):
            continue  # a load-time option (num_gpu, num_thread, ...) or an unknown one
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequest(f"options.{key} must be a number, not {value!r}")
        if not math.isfinite(value):
            raise BadRequest(f"options.{key} must be a finite number, not {value!r}")
        if key in INTEGER_OPTIONS:
            if value != int(value):
                raise BadRequest(f"options.{key} must be an integer, not {value!r}")
            value = int(value)
        if key == "num_predict":
            if value >= 0:  # -1 (no limit) and -2 (fill the context) are llama-server's default
                out[tokens_field] = value
        elif key != "num_ctx":
            out[OPTION_NAMES[key]] = value
    num_ctx = given.get("num_ctx")
    return out, int(num_ctx) if isinstance(num_ctx, int | float) and num_ctx > 0 else None


def think_value(request: dict[str, Any]) -> bool | str | None:
    think = request.get("think")
    if think is None or isinstance(think, bool):
        return think
    if isinstance(think, str) and think in THINK_LEVELS:
        return think
    raise BadRequest(f"think must be true, false or one of {', '.join(THINK_LEVELS)}, "
                     f"not {think!r}")


def _think_params(think: bool | str | None) -> dict[str, Any]:
    if think is None:
        return {}
    if think is False:
        return {"chat_template_kwargs": {"enable_thinking": False}}
    params: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": True}}
    if isinstance(think, str):
        params["reasoning_effort"] = think
    return params


def _format_params(request: dict[str, Any], chat: bool) -> dict[str, Any]:
    fmt = request.get("format")
    if fmt in (None, ""):
        return {}
    if fmt == "json":
        schema: dict[str, Any] | None = None
    elif isinstance(fmt, dict):
        schema = fmt
    else:
        raise BadRequest(f"format must be \"json\" or a JSON schema object, not {fmt!r}")
    if not chat:
        return {"json_schema": schema if schema is not None else {"type": "object"}}
    if schema is None:
        return {"response_format": {"type": "json_object"}}
    return {"response_format": {"type": "json_schema",
                                "json_schema": {"name": "format", "schema": schema}}}


# --- messages -------------------------------------------------------------------------------

def _image_url(image: Any, where: str) -> str:
    if not isinstance(image, str):
        raise BadRequest(f"{where} must be a base64-encoded image string")
    if image.startswith("data:"):
        return image
    try:
        head = base64.b64decode(image[:64] + "=" * (-len(image[:64]) % 4), validate=True)
        base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where} is not valid base64") from None
    mime = ("image/png" if head.startswith(b"\x89PNG") else
            "image/gif" if head.startswith(b"GIF8") else
            "image/webp" if head[:4] == b"RIFF" and head[8:12] == b"WEBP" else
            "image/bmp" if head.startswith(b"BM") else "image/jpeg")
    return f"data:{mime};base64,{image}"


def _content(text: str, images: list[Any], where: str) -> str | list[dict[str, Any]]:
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {
        "url": _image_url(image, f"{where}.images[{i}]")}} for i, image in enumerate(images)]
    if text:
        parts.append({"type": "text", "text": text})
    return parts


def chat_messages(messages: Any) -> list[dict[str, Any]]:
    """Ollama messages in OpenAI's shape. Tool calls get ids when they have none, and a tool
    result that names only its tool is matched to the latest call of that tool."""
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list of {\"role\", \"content\"} objects")
    out: list[dict[str, Any]] = []
    pending: dict[str, list[str]] = {}  # tool name -> ids of calls without a result yet
    count = 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object with role and content")
        role = str(message.get("role") or "").lower()
        if role not in ("system", "user", "assistant", "tool"):
            raise BadRequest(f"{where}.role must be system, user, assistant or tool, "
                             f"not {message.get('role')!r}")
        text = message.get("content") or ""
        if not isinstance(text, str):
            raise BadRequest(f"{where}.content must be a string")
        converted: dict[str, Any] = {"role": role,
                                     "content": _content(text, message.get("images") or [],
                                                         where)}
        if role == "assistant" and message.get("thinking"):
            converted["reasoning_content"] = message["thinking"]
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for j, call in enumerate(message["tool_calls"]):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    raise BadRequest(f"{where}.tool_calls[{j}] must be "
                                     "{\"function\": {\"name\", \"arguments\"}}")
                count += 1
                call_id = call.get("id") or f"call_{count}"
                pending.setdefault(function["name"], []).append(call_id)
                arguments = function.get("arguments") or {}
                calls.append({"id": call_id, "type": "function", "function": {
                    "name": function["name"],
                    "arguments": arguments if isinstance(arguments, str)
                    else json.dumps(arguments)}})
            converted["tool_calls"] = calls
        if role == "tool":
            name = message.get("tool_name") or message.get("name")
            call_id = message.get("tool_call_id")
            if not call_id and name and pending.get(name):
                call_id = pending[name].pop(0)
            if call_id:
                converted["tool_call_id"] = call_id
            if name:
                converted["name"] = name
        out.append(converted)
    return out


# --- the three kinds of request ----------------------------------------------------------------

def chat_request(request: dict[str, Any]) -> Upstream:
    sampling, num_ctx = options(request, tokens_field="max_tokens")
    think = think_value(request)
    stream = stream_wanted(request)
    body: dict[str, Any] = {"model": bare_name(model_name(request)),
                            "messages": chat_messages(request.get("messages") or []),
                            "stream": stream, **sampling, **_format_params(request, True),
                            **_think_params(think)}
    tools = request.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise BadRequest("tools must be a list of {\"type\": \"function\", \"function\": "
                             "{...}} objects")
        body["tools"] = tools
    return Upstream("/v1/chat/completions", body, "chat", stream, num_ctx, think)


def generate_request(request: dict[str, Any]) -> Upstream:
    prompt = request.get("prompt") or ""
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    if request.get("context"):
        raise BadRequest("context (token ids from an earlier /api/generate) is not supported: "
                         "send the conversation as messages to /api/chat instead")
    suffix = request.get("suffix") or ""
    raw = bool(request.get("raw")) or bool(suffix)
    stream = stream_wanted(request)
    sampling, num_ctx = options(request, tokens_field="max_tokens" if not raw else "n_predict")
    think = think_value(request)
    name = bare_name(model_name(request))
    images = request.get("images") or []
    if raw:
        if images:
            raise BadRequest("images need a templated prompt: leave raw and suffix unset, or "
                             "use /api/chat")
        body: dict[str, Any] = {"model": name, "stream": stream, **sampling,
                                **_format_params(request, False)}
        if suffix:
            body.update(input_prefix=prompt, input_suffix=suffix, prompt="")
            return Upstream("/infill", body, "native", stream, num_ctx, think)
        body["prompt"] = prompt
        return Upstream("/completion", body, "native", stream, num_ctx, think)
    messages: list[dict[str, Any]] = []
    system = request.get("system")
    if system:
        messages.append({"role": "system", "content": str(system)})
    messages.append({"role": "user", "content": _content(prompt, images, "request")})
    body = {"model": name, "messages": messages, "stream": stream, **sampling,
            **_format_params(request, True), **_think_params(think)}
    return Upstream("/v1/chat/completions", body, "chat", stream, num_ctx, think)


def embed_request(request: dict[str, Any], legacy: bool) -> Upstream:
    text = request.get("prompt" if legacy else "input")
    if legacy:
        if not isinstance(text, str):
            raise BadRequest("prompt must be a string")
    elif isinstance(text, list):
        if not text or not all(isinstance(t, str) for t in text):
            raise BadRequest("input must be a string or a non-empty list of strings")
    elif not isinstance(text, str):
        raise BadRequest("input must be a string or a list of strings")
    dimensions = request.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(
            dimensions, int) or dimensions <= 0):
        raise BadRequest(f"dimensions must be a positive integer, not {dimensions!r}")
    body = {"model": bare_name(model_name(request)), "input": text}
    return Upstream("/v1/embeddings", body, "embed", False, dimensions=dimensions,
                    legacy=legacy)


# --- answers ------------------------------------------------------------------------------------

def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def nanoseconds(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def metrics(timings: dict[str, Any] | None, usage: dict[str, Any] | None, started: float,
            waited: float) -> dict[str, Any]:
    """The final message's durations and counts, from llama-server's timings (or usage)."""
    t = timings or {}
    u = usage or {}
    prompt = t.get("prompt_n", 0) + t.get("cache_n", 0) if t else u.get("prompt_tokens", 0)
    return {"total_duration": nanoseconds(time.monotonic() - started),
            "load_duration": nanoseconds(waited),
            "prompt_eval_count": int(prompt),
            "prompt_eval_duration": nanoseconds(t.get("prompt_ms", 0) / 1000),
            "eval_count": int(t.get("predicted_n", u.get("completion_tokens", 0))),
            "eval_duration": nanoseconds(t.get("predicted_ms", 0) / 1000)}


def tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI tool calls (arguments as JSON text) in Ollama's shape (arguments as an object)."""
    out = []
    for index, call in enumerate(calls):
        function = call.get("function") or {}
        arguments: Any = function.get("arguments") or "{}"
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                pass  # handed on as the model wrote it: the client can show what went wrong
        out.append({"id": call.get("id") or f"call_{index + 1}",
                    "function": {"index": index, "name": function.get("name") or "",
                                 "arguments": arguments}})
    return out


def done_reason(reason: str | None) -> str:
    return DONE_REASONS.get(reason or "stop", reason or "stop")


def chat_answer(upstream: dict[str, Any], name: str, started: float, waited: float,
                think: bool | str | None) -> dict[str, Any]:
    """A whole (stream: false) chat completion as an Ollama /api/chat answer."""
    choice = (upstream.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    out_message: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("reasoning_content") and think is not False:
        out_message["thinking"] = message["reasoning_content"]
    if message.get("tool_calls"):
        out_message["tool_calls"] = tool_calls(message["tool_calls"])
    return {"model": name, "created_at": now_iso(), "message": out_message, "done": True,
            "done_reason": done_reason(choice.get("finish_reason")),
            **metrics(upstream.get("timings"), upstream.get("usage"), started, waited)}


def generate_answer(upstream: dict[str, Any], shape: str, name: str, started: float,
                    waited: float, think: bool | str | None) -> dict[str, Any]:
    """A whole (stream: false) completion as an Ollama /api/generate answer."""
    out: dict[str, Any] = {"model": name, "created_at": now_iso()}
    if shape == "native":
        out["response"] = upstream.get("content") or ""
        reason = upstream.get("stop_type")
    else:
        choice = (upstream.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        out["response"] = message.get("content") or ""
        if message.get("reasoning_content") and think is not False:
            out["thinking"] = message["reasoning_content"]
        reason = choice.get("finish_reason")
    out.update(done=True, done_reason=done_reason(reason),
               **metrics(upstream.get("timings"), upstream.get("usage"), started, waited))
    return out


def embed_answer(upstream: dict[str, Any], up: Upstream, name: str, started: float,
                 waited: float) -> dict[str, Any]:
    vectors = [item.get("embedding") or [] for item in
               sorted(upstream.get("data") or [], key=lambda item: item.get("index", 0))]
    if up.dimensions:
        vectors = [_normalised(v[:up.dimensions]) for v in vectors]
    if up.legacy:
        return {"embedding": vectors[0] if vectors else []}
    usage = upstream.get("usage") or {}
    return {"model": name, "embeddings": vectors,
            "total_duration": nanoseconds(time.monotonic() - started),
            "load_duration": nanoseconds(waited),
            "prompt_eval_count": int(usage.get("prompt_tokens", 0))}


def _normalised(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


def upstream_error(status: int, payload: bytes) -> str:
    """llama-server's error message from an error answer, whatever its shape."""
    try:
        data = json.loads(payload)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    text = payload.decode("utf-8", "replace").strip()
    return text[:500] or f"llama-server answered HTTP {status}"
