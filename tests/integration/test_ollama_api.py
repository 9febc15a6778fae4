"""The Ollama-compatible /api/* facade, driven by the official clients (PyPI `ollama`, and npm
`ollama` through tests/integration/ollama_client.mjs) against a real llmctld and the real
llama-server serving tiny generated GGUFs. The scripted fake llama-server stands in only
where the tiny model cannot do the thing (call a tool, fail mid-stream), and to record what
llama-server was sent."""

from __future__ import annotations

import base64
import json
import math
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ollama
import pytest
import requests

from harness import ROOT, Daemon, Home, wait_for
from tinymodel import write_tiny_llama

pytestmark = pytest.mark.real_backend

TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n{{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))


def client(daemon: Daemon) -> ollama.Client:
    return ollama.Client(host=daemon.url, timeout=60, trust_env=False)


def backend_slot_params(daemon: Daemon) -> dict[str, Any]:
    """What the real llama-server itself says the last request's sampling parameters were."""
    backend = daemon.backend()
    slots = requests.get(f"http://127.0.0.1:{backend['port']}/slots", timeout=10).json()
    return slots[0]["params"]


# --- real llama-server ------------------------------------------------------------------------

def test_version_tags_show_and_ps(real_home: Home, make_daemon, tmp_path: Path) -> None:
    tools_gguf = write_tiny_llama(tmp_path / "tools.gguf", name="tools",
                                  chat_template=TOOLS_TEMPLATE)
    real_home.add_model("tiny-tools", tools_gguf)
    daemon = make_daemon()
    oc = client(daemon)

    version = daemon.get("/api/version").json()["version"]
    assert daemon.session.head(daemon.url + "/api/tags", timeout=10).status_code == 200
    assert [int(p) for p in version.split(".")] >= [0, 6, 4]  # what Copilot asks for

    listed = oc.list().models
    assert [m.model for m in listed] == ["local"]
    assert listed[0].size == 0  # nothing active and no default: no facts yet

    assert daemon.switch("tiny-alpha").status_code == 200
    (local,) = oc.list().models
    assert local.size == Path(real_home.models_dir / "tiny-alpha" / "model.gguf").stat().st_size
    assert local.details is not None and local.details.family == "llama"
    assert local.details.quantization_level == "F32" and local.details.format == "gguf"
    assert local.details.parameter_size.endswith("K")
    assert len(local.digest or "") == 64

    shown = oc.show("local:latest")
    assert shown.capabilities == ["completion"]  # the tiny model has no chat template
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 2048
    assert shown.modelinfo["tokenizer.ggml.tokens"] == []  # arrays elided, as Ollama does
    assert "num_ctx" in (shown.parameters or "") and "FROM " in (shown.modelfile or "")

    tools = oc.show("tiny-tools")
    assert tools.capabilities == ["completion", "tools"]
    assert tools.template == TOOLS_TEMPLATE

    with pytest.raises(ollama.ResponseError) as e:
        oc.show("llama3.2")
    assert e.value.status_code == 404 and "llmctl models" in e.value.error

    (running,) = oc.ps().models
    # /api/ps's size is the memory it takes (llama-fit-params' figure for its launch), not
    # the file's size as /api/tags says; size_vram the device part (none without a GPU)
    memory = daemon.get("/models/tiny-alpha").json()["memory"]
    assert memory["state"] == "known" and memory["devices"] == {}
    assert running.model == "local" and running.size == memory["host_mib"] * 2**20 > 0
    assert running.expires_at is not None and running.expires_at > datetime.now(timezone.utc)
    assert running.size_vram == 0

    assert daemon.post("/stop").status_code == 200
    assert oc.ps().models == []


