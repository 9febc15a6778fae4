"""The Ollama facade's pure parts: request mapping, keep_alive, the SSE -> NDJSON translation."""

from __future__ import annotations

import base64
import json
import math
import time

import pytest

from llmctl.daemon.ollama.stream import Translation, sse_events
from llmctl.daemon.ollama.translate import (
    BadRequest,
    chat_answer,
    chat_request,
    embed_answer,
    embed_request,
    generate_request,
    parse_keep_alive,
)

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()


@pytest.mark.parametrize(("value", "seconds"), [
    (None, None), (0, 0.0), ("0", 0.0), (30, 30.0), (2.5, 2.5), ("300", 300.0), ("5m", 300.0),
    ("1h30m", 5400.0), ("1.5s", 1.5), ("300ms", 0.3), (-1, math.inf), ("-1", math.inf),
    ("-1m", math.inf), ("24h", 86400.0),
])
def test_keep_alive_reads_like_ollama(value: object, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["forever", "5 minutes", "m", "", True, [1], "1x"])
def test_keep_alive_refuses_what_is_not_a_duration(value: object) -> None:
    with pytest.raises(BadRequest) as e:
        parse_keep_alive(value)
    assert "keep_alive" in e.value.message


def test_chat_request_maps_options_format_think_and_images() -> None:
    up = chat_request({
        "model": "local:latest", "stream": False, "think": False, "format": "json",
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": "what is this?", "images": [PNG]}],
        "options": {"temperature": 0.2, "top_k": 7, "top_p": 0.9, "min_p": 0.05, "seed": 42,
                    "num_predict": 12, "stop": "END", "repeat_penalty": 1.3,
                    "num_keep": 4, "num_ctx": 4096, "num_gpu": 99, "num_thread": 2}})
    assert up.path == "/v1/chat/completions" and up.shape == "chat" and not up.stream
    body = up.body
    assert body["model"] == "local"
    assert {k: body[k] for k in ("temperature", "top_k", "top_p", "min_p", "seed", "max_tokens",
                                 "stop", "repeat_penalty", "n_keep")} == {
        "temperature": 0.2, "top_k": 7, "top_p": 0.9, "min_p": 0.05, "seed": 42,
        "max_tokens": 12, "stop": ["END"], "repeat_penalty": 1.3, "n_keep": 4}
    assert "num_gpu" not in body and "num_thread" not in body and "num_ctx" not in body
    assert up.num_ctx == 4096
    assert body["response_format"] == {"type": "json_object"}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    image, text = body["messages"][1]["content"]
    assert image["image_url"]["url"] == f"data:image/png;base64,{PNG}"
    assert text == {"type": "text", "text": "what is this?"}


def test_tool_calls_and_results_get_matching_ids() -> None:
    up = chat_request({"model": "m", "tools": [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object"}}}], "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]})
    assistant, tool = up.body["messages"][1:]
    call = assistant["tool_calls"][0]
    assert call["type"] == "function" and json.loads(call["function"]["arguments"]) == {
        "city": "Paris"}
    assert tool["tool_call_id"] == call["id"] and tool["role"] == "tool"
    assert up.body["tools"][0]["function"]["name"] == "get_weather"


def test_schema_format_raw_and_suffix_generate() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    chat = generate_request({"model": "m", "prompt": "hi", "system": "sys", "format": schema})
    assert chat.path == "/v1/chat/completions" and chat.stream
    assert chat.body["messages"] == [{"role": "system", "content": "sys"},
                                     {"role": "user", "content": "hi"}]
    assert chat.body["response_format"]["json_schema"]["schema"] == schema
    raw = generate_request({"model": "m", "prompt": "[INST]hi", "raw": True,
                            "options": {"num_predict": 5}, "format": "json"})
    assert raw.path == "/completion" and raw.body["prompt"] == "[INST]hi"
    assert raw.body["n_predict"] == 5 and raw.body["json_schema"] == {"type": "object"}
    infill = generate_request({"model": "m", "prompt": "def f(", "suffix": "return x"})
    assert infill.path == "/infill" and infill.body["input_suffix"] == "return x"


@pytest.mark.parametrize(("request_", "needle"), [
    ({"messages": []}, "model is required"),
    ({"model": "m", "messages": "hi"}, "messages must be a list"),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "role"),
    ({"model": "m", "messages": [{"role": "user", "content": "x", "images": ["@@"]}]},
     "not valid base64"),
    ({"model": "m", "messages": [], "options": {"temperature": "hot"}}, "must be a number"),
    ({"model": "m", "messages": [], "options": {"top_k": 1.5}}, "must be an integer"),
    ({"model": "m", "messages": [], "format": "yaml"}, "format must be"),
    ({"model": "m", "messages": [], "think": "very"}, "think must be"),
    ({"model": "m", "messages": [], "stream": "yes"}, "stream must be"),
])
def test_bad_chat_requests_say_what_to_send(request_: dict, needle: str) -> None:
    with pytest.raises(BadRequest) as e:
        chat_request(request_)
    assert needle in e.value.message


