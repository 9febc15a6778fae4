"""/metrics and /activity against a REAL llama-server: counters and histograms move by exactly
what known requests should add, token counts equal llama-server's own `usage`, the counters
survive proxy-worker restarts (graceful and kill -9), a long stream leaves the proxy's memory
flat, and the switches in the config turn it all off."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from harness import Daemon, Home, wait_for

pytestmark = pytest.mark.real_backend

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(daemon: Daemon) -> Samples:
    r = daemon.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", max_retries=0,
                         timeout=60)


def recorded(daemon: Daemon, count: int) -> Samples:
    """The scrape once `count` proxied requests are counted: a request is recorded when the
    server closes its response, just after the client has read the last byte."""
    def done() -> Samples | None:
        samples = scrape(daemon)
        total = sum(v for (name, _), v in samples.items() if name == "llmctl_requests_total")
        return samples if total >= count else None

    return wait_for(done, 10, f"{count} requests on /metrics", daemon.log)


def chat(oa: openai.OpenAI, **kw: Any) -> Any:
    return oa.chat.completions.create(model="local", messages=[{"role": "user",
                                                                "content": "hi"}], **kw)


def test_counters_and_histograms_move_by_known_requests(real_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    refused = daemon.post("/v1/chat/completions", json={"messages": []})
    assert refused.status_code == 503  # nothing loaded, no default model
    assert daemon.switch("tiny-alpha").status_code == 200
    before = recorded(daemon, 1)
    assert value(before, "llmctl_requests_total", family="v1", status="503", model="") == 1
    assert value(before, "llmctl_switches_total", outcome="loaded") == 1
    assert value(before, "llmctl_load_seconds_count", model="tiny-alpha") == 1
    assert value(before, "llmctl_backend_state", state="ready") == 1
    assert value(before, "llmctl_backend_model_info", model="tiny-alpha") == 1

    oa = client(daemon)
    plain = chat(oa, max_tokens=8)
    chunks = list(chat(oa, max_tokens=16, stream=True, stream_options={"include_usage": True},
                       extra_body={"ignore_eos": True}))
    streamed = chunks[-1].usage
    assert plain.usage is not None and streamed is not None
    after = recorded(daemon, 3)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("llmctl_requests_total", family="v1", status="200", model="tiny-alpha") == 2
    assert moved("llmctl_request_duration_seconds_count", family="v1") == 2
    assert moved("llmctl_request_duration_seconds_sum", family="v1") > 0
    assert moved("llmctl_time_to_first_byte_seconds_count", family="v1") == 2
    assert value(after, "llmctl_request_duration_seconds_bucket", family="v1", le="+Inf") == 3
    # the token counters add up exactly what llama-server itself reported
    assert moved("llmctl_generated_tokens_total", model="tiny-alpha") == \
        plain.usage.completion_tokens + streamed.completion_tokens == 8 + 16
    assert moved("llmctl_prompt_tokens_total", model="tiny-alpha") == \
        plain.usage.prompt_tokens + streamed.prompt_tokens
    cached = sum(u.prompt_tokens_details.cached_tokens or 0 for u in (plain.usage, streamed)
                 if u.prompt_tokens_details is not None)
    assert moved("llmctl_cached_prompt_tokens_total", model="tiny-alpha") == cached
    assert moved("llmctl_generation_tokens_per_second_count", model="tiny-alpha") == 2
    assert value(after, "llmctl_requests_in_flight") == 0
    assert value(after, "llmctl_worker_restarts_total", worker="proxy") == 0
    assert not any(name.startswith("llmctl_gpu_") for name, _ in after)  # no GPU here

    entries = daemon.get("/activity").json()["entries"]
    assert [e["status"] for e in entries] == [503, 200, 200]
    first, second = entries[1], entries[2]
    assert (first["stream"], second["stream"]) == (False, True)
    assert (first["prompt_tokens"], first["generated_tokens"]) == (
        plain.usage.prompt_tokens, plain.usage.completion_tokens)
    assert (second["prompt_tokens"], second["generated_tokens"]) == (
        streamed.prompt_tokens, streamed.completion_tokens)
    for entry in (first, second):
        assert entry["model"] == "tiny-alpha" and entry["client"] == "loopback"
        assert entry["route"] == "/v1/chat/completions" and entry["tokens_per_s"] > 0
        assert 0 < entry["ttfb_ms"] <= entry["duration_ms"]
    assert "no model is loaded" in entries[0]["error"]


def test_a_failed_switch_is_counted_by_its_outcome(real_home: Home, tiny_gguf: Path,
                                                  tmp_path: Path, make_daemon) -> None:
    truncated = tmp_path / "truncated.gguf"  # a readable header, then llama-server fails
    truncated.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    real_home.add_model("broken", truncated)
    daemon = make_daemon()
    assert daemon.switch("broken").status_code == 502
    samples = wait_for(lambda: (s := scrape(daemon)) and value(
        s, "llmctl_switches_total", outcome="load_failed") == 1 and s, 10, "the failed switch")
    assert value(samples, "llmctl_switches_total", outcome="loaded") == 0
    assert value(samples, "llmctl_backend_state", state="failed") == 1


def test_an_idle_unload_is_counted(real_home: Home, make_daemon) -> None:
    real_home.write_config(daemon={"idle_unload": "2s"})
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    chat(client(daemon), max_tokens=2)
    idle = daemon.status()["idle"]
    assert idle["idle_unload_s"] == 2
    samples = wait_for(lambda: (s := scrape(daemon)) and value(
        s, "llmctl_idle_unloads_total", model="tiny-alpha") == 1 and s, 20, "the idle unload",
        daemon.log)
    assert value(samples, "llmctl_backend_state", state="stopped") == 1
    assert daemon.backend()["unloaded"]["model"] == "tiny-alpha"
    # an explicit stop is not an idle unload
    chat(client(daemon), max_tokens=2)  # wakes the unloaded model
    assert daemon.post("/stop").status_code == 200
    assert value(scrape(daemon), "llmctl_idle_unloads_total", model="tiny-alpha") == 1


def proxy_pid(daemon: Daemon) -> int:
    return daemon.status()["daemon"]["proxy_pid"]


def test_counters_survive_proxy_worker_restarts(real_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    oa = client(daemon)
    for _ in range(3):
        chat(oa, max_tokens=4)
    first = recorded(daemon, 3)
    ok = {"family": "v1", "status": "200", "model": "tiny-alpha"}
    assert value(first, "llmctl_requests_total", **ok) == 3

    old = proxy_pid(daemon)
    assert daemon.post("/restart-proxy").status_code == 202
    wait_for(lambda: proxy_pid(daemon) != old, 20, "a new proxy worker", daemon.log)
    graceful = scrape(daemon)
    for name in ("llmctl_requests_total", "llmctl_generated_tokens_total",
                 "llmctl_request_duration_seconds_count", "llmctl_switches_total"):
        assert {k: v for k, v in graceful.items() if k[0] == name} == \
            {k: v for k, v in first.items() if k[0] == name}, name

    killed = proxy_pid(daemon)
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: _answers_from_new_proxy(daemon, killed), 20, "a restarted proxy worker",
             daemon.log)
    # a new client: `oa`'s kept-alive connection may still reach the retiring worker (it drains
    # kept-alive connections one by one); its count would be summed all the same, but its
    # activity entry is in that worker's own ring
    chat(client(daemon), max_tokens=4)
    last = recorded(daemon, 4)
    assert value(last, "llmctl_requests_total", **ok) == 4
    assert value(last, "llmctl_generated_tokens_total", model="tiny-alpha") == 4 * 4
    assert value(last, "llmctl_worker_restarts_total", worker="proxy") == 2
    # the activity ring is the new worker's own: it starts again
    assert [e["seq"] for e in daemon.get("/activity").json()["entries"]] == [1]


def _answers_from_new_proxy(daemon: Daemon, old: int) -> bool:
    try:
        return proxy_pid(daemon) != old
    except requests.RequestException:
        return False


def test_activity_follow_streams_new_requests(real_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    lines: list[dict[str, Any]] = []
    follow = daemon.get("/activity", params={"follow": 1}, stream=True, timeout=30)
    assert follow.headers["Content-Type"] == "application/x-ndjson"

    def read() -> None:
        for line in follow.iter_lines():
            if line:
                lines.append(json.loads(line))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    chat(client(daemon), max_tokens=4)
    wait_for(lambda: lines, 10, "the followed activity entry", daemon.log)
    follow.close()
    assert lines[0]["route"] == "/v1/chat/completions" and lines[0]["generated_tokens"] == 4
    bad = daemon.get("/activity", params={"since": "x"})
    assert bad.status_code == 400 and "whole numbers" in bad.json()["error"]["message"]


def test_a_long_stream_leaves_the_proxy_memory_flat(fake_home: Home, make_daemon) -> None:
    """Nothing of a stream is held: a 50 MB stream leaves the proxy worker's RSS where a small
    one left it. (The fake llama-server, because a real one here makes a few hundred KB a
    minute: too little for memory to show anything. Token counts are checked against the
    real one above.)"""
    fake_home.add_model("big", script={"chunk_interval": 0, "tokens": ["x" * 65536]})
    daemon = make_daemon()
    assert daemon.switch("big").status_code == 200
    proxy = psutil.Process(proxy_pid(daemon))

    def stream(chunks: int) -> int:
        with daemon.session.post(daemon.url + "/v1/chat/completions", stream=True, timeout=120,
                                 json={"messages": [{"role": "user", "content": "hi"}],
                                       "max_tokens": chunks, "stream": True}) as r:
            assert r.status_code == 200
            return sum(len(chunk) for chunk in r.iter_content(chunk_size=65536))

    stream(20)  # warm up: pools, buffers, the first activity entries
    baseline = proxy.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, proxy.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        streamed = stream(800)
    finally:
        done.set()
        sampler.join()
    assert streamed > 50 * 2**20, streamed
    assert peak - baseline < 4 * 2**20, (baseline, peak, streamed)
    entry = wait_for(lambda: (e := daemon.get("/activity").json()["entries"]) and len(e) == 2
                     and e[-1], 10, "the stream's activity entry")
    assert entry["generated_tokens"] == 800 and entry["stream"] is True


def test_metrics_and_activity_can_be_turned_off(fake_home: Home, make_daemon) -> None:
    fake_home.write_config(observability={"metrics": False, "activity": False})
    daemon = make_daemon()
    metrics = daemon.get("/metrics")
    assert metrics.status_code == 404
    assert "observability.metrics: true" in metrics.json()["error"]["message"]
    assert "/backend/metrics" in metrics.json()["error"]["message"]
    assert "observability.activity: true" in daemon.get("/activity").json()["error"]["message"]
    assert not (fake_home.runtime / "metrics").exists()


def test_observability_routes_obey_the_browser_rules(fake_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    for path in ("/metrics", "/activity", "/"):
        foreign = daemon.get(path, headers={"Origin": "http://evil.example"})
        assert foreign.status_code == 200
        assert "Access-Control-Allow-Origin" not in foreign.headers  # the page cannot read it
        rebound = daemon.get(path, headers={"Host": "evil.example"})
        assert rebound.status_code == 403, path