def test_chat_and_generate_streamed_and_whole(real_home: Home, make_daemon) -> None:
    real_home.write_config(daemon={"default_model": "tiny-alpha"})
    daemon = make_daemon()
    oc = client(daemon)
    messages = [{"role": "user", "content": "hi"}]
    # nothing is loaded: the first request loads the default model, as a /v1 request would
    parts = list(oc.chat("local", messages=messages, stream=True,
                         options={"num_predict": 12, "temperature": 0.0}))
    assert daemon.backend()["model"] == "tiny-alpha"
    # temperature 0: greedy, so the random model's answer (and whether it ends early with an
    # end-of-sequence token) is the same on every run
    *pieces, final = parts
    assert pieces and all(not p.done for p in pieces)
    assert "".join(p.message.content or "" for p in pieces)
    assert final.done and final.done_reason == "length" and final.eval_count == 12
    assert final.prompt_eval_count and final.prompt_eval_count > 0
    assert final.eval_duration and final.total_duration and final.load_duration
    assert final.total_duration >= final.eval_duration
    assert final.load_duration > 0  # it waited for the load

    whole = oc.chat("local", messages=messages, stream=False,
                    options={"num_predict": 5, "temperature": 0})
    assert whole.done and whole.done_reason == "length" and whole.eval_count == 5
    assert whole.message.role == "assistant" and isinstance(whole.message.content, str)

    generated = list(oc.generate("local", prompt="once upon", stream=True, system="tell",
                                 options={"num_predict": 6, "temperature": 0}))
    assert generated[-1].done and generated[-1].eval_count == 6
    assert "".join(g.response for g in generated[:-1])
    raw = oc.generate("local", prompt="<s>raw text", raw=True, stream=False,
                      options={"num_predict": 4, "temperature": 0})
    assert raw.done and raw.done_reason == "length" and raw.eval_count == 4
    with pytest.raises(ollama.ResponseError) as e:  # images need a projector (mmproj)
        oc.chat("local", messages=[{"role": "user", "content": "what?", "images": [PNG]}])
    assert e.value.status_code == 500 and "image input is not supported" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:  # suffix -> /infill: needs FIM tokens
        oc.generate("local", prompt="def f(", suffix="    return x", stream=False)
    assert e.value.status_code == 501 and "Infill is not supported" in e.value.error
    assert daemon.status()["in_flight"] == 0