def test_embed_requests_and_dimensions() -> None:
    up = embed_request({"model": "m", "input": ["a", "b"], "dimensions": 2}, legacy=False)
    assert up.path == "/v1/embeddings" and up.body["input"] == ["a", "b"]
    answer = embed_answer({"data": [{"index": 1, "embedding": [0.0, 3.0, 9.0]},
                                    {"index": 0, "embedding": [3.0, 4.0, 1.0]}],
                           "usage": {"prompt_tokens": 4}}, up, "m", time.monotonic(), 0.0)
    assert answer["embeddings"] == [[0.6, 0.8], [0.0, 1.0]]
    assert answer["prompt_eval_count"] == 4
    legacy = embed_request({"model": "m", "prompt": "a"}, legacy=True)
    assert embed_answer({"data": [{"index": 0, "embedding": [1.0]}]}, legacy, "m",
                        time.monotonic(), 0.0) == {"embedding": [1.0]}
    with pytest.raises(BadRequest):
        embed_request({"model": "m", "input": 3}, legacy=False)


def test_whole_chat_answer_has_ollama_fields() -> None:
    answer = chat_answer({
        "choices": [{"finish_reason": "tool_calls", "message": {
            "content": "", "reasoning_content": "hmm", "tool_calls": [
                {"id": "c1", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]}}],
        "timings": {"prompt_n": 5, "cache_n": 2, "prompt_ms": 3.0, "predicted_n": 4,
                    "predicted_ms": 8.0}}, "local", time.monotonic(), 0.25, None)
    assert answer["done"] and answer["done_reason"] == "stop"
    assert answer["message"]["thinking"] == "hmm"
    assert answer["message"]["tool_calls"] == [
        {"id": "c1", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}}]
    assert (answer["prompt_eval_count"], answer["eval_count"]) == (7, 4)
    assert answer["prompt_eval_duration"] == 3_000_000
    assert answer["eval_duration"] == 8_000_000
    assert answer["load_duration"] == 250_000_000


def _sse(*events: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + \
        b"data: [DONE]\n\n"


def test_sse_events_are_split_wherever_the_bytes_break() -> None:
    data = b": keep-alive\n\n" + _sse({"a": 1}, {"b": 2}, {"c": 3})
    for size in (1, 3, 7, len(data)):
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        assert list(sse_events(iter(chunks))) == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_stream_translation_gathers_tool_call_pieces() -> None:
    t = Translation("chat", "chat", "local", time.monotonic(), None)
    delta = [{"role": "assistant", "content": "Hi"},
             {"tool_calls": [{"index": 0, "id": "c9", "function": {"name": "get_",
                                                                    "arguments": ""}}]},
             {"tool_calls": [{"index": 0, "function": {"name": "weather",
                                                       "arguments": "{\"city\":"}}]},
             {"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]}]
    out = []
    for d in delta:
        out += t.event({"choices": [{"delta": d, "finish_reason": None}]})
    assert [o["message"]["content"] for o in out] == ["Hi"]  # the call waits for its end
    out = t.event({"choices": [{"delta": {}, "finish_reason": "tool_calls"}],
                   "timings": {"prompt_n": 3, "predicted_n": 2, "predicted_ms": 4.0}})
    calls, final = out
    assert calls["message"]["tool_calls"] == [
        {"id": "c9", "function": {"index": 0, "name": "get_weather",
                                  "arguments": {"city": "Oslo"}}}]
    assert not calls["done"] and final["done"] and final["eval_count"] == 2
    assert t.end() == []


def test_stream_errors_become_error_lines() -> None:
    t = Translation("generate", "native", "local", time.monotonic(), None)
    assert t.event({"content": "a", "stop": False})[0]["response"] == "a"
    assert t.end() == [{"error": "llama-server ended the stream before the answer was "
                                 "complete; see `llmctl logs`"}]
    t = Translation("chat", "chat", "local", time.monotonic(), None)
    assert t.event({"error": {"code": 500, "message": "boom"}}) == [{"error": "boom"}]


def test_streamed_thinking_is_reported_unless_turned_off() -> None:
    event = {"choices": [{"delta": {"reasoning_content": "let me see"}, "finish_reason": None}]}
    on = Translation("chat", "chat", "local", time.monotonic(), None).event(event)
    assert on[0]["message"] == {"role": "assistant", "content": "", "thinking": "let me see"}
    assert Translation("chat", "chat", "local", time.monotonic(), False).event(event) == []
    generated = Translation("generate", "chat", "local", time.monotonic(), True).event(event)
    assert generated[0]["thinking"] == "let me see" and generated[0]["response"] == ""


def test_capabilities_from_template_config_and_header(tmp_path) -> None:
    from llmctl.core.catalog import ModelEntry
    from llmctl.daemon.ollama.catalog import capabilities, human_number

    def entry(**llama: object) -> ModelEntry:
        return ModelEntry(key="m", directory=tmp_path, config_file=tmp_path / "config.yaml",
                          id="m", config={"llama": {"extra_args": [], **llama}})

    chat = {"general.architecture": "qwen3",
            "tokenizer.chat_template": "{% if tools %}...{% endif %}{{ enable_thinking }}"}
    assert capabilities(entry(), chat) == ["completion", "tools", "thinking"]
    assert capabilities(entry(extra_args=["--mmproj", "p.gguf"]), {}) == ["completion",
                                                                          "vision"]
    assert capabilities(entry(extra_args=["--embeddings"]), {}) == ["completion", "embedding"]
    encoder = {"general.architecture": "bert", "bert.pooling_type": 2}
    assert capabilities(entry(extra_args=["--embeddings"]), encoder) == ["embedding"]
    assert [human_number(n) for n in (8_000_000_000, 7_615_616_512, 494_032_768, 12_345, 7)] \
        == ["8B", "7.6B", "494.03M", "12K", "7"]
