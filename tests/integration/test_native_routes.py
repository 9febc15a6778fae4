"""llama-server's own routes (/infill, /completion, /tokenize, ...) through llmctld, against a
REAL llama-server serving tiny generated GGUFs: forwarded like /v1 (autoload, in-flight
accounting, streaming), writes behind the daemon's back refused, cross-site pages refused."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from client_requests import llama_vscode_infill
from harness import Home, wait_for

pytestmark = pytest.mark.real_backend

EVIL = {"Origin": "https://evil.example"}


@pytest.fixture
def native_home(home: Home, llama_server_binary: Path, fim_gguf: Path) -> Home:
    home.use_real_server(llama_server_binary)
    home.write_config(llama={"ctx_size": 512}, daemon={"default_model": "coder"})
    home.add_model("coder", fim_gguf)
    home.add_model("embedder", fim_gguf, llama={"embeddings": True, "pooling": "mean"})
    return home


def sse_events(lines: list[bytes]) -> list[dict]:
    return [json.loads(line[len(b"data: "):]) for line in lines if line.startswith(b"data: ")]


def test_native_routes_reach_the_active_llama_server(native_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    # nothing is loaded: the first native request loads the default model, like /v1 does
    r = daemon.post("/infill", json=llama_vscode_infill("def add(a, b):\n", "\nprint(add(1, 2))\n"))
    assert r.status_code == 200, r.text
    infill = r.json()
    assert isinstance(infill["content"], str) and infill["timings"]["predicted_n"] > 0
    assert daemon.backend()["model"] == "coder"

    r = daemon.post("/completion", json={"prompt": "Once upon", "n_predict": 12, "stream": True,
                                         "ignore_eos": True}, stream=True)
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(list(r.iter_lines()))
    assert len(events) >= 2 and all("content" in e for e in events)
    assert events[-1]["stop"] is True and not any(e["stop"] for e in events[:-1])
    assert events[-1]["tokens_predicted"] == 12

    tokens = daemon.post("/tokenize", json={"content": "hello world"}).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    text = daemon.post("/detokenize", json={"tokens": tokens}).json()["content"]
    # the tiny vocabulary has no "▁" (SentencePiece's space) token: it is spelled in bytes and
    # comes back as such
    assert text.replace("\u2581", " ").strip() == "hello world"

    prompt = daemon.post("/apply-template", json={"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"}]}).json()["prompt"]
    assert "Be brief." in prompt and "What is 2+2?" in prompt

    props = daemon.get("/props").json()
    assert props["model_path"].endswith("model.gguf") and props["total_slots"] == 1
    slots = daemon.get("/slots").json()
    assert isinstance(slots, list) and slots[0]["n_ctx"] == 512

    # a model that is not an embedding model says so itself: the route reached llama-server
    r = daemon.post("/rerank", json={"query": "q", "documents": ["a", "b"]})
    assert r.status_code in (400, 501) and "rerank" in r.text.lower()

    assert daemon.status()["requests_total"] >= 8 and daemon.status()["in_flight"] == 0


def test_the_backends_own_control_routes_are_under_a_prefix(native_home: Home,
                                                            make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("coder").status_code == 200
    assert daemon.get("/health").json() == {"status": "ok"}  # ours
    assert "models" in daemon.get("/models").json()  # ours
    backend_models = daemon.get("/backend/models").json()  # llama-server's
    assert [m["id"] for m in backend_models["data"]] == ["coder"]
    assert daemon.get("/backend/health").json()["status"] == "ok"
    metrics = daemon.get("/backend/metrics")
    assert metrics.status_code == 200 and "llamacpp:" in metrics.text
    assert daemon.get("/backend/props").json()["total_slots"] == 1


def test_writes_behind_the_daemons_back_are_refused(native_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("coder").status_code == 200
    for r in (daemon.post("/props", json={"n_ctx": 4}),
              daemon.post("/slots/0", params={"action": "save"}, json={"filename": "x.bin"}),
              daemon.post("/slots/0?action=restore", json={"filename": "../../etc/passwd"}),
              daemon.post("/backend/props", json={})):
        assert r.status_code == 403, r.text
        err = r.json()["error"]
        assert err["type"] == "permission_error"
        assert "daemon.allow_backend_writes" in err["message"]
    # erasing a slot's cache writes no file: passed through to llama-server (which runs
    # with llmctl's own --slot-save-path for the KV store, so it erases the slot)
    r = daemon.post("/slots/0", params={"action": "erase"})
    assert r.status_code == 200 and r.json()["id_slot"] == 0, r.text

    native_home.write_config(daemon={"allow_backend_writes": True})
    assert daemon.post("/reload").status_code == 200
    r = daemon.post("/props", json={})
    # now llama-server itself answers (started without --props, it refuses in its own words)
    assert r.status_code != 403 or "allow_backend_writes" not in r.text
    assert "props" in r.text.lower()


def test_cross_site_pages_are_refused_on_every_native_route(native_home: Home,
                                                            make_daemon) -> None:
    daemon = make_daemon()
    requests_ = [("POST", p) for p in ("/infill", "/completion", "/completions", "/tokenize",
                                       "/detokenize", "/apply-template", "/embedding",
                                       "/embeddings", "/rerank", "/reranking", "/props",
                                       "/slots/0?action=erase", "/backend/completion")]
    requests_ += [("GET", p) for p in ("/props", "/slots", "/backend/health",
                                       "/backend/metrics", "/backend/models")]
    for method, path in requests_:
        r = daemon.session.request(method, daemon.url + path, headers=EVIL, json={},
                                   timeout=10)
        assert r.status_code == 403, (method, path, r.text)
        assert "daemon.allowed_origins" in r.json()["error"]["message"]
    assert daemon.backend()["state"] == "stopped"  # none of them loaded the default model


def test_embedding_model_answers_v1_embeddings(native_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("embedder").status_code == 200
    assert " --embeddings --pooling mean" in daemon.get("/logs/embedder").text  # the flags
    oa = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    result = oa.embeddings.create(model="text-embedding-3-small",
                                  input=["hello world", "goodbye"])
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 64 for d in result.data)  # the tiny model's n_embd
    assert result.data[0].embedding != result.data[1].embedding
    native = daemon.post("/embedding", json={"content": "hello world"}).json()
    assert len(native[0]["embedding"][0]) == 64


def test_native_requests_count_as_in_flight(fake_home: Home, make_daemon) -> None:
    """The busy rule covers native routes: a switch is refused while a /completion streams
    (a scripted fake llama-server, to keep the stream open for as long as the test needs)."""
    fake_home.add_model("talker", script={"chunk_interval": 0.05, "stream_chunks": 60})
    fake_home.add_model("other")
    daemon = make_daemon()
    assert daemon.switch("talker").status_code == 200
    stream = daemon.post("/completion", json={"prompt": "hi", "stream": True}, stream=True)
    lines = stream.iter_lines()
    assert next(lines).startswith(b"data: ")
    r = daemon.switch("other")
    assert r.status_code == 409 and r.json()["error"]["in_flight"] == 1
    rest = [line for line in lines if line]
    assert rest[-1] == b"data: [DONE]"  # the refused switch cut nothing
    wait_for(lambda: daemon.status()["in_flight"] == 0, 5, "in-flight count to drop")
    assert daemon.switch("other").status_code == 200