def test_options_reach_llama_server(real_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    oc = client(daemon)
    oc.chat("local", messages=[{"role": "user", "content": "hi"}], stream=False, options={
        "num_predict": 7, "temperature": 0.35, "top_k": 11, "top_p": 0.8, "min_p": 0.07,
        "seed": 4242, "repeat_penalty": 1.25, "repeat_last_n": 33, "num_keep": 4,
        "presence_penalty": 0.5, "frequency_penalty": 0.25, "num_gpu": 1, "num_thread": 1})
    params = backend_slot_params(daemon)
    assert params["n_predict"] == 7 and params["top_k"] == 11 and params["seed"] == 4242
    assert params["repeat_last_n"] == 33 and params["n_keep"] == 4
    for key, value in (("temperature", 0.35), ("top_p", 0.8), ("min_p", 0.07),
                       ("repeat_penalty", 1.25), ("presence_penalty", 0.5),
                       ("frequency_penalty", 0.25)):
        assert math.isclose(params[key], value, rel_tol=1e-4), (key, params[key])

    with pytest.raises(ollama.ResponseError) as e:
        oc.chat("local", messages=[{"role": "user", "content": "hi"}],
                options={"num_ctx": 100_000, "num_predict": 2})
    assert e.value.status_code == 400
    assert "llama.ctx_size" in e.value.error and "512" in e.value.error
    within = oc.chat("local", messages=[{"role": "user", "content": "hi"}], stream=False,
                     options={"num_ctx": 512, "num_predict": 2, "temperature": 0})
    assert within.eval_count == 2

    with pytest.raises(ollama.ResponseError) as e:
        oc.chat("local", messages=[{"role": "user", "content": "hi"}],
                options={"temperature": "hot"})
    assert e.value.status_code == 400 and "options.temperature" in e.value.error


def test_format_json_schema_is_enforced(real_home: Home, make_daemon, tmp_path: Path) -> None:
    # The tiny default model has no chat template, and with llama-server's fallback (chatml,
    # whose assistant prefix is not in the byte vocabulary) llama-server cannot build the
    # grammar of a chat completion; a template without an assistant prefix works.
    plain = write_tiny_llama(tmp_path / "plain.gguf", name="plain", chat_template=(
        "{% for m in messages %}{{ m.content }}\n{% endfor %}"))
    real_home.add_model("tiny-plain", plain)
    daemon = make_daemon()
    assert daemon.switch("tiny-plain").status_code == 200
    oc = client(daemon)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    # random weights: only llama-server's grammar can make these valid JSON
    whole = oc.chat("local", messages=[{"role": "user", "content": "answer"}], format=schema,
                    stream=False, options={"num_predict": 64, "seed": 1})
    assert isinstance(json.loads(whole.message.content)["ok"], bool)
    parts = list(oc.chat("local", messages=[{"role": "user", "content": "answer"}],
                         format=schema, stream=True, options={"num_predict": 64, "seed": 2}))
    assert parts[-1].done and parts[-1].done_reason == "stop"
    assert isinstance(json.loads("".join(p.message.content for p in parts))["ok"], bool)
    raw = oc.generate("local", prompt="answer", format="json", raw=True, stream=False,
                      options={"num_predict": 200, "seed": 3})
    assert isinstance(json.loads(raw.response), dict)


def test_embed_with_an_embedding_model(real_home: Home, make_daemon, tiny_gguf: Path) -> None:
    real_home.add_model("tiny-embed", tiny_gguf, llama={
        "extra_args": ["--embeddings", "--pooling", "mean"]})
    daemon = make_daemon()
    assert daemon.switch("tiny-embed").status_code == 200
    oc = client(daemon)
    assert oc.show("local").capabilities == ["completion", "embedding"]
    result = oc.embed("local", input=["the sky", "green grass"])
    assert len(result.embeddings) == 2 and len(result.embeddings[0]) == 64
    assert math.isclose(sum(x * x for x in result.embeddings[0]), 1.0, rel_tol=1e-3)
    assert result.embeddings[0] != result.embeddings[1]
    assert result.prompt_eval_count and result.prompt_eval_count > 0
    short = oc.embed("local", input="the sky", dimensions=8)
    assert len(short.embeddings[0]) == 8
    assert math.isclose(sum(x * x for x in short.embeddings[0]), 1.0, rel_tol=1e-3)
    legacy = oc.embeddings("local", prompt="the sky")
    assert len(legacy.embedding) == 64


def test_load_unload_and_keep_alive_validation(real_home: Home, make_daemon) -> None:
    real_home.write_config(daemon={"default_model": "tiny-beta"})
    daemon = make_daemon()
    oc = client(daemon)
    loaded = oc.generate("local", prompt="")  # Ollama's way to preload a model
    assert loaded.done and loaded.done_reason == "load"
    assert daemon.backend()["state"] == "ready"
    unloaded = oc.generate("local", prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert daemon.backend()["state"] == "stopped"
    with pytest.raises(ollama.ResponseError) as e:
        oc.chat("local", messages=[{"role": "user", "content": "hi"}], keep_alive="forever")
    assert e.value.status_code == 400 and "keep_alive" in e.value.error
    assert daemon.backend()["state"] == "stopped"  # refused before anything was loaded


def test_keep_alive_sets_the_idle_unload(real_home: Home, make_daemon) -> None:
    """keep_alive on a request replaces the model's idle timeout: a duration restarts the
    countdown (seen in /status and /api/ps expires_at), -1 pins, 0 unloads when the request
    is over, and the next request wakes the model."""
    real_home.write_config(daemon={"idle_unload": "1h"})
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    oc = client(daemon)
    hi = [{"role": "user", "content": "hi"}]
    oc.chat("local", messages=hi, keep_alive="90s", options={"num_predict": 2})
    idle = daemon.status()["idle"]
    assert idle["idle_unload_s"] == 90.0 and 0 < idle["unloads_in_s"] <= 90
    (running,) = oc.ps().models
    left = (running.expires_at - datetime.now(timezone.utc)).total_seconds()
    assert 0 < left <= 90

    oc.generate("local", prompt="hi", keep_alive=-1, options={"num_predict": 2})
    assert daemon.status()["idle"]["idle_unload_s"] is None  # pinned by the request
    (running,) = oc.ps().models
    assert running.expires_at.year > 2100

    pid = daemon.backend()["pid"]
    oc.chat("local", messages=hi, keep_alive=0, options={"num_predict": 2})
    wait_for(lambda: daemon.backend()["state"] == "stopped", 20, "the unload", daemon.log)
    assert daemon.status()["idle"]["unloaded"]["model"] == "tiny-alpha"
    assert oc.ps().models == []
    oc.chat("local", messages=hi, options={"num_predict": 2})  # wakes that model
    backend = daemon.backend()
    assert backend["model"] == "tiny-alpha" and backend["pid"] != pid


def test_routing_by_model_name(real_home: Home, make_daemon) -> None:
    real_home.write_config(daemon={"route_by_model": True})
    real_home.add_model("tiny-gamma", real_home.models_dir / "tiny-alpha" / "model.gguf",
                        aliases=["gamma:7b"])
    daemon = make_daemon()
    oc = client(daemon)
    names = [m.model for m in oc.list().models]
    assert names == ["local", "tiny-alpha", "tiny-beta", "tiny-gamma", "gamma:7b"]
    reply = oc.chat("tiny-beta:latest", messages=[{"role": "user", "content": "hi"}],
                    options={"num_predict": 2})
    assert reply.model == "tiny-beta:latest" and daemon.backend()["model"] == "tiny-beta"
    assert [m.model for m in oc.ps().models] == ["tiny-beta"]
    oc.generate("gamma:7b", prompt="hi", options={"num_predict": 2})
    assert daemon.backend()["model"] == "tiny-gamma"
    assert oc.show("gamma:7b").details.family == "llama"
    with pytest.raises(ollama.ResponseError) as e:
        oc.chat("llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404 and "tiny-alpha" in e.value.error


def test_refused_routes_name_the_llmctl_way(real_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    oc = client(daemon)
    refusals = {
        "create": lambda: oc.create("mine", from_="local"),
        "copy": lambda: oc.copy("local", "backup"),
        "delete": lambda: oc.delete("local"),
        "push": lambda: oc.push("me/local"),
        "pull": lambda: oc.pull("llama3.2"),
    }
    for route, call in refusals.items():
        with pytest.raises(ollama.ResponseError) as e:
            call()
        assert e.value.status_code == 501, route
        assert "llmctl" in e.value.error, route
    assert "llmctl pull" in _error_of(lambda: oc.pull("llama3.2"))
    assert "llmctl add" in _error_of(lambda: oc.create("mine", from_="local"))
    assert "aliases:" in _error_of(lambda: oc.copy("local", "backup"))
    assert oc.pull("local", stream=False).status == "success"  # already here
    assert [p.status for p in oc.pull("tiny-alpha", stream=True)] == ["success"]
    assert daemon.get("/api/nope").status_code == 404
    # nothing loaded and no default model: the same advice as /v1 gives, in Ollama's shape
    with pytest.raises(ollama.ResponseError) as e:
        oc.chat("local", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 503 and "llmctl switch" in e.value.error


def _error_of(call: Any) -> str:
    with pytest.raises(ollama.ResponseError) as e:
        call()
    return str(e.value.error)


def test_cross_site_origin_is_refused(real_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    evil = {"Origin": "https://evil.example"}
    chat = {"model": "local", "messages": [{"role": "user", "content": "hi"}]}
    for method, path, body in (("POST", "/api/chat", chat), ("POST", "/api/generate", chat),
                               ("GET", "/api/tags", None), ("GET", "/api/ps", None),
                               ("DELETE", "/api/delete", {"model": "local"})):
        r = daemon.session.request(method, daemon.url + path, json=body, headers=evil,
                                   timeout=10)
        assert r.status_code == 403, (path, r.text)
        assert "cross-site" in r.json()["error"] and "allowed_origins" in r.json()["error"]
    assert daemon.backend()["state"] == "stopped"  # nothing was loaded for them
    ok = daemon.get("/api/tags", headers={"Origin": "http://localhost:3000"})
    assert ok.status_code == 200
    assert ok.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


def test_npm_ollama_client(real_home: Home, make_daemon) -> None:
    node = shutil.which("node")
    assert node, "node is missing: install Node.js >= 20.6 (apt-get install nodejs npm)"
    assert (ROOT / "node_modules" / "ollama").is_dir(), "run `npm ci` to install npm ollama"
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    script = Path(__file__).with_name("ollama_client.mjs")
    done = subprocess.run([node, str(script), daemon.url], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["tags"] == ["local"] and out["ps"] == ["local"]
    assert out["version"].count(".") == 2
    assert out["capabilities"] == ["completion"]
    assert out["chat"]["parts"] >= 2 and out["chat"]["done"] is True
    assert out["chat"]["eval_count"] == 6 and out["chat"]["done_reason"] == "length"
    assert out["generate"] == {"done": True, "eval_count": 4, "response": "string"}
    assert out["delete"]["status"] == 501 and "llmctl" in out["delete"]["error"]


# --- the scripted fake, where the tiny model cannot do it ---------------------------------------

def _fake_model(home: Home, tmp_path: Path, **script: Any) -> Path:
    record = tmp_path / "requests.jsonl"
    home.add_model("fake", script={"record_requests": str(record), **script})
    home.write_config(daemon={"default_model": "fake"})
    return record


def _recorded(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_tool_call_round_trip(fake_home: Home, make_daemon, tmp_path: Path) -> None:
    record = _fake_model(fake_home, tmp_path,
                         tool_call={"name": "get_weather", "arguments": {"city": "Paris"}})
    oc = client(make_daemon())
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    for stream in (False, True):
        if stream:
            parts = list(oc.chat("fake", messages=messages, tools=[WEATHER_TOOL], stream=True))
            calls = [c for p in parts for c in (p.message.tool_calls or [])]
            assert parts[-1].done and parts[-1].done_reason == "stop"
        else:
            reply = oc.chat("fake", messages=messages, tools=[WEATHER_TOOL], stream=False)
            calls = list(reply.message.tool_calls or [])
        (call,) = calls
        assert call.function.name == "get_weather"
        assert dict(call.function.arguments) == {"city": "Paris"}
    sent = _recorded(record)[-1]["body"]
    assert sent["tools"] == [WEATHER_TOOL]

    # the client runs the tool and sends the result back, as Ollama clients do
    answer = oc.chat("fake", stream=False, tools=[WEATHER_TOOL], messages=[
        *messages, {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny, 21 C", "tool_name": "get_weather"}])
    assert answer.message.content and not answer.message.tool_calls
    assistant, tool = _recorded(record)[-1]["body"]["messages"][1:]
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert tool == {"role": "tool", "content": "sunny, 21 C", "name": "get_weather",
                    "tool_call_id": assistant["tool_calls"][0]["id"]}


def test_images_think_and_format_reach_llama_server(fake_home: Home, make_daemon,
                                                    tmp_path: Path) -> None:
    record = _fake_model(fake_home, tmp_path)
    oc = client(make_daemon())
    oc.chat("fake", stream=False, think=False, format="json", messages=[
        {"role": "user", "content": "what is this?", "images": [PNG]}],
        options={"num_predict": 3, "seed": 5, "stop": "END", "typical_p": 0.5})
    sent = _recorded(record)[-1]
    assert sent["path"] == "/v1/chat/completions"
    body = sent["body"]
    image, text = body["messages"][0]["content"]
    assert image["image_url"]["url"] == \
        "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert text == {"type": "text", "text": "what is this?"}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["response_format"] == {"type": "json_object"}
    assert (body["max_tokens"], body["seed"], body["stream"]) == (3, 5, False)
    assert (body["stop"], body["typical_p"]) == (["END"], 0.5)


def test_stream_is_relayed_as_it_comes_and_errors_end_it(fake_home: Home, make_daemon,
                                                         tmp_path: Path) -> None:
    _fake_model(fake_home, tmp_path, chunk_interval=0.5, stream_chunks=6)
    daemon = make_daemon()
    r = daemon.post("/api/chat", stream=True, json={
        "model": "local", "messages": [{"role": "user", "content": "hi"}]})
    assert r.headers["Content-Type"] == "application/x-ndjson"
    lines = r.iter_lines()
    first = json.loads(next(lines))
    assert first["done"] is False and first["message"]["content"]
    # the first line is here while the answer is still being generated, and the request
    # counts as in flight like a /v1 one: a stop is refused as busy
    assert daemon.status()["in_flight"] == 1
    busy = daemon.post("/stop")
    assert busy.status_code == 409 and busy.json()["error"]["in_flight"] == 1
    rest = [json.loads(line) for line in lines if line]
    assert rest[-1]["done"] is True and rest[-1]["eval_count"] == 6
    wait_for(lambda: daemon.status()["in_flight"] == 0, 10, "the request to be released")


def test_mid_stream_failure_is_an_error_line(fake_home: Home, make_daemon,
                                             tmp_path: Path) -> None:
    _fake_model(fake_home, tmp_path, error_after_chunks=2)
    oc = client(make_daemon())
    got: list[Any] = []
    with pytest.raises(ollama.ResponseError) as e:
        for part in oc.chat("local", messages=[{"role": "user", "content": "hi"}], stream=True):
            got.append(part)
    assert len(got) == 2 and "fake error mid-stream" in e.value.error
