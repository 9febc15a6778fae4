"""The Anthropic Messages API and the OpenAI Responses API through llmctld, driven by the
official `anthropic` and `openai` SDKs against a REAL llama-server (tiny random models: the
text is garbage, so these check shapes, event sequences and that what the client sent reached
llama-server). Model names such clients send (claude-..., gpt-...) are served by the active
model."""

from __future__ import annotations

from pathlib import Path

import anthropic
import openai
import pytest
import requests

from harness import Daemon, Home

pytestmark = pytest.mark.real_backend

SYSTEM = "You are a terse assistant who answers in one word. " * 4
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {"type": "object", "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome"]}}, "required": ["city"]},
}


@pytest.fixture
def daemon(home: Home, llama_server_binary: Path, fim_gguf: Path, make_daemon) -> Daemon:
    home.use_real_server(llama_server_binary)
    home.write_config(llama={"ctx_size": 1024})
    home.add_model("tiny", fim_gguf)
    daemon = make_daemon()
    assert daemon.switch("tiny").status_code == 200
    return daemon


def claude(daemon: Daemon) -> anthropic.Anthropic:
    # what Claude Code does with ANTHROPIC_BASE_URL: the SDK appends /v1/messages
    return anthropic.Anthropic(base_url=daemon.url, api_key="unused", max_retries=0,
                               timeout=60)


def test_anthropic_messages_plain_and_with_a_system_prompt(daemon: Daemon) -> None:
    client = claude(daemon)
    question = [{"role": "user", "content": "Hi there"}]
    greedy = {"temperature": 0}  # so that the random model surely says something first
    plain = client.messages.create(model="claude-sonnet-4-6", max_tokens=8, messages=question,
                                   extra_body=greedy)
    assert plain.type == "message" and plain.role == "assistant"
    assert plain.content and plain.content[0].type == "text"
    assert plain.stop_reason in ("max_tokens", "end_turn")
    assert plain.usage.output_tokens > 0

    with_system = client.messages.create(model="claude-haiku-4-5", max_tokens=8,
                                         system=SYSTEM, messages=question, extra_body=greedy)
    # the tiny model's tokenizer is one token per byte: the system prompt reached llama-server
    def prompt(m: anthropic.types.Message) -> int:
        return m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0)

    assert prompt(with_system) - prompt(plain) >= len(SYSTEM.encode())

    counted = client.messages.count_tokens(model="claude-sonnet-4-6", system=SYSTEM,
                                           messages=question)
    # (llama-server reports the prompt prefix it had cached apart, as Anthropic does)
    usage = with_system.usage
    assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)


def test_anthropic_messages_streamed(daemon: Daemon) -> None:
    client = claude(daemon)
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=12, system=SYSTEM,
                                messages=[{"role": "user", "content": "Tell me a story"}],
                                extra_body={"temperature": 0}) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start"
    assert events[-1] == "message_stop"
    assert "content_block_start" in events and "content_block_stop" in events
    assert events.count("text") >= 1  # the SDK's own event for each content_block_delta
    assert events.index("message_delta") > events.index("content_block_stop")
    assert final.usage.output_tokens > 0 and final.content[0].type == "text"


def test_a_stream_llama_server_starts_without_message_start_is_repaired(
        home: Home, llama_server_binary: Path, tiny_gguf: Path, make_daemon) -> None:
    """llama-server b11434 leaves out message_start when the first token is an incomplete
    UTF-8 sequence. Greedy decoding of this prompt by the tiny model always starts so (straight
    from llama-server, the stream begins with content_block_start); through llmctld the SDK
    gets a whole stream."""
    home.use_real_server(llama_server_binary)
    home.write_config(llama={"ctx_size": 1024})
    home.add_model("tiny", tiny_gguf)
    daemon = make_daemon()
    assert daemon.switch("tiny").status_code == 200
    request = {"model": "claude-sonnet-4-6", "max_tokens": 12, "system": SYSTEM,
               "temperature": 0, "stream": True,
               "messages": [{"role": "user", "content": "hello"}]}
    backend = daemon.backend()
    direct = requests.post(f"http://{backend['host']}:{backend['port']}/v1/messages",
                           json=request, timeout=60)
    assert direct.text.startswith("event: content_block_start")  # what needs repairing

    through = daemon.post("/v1/messages", json=request)
    assert through.text.startswith("event: message_start\ndata: ")
    assert through.text.count("event: message_start") == 1
    with claude(daemon).messages.stream(
            model="claude-sonnet-4-6", max_tokens=12, system=SYSTEM,
            messages=[{"role": "user", "content": "hello"}],
            extra_body={"temperature": 0}) as stream:
        final = stream.get_final_message()
    assert final.model == "tiny" and final.content[0].type == "text"
    assert final.stop_reason == "max_tokens"


