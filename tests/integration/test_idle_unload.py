"""Idle unload, wake, pin and stall detection, end to end: a real llama-server with tiny models
(and the scripted fake for a load that freezes)."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable

import openai
import pytest

from harness import ROOT, Daemon, Home, owned_backends, wait_for

pytestmark = pytest.mark.real_backend


def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", max_retries=0,
                         timeout=60)


def chat(daemon: Daemon, model: str = "local", **extra: object) -> str:
    reply = client(daemon).chat.completions.create(
        model=model, max_tokens=4, messages=[{"role": "user", "content": "hi"}], **extra)
    return reply.model


def stays(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Check that `condition` holds for `seconds` (a negative can only be watched for a while:
    here three idle timeouts), looking every 0.1 s."""
    tick = threading.Event()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert condition(), what
        tick.wait(0.1)


def unloaded(daemon: Daemon) -> dict | None:
    status = daemon.status()
    return status if status["backend"]["state"] == "stopped" and status["idle"]["unloaded"] \
        else None


def test_idle_unload_frees_the_process_and_the_next_request_wakes_that_model(
        real_home: Home, make_daemon) -> None:
    real_home.write_config(daemon={"idle_unload": "2s", "default_model": "tiny-beta"})
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    assert chat(daemon) == "tiny-alpha"
    idle = daemon.status()["idle"]
    assert idle["idle_unload_s"] == 2.0 and 0 < idle["unloads_in_s"] <= 2.0
    assert idle["text"].startswith("unloads in ")
    pid = daemon.backend()["pid"]

    status = wait_for(lambda: unloaded(daemon), 15, "the idle unload", daemon.log)
    assert status["idle"]["unloaded"]["model"] == "tiny-alpha"
    assert status["idle"]["text"] == "unloaded after 2s idle — wakes on the next request"
    assert not any(p.pid == pid for p in owned_backends(real_home.runtime))
    out = daemon.cli("status").stdout
    assert "unloaded after 2s idle" in out and "none (tiny-alpha unloaded for idleness)" in out
    assert daemon.get("/active").json()["idle"]["unloaded"]["model"] == "tiny-alpha"

    assert chat(daemon) == "tiny-alpha", "wakes the unloaded model, not the default"
    assert daemon.backend()["state"] == "ready" and daemon.status()["idle"]["unloaded"] is None


def test_top_polled_once_a_second_shows_every_second_of_the_countdown(
        real_home: Home, make_daemon) -> None:
    real_home.write_config(daemon={"idle_unload": "40s"})
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    first, again = daemon.status()["idle"], daemon.status()["idle"]
    assert abs(first["unloads_at"] - again["unloads_at"]) < 0.05, "one fixed deadline"
    assert abs(first["unloads_at"] - time.time() - first["unloads_in_s"]) < 1

    top = subprocess.Popen([str(ROOT / "bin" / "llmctl"), "top", "--interval", "1"],
                           env=daemon.env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    shown: list[int] = []

    def read() -> None:
        assert top.stdout is not None
        for line in top.stdout:
            if m := re.search(r"unloads in (\d+)s without requests", line):
                shown.append(int(m[1]))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(shown) >= 8, 30, "eight summary lines from llmctl top", daemon.log)
    finally:
        top.terminate()
        top.wait(10)
    assert shown[:8] == list(range(shown[0], shown[0] - 8, -1)), shown


def test_explicit_stop_does_not_wake_the_model(real_home: Home, make_daemon) -> None:
    real_home.write_config(daemon={"idle_unload": "2s", "default_model": "tiny-beta"})
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    assert daemon.cli("stop").returncode == 0
    assert daemon.status()["idle"]["unloaded"] is None
    assert chat(daemon) == "tiny-beta", "after a stop the default-model rule applies"


