"""Request-named models (daemon.route_by_model) with the fair queue, aliases and request
overrides, end to end against a real llama-server serving tiny models."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
import requests

from harness import Daemon, Home, wait_for

pytestmark = pytest.mark.real_backend


def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


def chat(daemon: Daemon, model: str, **extra: Any) -> str:
    reply = client(daemon).chat.completions.create(
        model=model, max_tokens=4, messages=[{"role": "user", "content": "hi"}], **extra)
    return reply.model


def switches(daemon: Daemon) -> list[str]:
    """Every model the lifecycle worker started, in order (from the daemon's log)."""
    return re.findall(r"starting (\S+) \(llama-server pid", daemon.log.read_text())


class LongStream:
    """A long streamed completion on the current model, read to its end in a thread."""

    # the slow model makes ~150 tokens/s on an idle 2-core machine: 400 last well over the
    # second or two the checks during the stream take
    def __init__(self, daemon: Daemon, tokens: int = 400):
        self.tokens = tokens
        self.chunks: list[Any] = []
        self.ended_at = 0.0
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(daemon,), daemon=True)
        self.thread.start()
        assert self.started.wait(60), "the stream did not start"

    def _run(self, daemon: Daemon) -> None:
        try:
            stream = client(daemon).chat.completions.create(
                model="local", max_tokens=self.tokens, stream=True,
                extra_body={"ignore_eos": True}, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "hi"}])
            for chunk in stream:
                self.chunks.append(chunk)
                self.started.set()
        except BaseException as e:  # reported by result()
            self.error = e
            self.started.set()
        self.ended_at = time.monotonic()

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def result(self) -> list[Any]:
        self.thread.join(120)
        assert self.error is None, f"the stream failed: {self.error!r}"
        assert self.chunks[-1].usage is not None, "the stream was cut (no final usage chunk)"
        assert self.chunks[-1].usage.completion_tokens == self.tokens, "the stream was cut"
        return self.chunks


