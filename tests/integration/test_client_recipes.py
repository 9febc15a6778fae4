"""Every recipe of docs/clients.md, exercised: `llmctl connect <client> --json` gives the
configuration, and the test sends what that client sends with it (tests/support/
client_requests.py records where each shape comes from) through llmctld to a REAL
llama-server. `llmctl connect` output and `--write` merging are in test_connect.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

import client_requests as clients
from harness import Daemon, Home

pytestmark = pytest.mark.real_backend


@pytest.fixture
def daemon(home: Home, llama_server_binary: Path, fim_gguf: Path, make_daemon) -> Daemon:
    home.use_real_server(llama_server_binary)
    home.write_config(llama={"ctx_size": 1024}, daemon={"default_model": "coder"})
    home.add_model("coder", fim_gguf)
    return make_daemon()


def recipe(daemon: Daemon, client: str) -> dict[str, Any]:
    out = daemon.cli("connect", client, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["url"] == daemon.url
    return data["settings"]


def sse_data(lines: list[bytes]) -> list[Any]:
    return [line[len(b"data: "):] for line in lines if line.startswith(b"data: ")]


def test_claude_code(daemon: Daemon) -> None:
    env = recipe(daemon, "claude-code")["env"]
    base = env["ANTHROPIC_BASE_URL"]
    headers = {**clients.CLAUDE_CODE_HEADERS, "authorization":
               f"Bearer {env['ANTHROPIC_AUTH_TOKEN']}"}
    r = daemon.session.post(f"{base}/v1/messages?beta=true", headers=headers, stream=True,
                            json=clients.claude_code_messages("Read README.md"), timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = [line[len(b"event: "):].decode() for line in r.iter_lines()
              if line.startswith(b"event: ")]
    # (llama-server itself now and then leaves out message_start; llmctld puts it back)
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert events.count("message_start") == 1
    assert "message_delta" in events  # (at temperature 1 the random model may end at once)

    r = daemon.session.post(f"{base}/v1/messages/count_tokens?beta=true", headers=headers,
                            json=clients.claude_code_count_tokens("Read README.md"), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["input_tokens"] > len("Read README.md")


def test_opencode(daemon: Daemon) -> None:
    provider = recipe(daemon, "opencode")["provider"]["llmctl"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    base = provider["options"]["baseURL"]
    model = next(iter(provider["models"]))
    r = daemon.session.post(f"{base}/chat/completions", stream=True, timeout=60,
                            headers={"user-agent": "ai-sdk/openai-compatible/1.0.19"},
                            json={**clients.opencode_chat("list the files"), "model": model})
    assert r.status_code == 200, r.text
    chunks = sse_data(list(r.iter_lines()))
    assert chunks[-1] == b"[DONE]"
    parsed = [json.loads(c) for c in chunks[:-1]]
    assert parsed[-1]["usage"]["completion_tokens"] > 0  # include_usage was honoured
    assert all(p["object"] == "chat.completion.chunk" for p in parsed)


def test_continue(daemon: Daemon) -> None:
    models = {m["name"]: m for m in recipe(daemon, "continue")["models"]}
    chat = models["llmctl"]
    oa = openai.OpenAI(base_url=chat["apiBase"], api_key=chat["apiKey"], max_retries=0,
                       timeout=60)
    stream = oa.chat.completions.create(model=chat["model"], max_tokens=8, stream=True,
                                        messages=[{"role": "user", "content": "hi"}])
    assert any(c.choices and c.choices[0].finish_reason for c in stream)

    url, headers, body = clients.continue_autocomplete(models["llmctl autocomplete"]["apiBase"],
                                                       "def fib(n):\n")
    assert url == f"{daemon.url}/completion"
    r = daemon.session.post(url, headers=headers, json=body, stream=True, timeout=60)
    assert r.status_code == 200, r.text
    events = [json.loads(d) for d in sse_data(list(r.iter_lines()))]
    assert events and events[-1]["stop"] is True
    assert all("content" in e for e in events)


def test_aider(daemon: Daemon) -> None:
    settings = recipe(daemon, "aider")
    provider, _, model = settings["model"].partition("/")
    assert provider == "openai"  # litellm's prefix for an OpenAI-compatible server
    # aider calls litellm.completion(stream=True, temperature=0), which uses the openai SDK
    # against openai-api-base (aider/models.py send_completion)
    oa = openai.OpenAI(base_url=settings["openai-api-base"],
                       api_key=settings["openai-api-key"], max_retries=0, timeout=60)
    chunks = list(oa.chat.completions.create(
        model=model, stream=True, temperature=0, max_tokens=8,
        messages=[{"role": "system", "content": "Act as an expert software developer."},
                  {"role": "user", "content": "hi"}]))
    assert chunks and chunks[0].object == "chat.completion.chunk"


def test_llama_vscode(daemon: Daemon) -> None:
    settings = recipe(daemon, "llama-vscode")
    endpoint = settings["llama-vscode.endpoint"]
    r = daemon.session.post(f"{endpoint}/infill", timeout=60,
                            json=clients.llama_vscode_infill("import os\n", "\n"))
    assert r.status_code == 200, r.text
    assert "content" in r.json() and r.json()["timings"]["predicted_n"] > 0
    chat_url = (f"{settings['llama-vscode.endpoint_chat']}/"
                f"{settings['llama-vscode.ai_api_version']}/chat/completions")
    r = daemon.session.post(chat_url, json=clients.llama_vscode_chat("explain"), timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"


def test_open_webui(daemon: Daemon) -> None:
    env = recipe(daemon, "open-webui")
    base, key = env["OPENAI_API_BASE_URL"], env["OPENAI_API_KEY"]
    headers = {"Authorization": f"Bearer {key}"}
    models = daemon.session.get(f"{base}/models", headers=headers, timeout=30).json()
    assert [m["id"] for m in models["data"]] == ["local"]
    r = daemon.session.post(f"{base}/chat/completions", headers=headers, stream=True,
                            json=clients.open_webui_chat("hello"), timeout=60)
    assert r.status_code == 200 and sse_data(list(r.iter_lines()))[-1] == b"[DONE]"


def test_the_sdks(daemon: Daemon) -> None:
    base = recipe(daemon, "openai")["OPENAI_BASE_URL"]
    oa = openai.OpenAI(base_url=base, api_key="llmctl", max_retries=0, timeout=60)
    assert oa.chat.completions.create(model="gpt-4o", max_tokens=4, messages=[
        {"role": "user", "content": "hi"}]).choices[0].message.role == "assistant"
    base = recipe(daemon, "anthropic")["ANTHROPIC_BASE_URL"]
    claude = anthropic.Anthropic(base_url=base, api_key="llmctl", max_retries=0, timeout=60)
    reply = claude.messages.create(model="claude-opus-4-6", max_tokens=4,
                                   messages=[{"role": "user", "content": "hi"}])
    assert reply.type == "message"