def test_anthropic_tool_use_and_results_reach_llama_server(daemon: Daemon) -> None:
    """A conversation with a tool_use and its tool_result, the way Claude Code sends it back,
    is accepted by llama-server and counted into the prompt. (The tiny models have no chat
    template that renders tool definitions, so those show in no count here; that they pass
    through is proven with the fake below, which only calls a tool the request offers.)"""
    client = claude(daemon)
    question = {"role": "user", "content": "What is the weather in Paris?"}
    call = {"role": "assistant", "content": [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}]}
    result = {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_01", "content": "Sunny, 21 C. " * 8}]}
    asked = client.messages.count_tokens(model="claude-sonnet-4-6", tools=[WEATHER_TOOL],
                                         messages=[question])
    answered = client.messages.count_tokens(model="claude-sonnet-4-6", tools=[WEATHER_TOOL],
                                            messages=[question, call, result])
    assert answered.input_tokens - asked.input_tokens >= len("Sunny, 21 C. " * 8)
    reply = client.messages.create(model="claude-sonnet-4-6", max_tokens=8, tools=[WEATHER_TOOL],
                                   tool_choice={"type": "auto"},
                                   messages=[question, call, result])
    assert reply.type == "message" and reply.content
    usage = reply.usage
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) == answered.input_tokens


def test_anthropic_tool_call_reaches_the_sdk(fake_home: Home, make_daemon) -> None:
    """A tiny random model cannot be made to call a tool (llama-server only constrains the
    output for chat templates that know tools, and the tiny models have none), so the scripted
    fake llama-server produces the call here: through llmctld the SDK gets a tool_use block,
    plain and streamed (input_json_delta)."""
    fake_home.add_model("caller", script={"tool_use": {"name": "get_weather",
                                                       "input": {"city": "Rome"}}})
    daemon = make_daemon()
    assert daemon.switch("caller").status_code == 200
    client = claude(daemon)
    question = [{"role": "user", "content": "What is the weather in Rome?"}]
    reply = client.messages.create(model="claude-sonnet-4-6", max_tokens=64,
                                   tools=[WEATHER_TOOL], messages=question)
    assert reply.stop_reason == "tool_use"
    (call,) = [block for block in reply.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.input == {"city": "Rome"}
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=64, tools=[WEATHER_TOOL],
                                messages=question) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert "input_json" in events  # the SDK's event for an input_json_delta
    assert final.stop_reason == "tool_use" and final.content[0].input == {"city": "Rome"}


def test_openai_responses_api(daemon: Daemon) -> None:
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", max_retries=0,
                           timeout=60)
    response = client.responses.create(model="gpt-4.1-mini", input="Hello",
                                       instructions=SYSTEM, max_output_tokens=8)
    assert response.object == "response" and response.status == "completed"
    message = next(item for item in response.output if item.type == "message")
    assert message.content[0].type == "output_text"
    assert response.usage is not None and response.usage.input_tokens >= len(SYSTEM.encode())

    # greedy, so that this random model surely says something (it may sample an end of text)
    stream = client.responses.create(model="gpt-4.1-mini", input="Hello", max_output_tokens=8,
                                     temperature=0, stream=True)
    events = [event.type for event in stream]
    assert events[0] == "response.created" and events[-1] == "response.completed"
    assert "response.output_text.delta" in events