def test_a_request_during_the_unload_waits_and_is_served(fake_home: Home,
                                                         make_daemon) -> None:
    """A llama-server that takes a second to stop (the fake ignores the first SIGTERM): a
    request sent while it stops waits, then wakes the model again and is served."""
    fake_home.write_config(daemon={"idle_unload": "1s"})
    fake_home.add_model("lingering", script={"hang_on_sigterm": True})
    daemon = make_daemon()
    assert daemon.switch("lingering").status_code == 200
    first_pid = daemon.backend()["pid"]
    wait_for(lambda: daemon.backend()["state"] == "stopping", 10, "the idle unload to begin",
             daemon.log)
    r = daemon.post("/v1/chat/completions", json={
        "model": "local", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    backend = daemon.backend()
    assert backend["model"] == "lingering" and backend["pid"] != first_pid
    assert "unloading lingering: idle for 1s" in daemon.log.read_text()


def test_a_stream_longer_than_the_idle_timeout_is_not_cut(real_home: Home, make_daemon,
                                                          slow_gguf) -> None:
    real_home.write_config(daemon={"idle_unload": "300ms"})
    # its big vocabulary makes every token slow: 300 tokens last about 2 s even on an
    # idle machine (~150 tokens/s), several idle timeouts
    real_home.add_model("wordy", slow_gguf, llama={"ctx_size": 512})
    daemon = make_daemon()
    assert daemon.switch("wordy").status_code == 200
    started = time.monotonic()
    stream = client(daemon).chat.completions.create(
        model="local", max_tokens=300, stream=True, extra_body={"ignore_eos": True},
        stream_options={"include_usage": True}, messages=[{"role": "user", "content": "hi"}])
    chunks = list(stream)
    took = time.monotonic() - started
    assert took > 3 * 0.3, f"the stream took {took:.2f}s: too short to prove anything"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 300, \
        "the stream was cut"
    wait_for(lambda: unloaded(daemon), 15, "the unload after the stream", daemon.log)


def test_pin_keeps_the_model_and_a_plain_switch_unpins_it(real_home: Home,
                                                          make_daemon) -> None:
    real_home.write_config(daemon={"idle_unload": "1s"})
    daemon = make_daemon()
    r = daemon.cli("switch", "tiny-alpha", "--pin")
    assert r.returncode == 0, r.stderr
    assert daemon.status()["idle"]["text"] == "pinned — never unloaded for idleness"
    stays(lambda: daemon.backend()["state"] == "ready", 3.0, "pinned: still loaded")
    assert daemon.cli("switch", "tiny-alpha").returncode == 0
    assert daemon.backend()["pinned"] is False
    wait_for(lambda: unloaded(daemon), 10, "the unload once unpinned", daemon.log)


def test_a_model_with_idle_unload_never_stays(real_home: Home, make_daemon, tiny_gguf) -> None:
    real_home.write_config(daemon={"idle_unload": "1s"})
    real_home.add_model("keeper", tiny_gguf, idle_unload="never")
    daemon = make_daemon()
    assert daemon.switch("keeper").status_code == 200
    assert daemon.status()["idle"]["idle_unload_s"] is None
    assert daemon.switch("tiny-alpha").status_code == 200  # the global 1s applies to others
    wait_for(lambda: unloaded(daemon), 10, "tiny-alpha's idle unload", daemon.log)


def test_a_load_that_freezes_fails_as_stalled(fake_home: Home, make_daemon) -> None:
    fake_home.write_config(server={"stallTimeoutMs": 1000, "readyTimeoutMs": 60_000})
    fake_home.add_model("frozen", script={"load_seconds": 0.5, "read_bytes_during_load": True,
                                          "freeze_at": 0.43}, fake_size=64 * 1024 * 1024)
    daemon = make_daemon()
    started = time.monotonic()
    r = daemon.switch("frozen")
    assert time.monotonic() - started < 20, "failed by the stall timeout, not readyTimeoutMs"
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["code"] == "load_stalled"
    # 43% of the file, plus what the (Python) fake read of its own files at start-up
    assert re.search(r"stalled at 4[3-9]% for 1 s \(server\.stallTimeoutMs\)", err["message"])
    assert err["message"].endswith("llama-server was killed by SIGTERM")
    assert err["log_tail"]
    backend = daemon.backend()
    assert backend["state"] == "failed" and "stalled at 4" in backend["error"]
    assert not owned_backends(fake_home.runtime)
    r = daemon.cli("switch", "frozen")
    assert r.returncode == 7 and "stalled at 4" in r.stderr
