"""llama-server's deterministic refusals reach the client as a 400 in its own API's error
shape, naming the model and the fix (relay/refusals.py): a prompt longer than the context,
tools for a model run without Jinja, embeddings from a model that does not serve them.
A REAL llama-server refuses; the official openai, anthropic and ollama clients read the
answers (with no retries of their own, so what they raise is llmctld's first answer)."""

from __future__ import annotations

from pathlib import Path

import anthropic
import ollama
import openai
import pytest

from harness import Daemon, Home

pytestmark = pytest.mark.real_backend

LONG = "a" * 1500  # byte tokens: ~1500 tokens, for a 512-token context
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def oa(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0, timeout=60)


def an(daemon: Daemon) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=daemon.url, api_key="x", max_retries=0, timeout=60)


def ol(daemon: Daemon) -> ollama.Client:
    return ollama.Client(host=daemon.url, timeout=60, trust_env=False)


def test_a_prompt_longer_than_the_context_is_a_400_in_each_shape(real_home: Home,
                                                                 make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    config = str(real_home.models_dir / "tiny-alpha" / "config.yaml")
    fix = f"raise llama.ctx_size for model tiny-alpha in {config}"

    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as raised:
            oa(daemon).chat.completions.create(
                model="local", max_tokens=4, stream=stream,
                messages=[{"role": "user", "content": LONG}])
        assert raised.value.status_code == 400
        assert raised.value.code == "context_length_exceeded"
        assert fix in raised.value.message and "512-token context" in raised.value.message

    raw = daemon.session.post(daemon.url + "/v1/chat/completions", timeout=60, json={
        "model": "local", "max_tokens": 4, "messages": [{"role": "user", "content": LONG}]})
    assert raw.status_code == 400 and "Retry-After" not in raw.headers
    error = raw.json()["error"]
    assert set(error) == {"message", "type", "code"}
    assert error["type"] == "invalid_request_error"

    with pytest.raises(anthropic.BadRequestError) as refused:
        an(daemon).messages.create(model="claude-sonnet-4-6", max_tokens=4,
                                   messages=[{"role": "user", "content": LONG}])
    assert refused.value.status_code == 400
    assert refused.value.body == {"type": "error", "error": {
        "type": "invalid_request_error", "message": refused.value.body["error"]["message"]}}
    assert fix in refused.value.body["error"]["message"]

    with pytest.raises(ollama.ResponseError) as answered:
        ol(daemon).chat(model="local", messages=[{"role": "user", "content": LONG}],
                        options={"num_predict": 4})
    assert answered.value.status_code == 400 and fix in answered.value.error
    with pytest.raises(ollama.ResponseError) as streamed:
        list(ol(daemon).chat(model="local", stream=True, options={"num_predict": 4},
                             messages=[{"role": "user", "content": LONG}]))
    assert streamed.value.status_code == 400 and fix in streamed.value.error

    # the refusal was about the request: the backend is fine, and the next one is answered
    reply = oa(daemon).chat.completions.create(model="local", max_tokens=2,
                                               messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message is not None
    assert daemon.backend()["state"] == "ready"


def test_tools_for_a_model_without_jinja_are_a_400_naming_the_template(
        real_home: Home, make_daemon, tiny_gguf: Path) -> None:
    real_home.add_model("no-jinja", tiny_gguf,
                        llama={"extra_args": ["--no-jinja", "--chat-template", "gemma"]})
    daemon = make_daemon()
    assert daemon.switch("no-jinja").status_code == 200
    with pytest.raises(openai.BadRequestError) as raised:
        oa(daemon).chat.completions.create(model="local", max_tokens=4, tools=[WEATHER_TOOL],
                                           messages=[{"role": "user", "content": "hi"}])
    assert raised.value.code == "tools_unsupported"
    message = raised.value.message
    assert "model no-jinja cannot take requests with tools" in message
    assert "this model has no chat template" in message and "--chat-template-file" in message

    with pytest.raises(anthropic.BadRequestError) as refused:
        an(daemon).messages.create(
            model="claude-sonnet-4-6", max_tokens=4,
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"name": "get_weather", "description": "weather",
                    "input_schema": {"type": "object", "properties": {}}}])
    assert refused.value.body["type"] == "error"
    assert "this model has no chat template" in refused.value.body["error"]["message"]

    with pytest.raises(ollama.ResponseError) as answered:
        ol(daemon).chat(model="local", messages=[{"role": "user", "content": "hi"}],
                        tools=[WEATHER_TOOL], options={"num_predict": 4})
    assert answered.value.status_code == 400
    assert "this model has no chat template" in answered.value.error

    models = daemon.get("/models").json()["models"]
    assert {m["id"]: m["tool_calls"] for m in models}["no-jinja"] is False


def test_embeddings_from_a_model_without_them_are_a_400(real_home: Home,
                                                         make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    with pytest.raises(openai.BadRequestError) as raised:
        oa(daemon).embeddings.create(model="local", input=["hello"])
    assert raised.value.code == "embeddings_unsupported"
    assert "model tiny-alpha does not serve embeddings: set llama.embeddings: true" in \
        raised.value.message
    with pytest.raises(ollama.ResponseError) as answered:
        ol(daemon).embed(model="local", input="hello")
    assert answered.value.status_code == 400 and "llama.embeddings: true" in \
        answered.value.error