def in_background(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = call()
        except BaseException as e:
            out["error"] = e
        out["at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def queued(daemon: Daemon, model: str, count: int = 1) -> bool:
    return {"model": model, "waiting": count} in daemon.status()["idle"]["queue"]


@pytest.fixture
def routed(real_home: Home, tiny_gguf) -> Home:
    real_home.write_config(daemon={"route_by_model": True})
    real_home.add_model("tiny-beta", tiny_gguf, aliases=["gpt-4o-mini", "team/coder"],
                        pi={"model": {"contextWindow": 1024}})
    return real_home


def test_a_request_naming_another_model_switches_to_it(routed: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    listed = {m["id"]: m for m in daemon.get("/v1/models").json()["data"]}
    assert list(listed) == ["local", "tiny-alpha", "tiny-beta", "gpt-4o-mini", "team/coder"]
    assert listed["tiny-alpha"]["status"] == {"value": "loaded"}
    assert listed["tiny-beta"]["status"] == {"value": "unloaded"}
    assert listed["tiny-beta"]["aliases"] == ["gpt-4o-mini", "team/coder"]
    assert listed["gpt-4o-mini"]["meta"] == {"alias_of": "tiny-beta"}

    assert chat(daemon, "local") == "tiny-alpha"
    assert chat(daemon, "tiny-beta") == "tiny-beta"
    assert daemon.backend()["model"] == "tiny-beta"
    assert chat(daemon, "tiny-alpha") == "tiny-alpha"
    assert chat(daemon, "gpt-4o-mini") == "tiny-beta", "an alias routes to its model"
    assert chat(daemon, "local") == "tiny-beta"
    assert switches(daemon) == ["tiny-alpha", "tiny-beta", "tiny-alpha", "tiny-beta"]

    with pytest.raises(openai.NotFoundError) as info:
        chat(daemon, "gpt-5")
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found"
    assert body["type"] == "invalid_request_error"
    assert "no model named 'gpt-5'" in body["message"] and "tiny-alpha, tiny-beta" in \
        body["message"]

    r = daemon.cli("switch", "team/coder")
    assert r.returncode == 0, r.stderr
    assert daemon.backend()["model"] == "tiny-beta"


def test_without_routing_any_name_is_served_by_the_active_model(real_home: Home,
                                                                make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    assert chat(daemon, "tiny-beta") == "tiny-alpha"
    assert chat(daemon, "gpt-5") == "tiny-alpha"
    assert [m["id"] for m in daemon.get("/v1/models").json()["data"]] == ["local"]


def test_another_model_waits_for_the_stream_in_flight_and_the_stream_is_intact(
        routed: Home, make_daemon, slow_gguf) -> None:
    routed.add_model("wordy", slow_gguf, llama={"ctx_size": 512})  # a slow token each time
    daemon = make_daemon()
    assert daemon.switch("wordy").status_code == 200
    stream = LongStream(daemon)
    other, answer = in_background(lambda: chat(daemon, "tiny-beta"))
    wait_for(lambda: queued(daemon, "tiny-beta"), 10, "the request for tiny-beta to queue")
    assert stream.running and daemon.backend()["model"] == "wordy"
    r = daemon.switch("tiny-alpha")  # an explicit switch keeps the busy rule
    assert r.status_code == 409 and r.json()["error"]["code"] == "busy"
    stream.result()
    other.join(120)
    assert answer.get("value") == "tiny-beta", answer
    assert answer["at"] >= stream.ended_at
    assert switches(daemon) == ["wordy", "tiny-beta"]


def test_the_queue_is_bounded_by_depth_and_time(routed: Home, make_daemon,
                                                slow_gguf) -> None:
    routed.write_config(daemon={"queue_depth": 1, "queue_timeout": "1s"})
    routed.add_model("wordy", slow_gguf, llama={"ctx_size": 512})
    daemon = make_daemon()
    assert daemon.switch("wordy").status_code == 200
    stream = LongStream(daemon)  # over 2 s: past the 1 s queue timeout
    first, first_answer = in_background(lambda: daemon.post("/v1/chat/completions", json={
        "model": "tiny-beta", "messages": [{"role": "user", "content": "hi"}]}))
    wait_for(lambda: queued(daemon, "tiny-beta"), 10, "the first request to queue")

    full = daemon.post("/v1/chat/completions", json={
        "model": "tiny-beta", "messages": [{"role": "user", "content": "hi"}]})
    assert full.status_code == 429
    assert full.headers["Retry-After"] == "5"
    error = full.json()["error"]
    assert error["code"] == "queue_full"
    assert "wordy is busy serving 1 request" in error["message"]
    assert "daemon.queue_depth is 1" in error["message"]

    first.join(30)
    late: requests.Response = first_answer["value"]
    assert stream.running, "the stream must outlast the queue timeout for this test"
    assert late.status_code == 503 and late.headers["Retry-After"] == "5"
    error = late.json()["error"]
    assert error["code"] == "queue_timeout"
    assert error["message"].startswith("waited 1s for tiny-beta (daemon.queue_timeout): wordy"
                                       " is busy serving 1 request")
    stream.result()
    assert switches(daemon) == ["wordy"], "nobody waits any more: no switch"


def test_interleaved_traffic_does_not_thrash(routed: Home, make_daemon) -> None:
    """Four clients per model, each sending three requests one after the other, all at once:
    every switch serves the requests queued for its model, so there are far fewer switches
    than requests (a FIFO queue would switch on nearly every one)."""
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200

    def client_session(model: str) -> list[str]:
        return [chat(daemon, model) for _ in range(3)]

    with ThreadPoolExecutor(8) as pool:
        sessions = {model: [pool.submit(client_session, model) for _ in range(4)]
                    for model in ("tiny-alpha", "tiny-beta")}
        served = {model: [m for f in futures for m in f.result(120)]
                  for model, futures in sessions.items()}
    assert served == {"tiny-alpha": ["tiny-alpha"] * 12, "tiny-beta": ["tiny-beta"] * 12}
    count = len(switches(daemon)) - 1
    print(f"24 interleaved requests took {count} switches")
    assert 1 <= count <= 10, switches(daemon)


def test_request_overrides_reach_llama_server(real_home: Home, make_daemon,
                                              tiny_gguf) -> None:
    real_home.add_model("tuned", tiny_gguf, request={
        "defaults": {"temperature": 0.25, "top_k": 11},
        "force": {"min_p": 0.125, "seed": 4242},
        "strip": ["top_p"]})
    daemon = make_daemon()
    assert daemon.switch("tuned").status_code == 200
    port = daemon.backend()["port"]
    r = daemon.post("/v1/chat/completions", json={
        "model": "local", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
        "top_k": 3, "top_p": 0.5, "min_p": 0.9, "seed": 1})
    assert r.status_code == 200, r.text
    params = requests.get(f"http://127.0.0.1:{port}/slots", timeout=5).json()[0]["params"]
    assert params["temperature"] == pytest.approx(0.25)  # a default the client left out
    assert params["top_k"] == 3  # the client's own value beats a default
    assert params["min_p"] == pytest.approx(0.125) and params["seed"] == 4242  # forced
    assert params["top_p"] == pytest.approx(0.95)  # stripped: llama-server's own default
