"""The Ollama facade's answers where it used to be wrong: an empty-prompt unload names its
model, and every /api error is Ollama's JSON `{"error": ...}` with a fitting status (never an
HTML 500), against a real llmctld and the real llama-server."""

from __future__ import annotations

import ollama
import pytest

from harness import Daemon, Home

pytestmark = pytest.mark.real_backend


def client(daemon: Daemon) -> ollama.Client:
    return ollama.Client(host=daemon.url, timeout=60, trust_env=False)


def test_keep_alive_0_unloads_only_the_model_it_names(real_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").ok
    oc = client(daemon)
    other = oc.generate("tiny-beta", prompt="", keep_alive=0)  # not loaded: nothing to do
    assert other.done and other.done_reason == "unload"
    assert daemon.backend()["state"] == "ready" and daemon.backend()["model"] == "tiny-alpha"
    with pytest.raises(ollama.ResponseError) as e:
        oc.chat("no-such-model", messages=[], keep_alive=0)
    assert e.value.status_code == 404 and "no-such-model" in e.value.error
    assert daemon.backend()["state"] == "ready"
    unloaded = oc.generate("tiny-alpha:latest", prompt="", keep_alive=0)  # the loaded one
    assert unloaded.done_reason == "unload"
    assert daemon.backend()["state"] == "stopped"


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_a_400_in_ollamas_shape(real_home: Home, make_daemon,
                                                       number: str) -> None:
    real_home.write_config(daemon={"default_model": "tiny-alpha"})
    daemon = make_daemon()
    for path, body in (
            ("/api/generate", '{"model": "local", "prompt": "hi", "options": '
                              '{"temperature": %s}}'),
            ("/api/chat", '{"model": "local", "messages": [{"role": "user", "content": "hi"}],'
                          ' "options": {"num_predict": %s}}'),
            ("/api/generate", '{"model": "local", "prompt": "hi", "keep_alive": %s}')):
        r = daemon.post(path, data=body % number, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (path, r.status_code, r.text[:300])
        assert r.headers["Content-Type"].startswith("application/json")
        assert number.lstrip("-") in r.json()["error"] or "finite" in r.json()["error"]
    assert daemon.backend()["state"] == "stopped"  # refused before anything was loaded


def test_every_api_error_is_ollamas_json(real_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    json_type = {"Content-Type": "application/json"}
    for method, path, body, status in (
            ("GET", "/api/nope", None, 404),
            ("GET", "/api/chat", None, 405),
            ("POST", "/api/chat", "not json", 400),
            ("POST", "/api/chat", "[1, 2]", 400),
            ("POST", "/api/chat", '{"model": "local", "messages": "hi"}', 400),
            ("POST", "/api/show", '{"model": "no-such-model"}', 404),
            ("POST", "/api/generate", '{"model": "local", "prompt": "hi", "options": 3}', 400),
            ("POST", "/api/delete", '{"model": "local"}', 501)):
        r = daemon.session.request(method, daemon.url + path, data=body, headers=json_type,
                                   timeout=30)
        assert r.status_code == status, (method, path, r.status_code, r.text[:300])
        assert r.headers["Content-Type"].startswith("application/json"), (path, r.headers)
        error = r.json()["error"]
        assert isinstance(error, str) and error, (path, error)
